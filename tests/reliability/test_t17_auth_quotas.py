"""T17, auth, signing and quotas: what the collector's own tests do not already measure.

Already proven elsewhere (docs/reliability.md maps them): unknown key 401,
revoked 403, no key 401, key in the URL 401 without echoing it
(tests/collector/test_status.py); both keys of a rotation accepted
(test_status.py) and the old one refused right after a SIGHUP revokes it
(tests/collector/test_process.py); tampered body, wrong path, timestamps 301 s
old or ahead, a wrong secret, an unknown source and a replayed nonce all 401
(tests/collector/test_auth.py); 429 with Retry-After for a key over its quota
(test_status.py).

Added here:
- every credential parameter name the collector refuses in a URL, on a real
  process, each with a valid key in the header too (the URL alone decides);
- the static check over every module of the three packages, not only
  collector/pipeline/auth.py and signing.py: no `==`/`!=` (or `in`) on a value named like a
  secret, signature, digest, token or write key; comparisons of secrets go
  through `hmac.compare_digest`;
- one key flooding at 10x its quota: it gets 429 with a Retry-After, and the
  other keys' p99 latency stays within 1.5x of their baseline. Baseline and
  flood alternate in one-second blocks so that a neighbour's load on the shared
  machine falls on both; 2 ms is added to the bound for the timer and
  scheduling noise of a 2-core box (a p99 of a few ms moves by that much alone).
"""

from __future__ import annotations

import ast
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT
from tests.reliability.constants import KEY
from tests.reliability.figures import Figures
from tests.reliability.load import order_event
from tests.reliability.probe import Reply, percentile, post
from tests.reliability.procs import CollectorProcess, KeySpec, batch_body, key_headers, write_config

FLOOD_KEY = "mk_battery_flood_0001"
QUOTA_EV_S = 200
FLOOD_FACTOR = 10
BLOCKS = 6  # alternating: baseline, flood, baseline, ...
BLOCK_S = 1.0
P99_RATIO = 1.5
NOISE_S = 0.002
URL_PARAMS = ("write_key", "writekey", "key", "api_key", "apikey", "token", "secret", "WRITE_KEY")

_SECRET_NAME = re.compile(
    r"secret|signature|digest|hmac|token|password|passwd|write_?key|api_?key|presented|credential|(^|_)mac($|_)",
    re.IGNORECASE,
)


def _secret_names(node: ast.AST) -> list[str]:
    """Names in a comparison that look like secrets, outside `len(...)` and ALL_CAPS constants (header names)."""
    skip: set[int] = set()
    for call in ast.walk(node):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "len":
            skip.update(id(n) for n in ast.walk(call))
    names = []
    for n in ast.walk(node):
        if id(n) in skip:
            continue
        name = n.id if isinstance(n, ast.Name) else n.attr if isinstance(n, ast.Attribute) else None
        if name and not name.isupper() and _SECRET_NAME.search(name):
            names.append(name)
    return names


def test_secrets_are_compared_only_in_constant_time(figures: Figures) -> None:
    # The check itself sees the comparisons it is for.
    for bad in ("presented == stored_secret", "sig != self.signature", "write_key in known", "a.hmac == b"):
        assert _secret_names(ast.parse(bad, mode="eval").body), bad
    assert not _secret_names(ast.parse("len(digest) != 64", mode="eval").body)
    findings: list[str] = []
    files = [p for pkg in ("sdk", "collector", "tracking_plan") for p in sorted((ROOT / pkg).rglob("*.py"))]
    comparisons = 0
    for path in files:
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Compare):
                comparisons += 1
                ops = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
                if any(isinstance(op, ops) for op in node.ops) and (names := _secret_names(node)):
                    findings.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)} ({names})")
    figures.inputs += comparisons
    figures.note(f"static check: {comparisons:,} comparisons in {len(files)} modules, {len(findings)} on secrets")
    assert not findings, findings
    for must in (ROOT / "collector" / "pipeline" / "auth.py", ROOT / "tracking_plan" / "signing.py"):
        assert "hmac.compare_digest" in must.read_text(), must


def test_credentials_in_the_url_are_refused(
    tmp_path: Path, figures: Figures, collectors: Callable[..., CollectorProcess]
) -> None:
    collector = collectors()
    body = batch_body([order_event("t17-url", 1, int(time.time() * 1000), "anon")])
    replies = {p: post(collector.url, f"/v1/batch?{p}={KEY}", body, key_headers()) for p in URL_PARAMS}
    figures.inputs += len(replies)
    figures.status_5xx += sum(1 for r in replies.values() if r.status >= 500)
    wrong = {p: r.status for p, r in replies.items() if r.status != 401 or KEY.encode() in r.body}
    assert not wrong, wrong
    assert post(collector.url, "/v1/batch?debug_label=x", body, key_headers()).status == 200


def test_a_flooding_key_does_not_slow_the_others(
    tmp_path: Path, figures: Figures, collectors: Callable[..., CollectorProcess]
) -> None:
    config = write_config(
        tmp_path / "collector.toml",
        tmp_path / "data",
        keys=(KeySpec("calm", KEY), KeySpec("flood", FLOOD_KEY, rate_events_per_s=QUOTA_EV_S, burst_events=QUOTA_EV_S)),
    )
    collector = collectors(config)
    flooding = threading.Event()
    stop = threading.Event()
    flood_replies: list[Reply] = []
    seq = iter(range(1, 1 << 30))
    now = int(time.time() * 1000)

    def flood() -> None:
        per_batch = 100
        interval_s = per_batch / (QUOTA_EV_S * FLOOD_FACTOR)
        next_at = time.monotonic()
        while not stop.is_set():
            if not flooding.wait(0.05):
                next_at = time.monotonic()
                continue
            body = batch_body([order_event("t17-flood", next(seq), now, "anon-f") for _ in range(per_batch)])
            reply = post(collector.url, "/v1/batch", body, key_headers(FLOOD_KEY))
            flood_replies.append(reply)
            next_at += interval_s
            time.sleep(max(0.0, next_at - time.monotonic()))

    calm: dict[bool, list[float]] = {False: [], True: []}
    calm_statuses: list[int] = []
    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        for block in range(BLOCKS):
            under_flood = block % 2 == 1
            if under_flood:
                flooding.set()
            else:
                flooding.clear()
            ends = time.monotonic() + BLOCK_S
            while time.monotonic() < ends:
                body = batch_body([order_event("t17-calm", next(seq), now, "anon-c") for _ in range(10)])
                reply = post(collector.url, "/v1/batch", body, key_headers())
                calm[under_flood].append(reply.seconds)
                calm_statuses.append(reply.status)
                time.sleep(0.005)
    finally:
        stop.set()
        flooding.set()
        flooder.join(30)
    statuses = [r.status for r in flood_replies]
    limited = [r for r in flood_replies if r.status == 429]
    base_p99, flood_p99 = percentile(calm[False], 99), percentile(calm[True], 99)
    figures.inputs += len(flood_replies) + len(calm_statuses)
    figures.status_5xx += sum(1 for s in [*statuses, *calm_statuses] if s >= 500)
    figures.note(
        f"flood at {FLOOD_FACTOR}x a {QUOTA_EV_S} ev/s quota: {len(limited)}/{len(flood_replies)} answered 429; "
        f"other key p99 {base_p99 * 1000:.1f} ms baseline, {flood_p99 * 1000:.1f} ms under flood "
        f"({len(calm[False])}+{len(calm[True])} requests)"
    )
    assert set(calm_statuses) == {200}
    assert limited, "the flooding key was never limited"
    assert all(r.status in (200, 429) for r in flood_replies), sorted(set(statuses))
    assert all(int(r.headers.get("Retry-After", "0")) >= 1 for r in limited), "a 429 without Retry-After"
    assert flood_p99 <= P99_RATIO * base_p99 + NOISE_S, (base_p99, flood_p99)
