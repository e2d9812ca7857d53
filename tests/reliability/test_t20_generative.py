"""T20, generative suites: coverage-guided fuzzing of the decode path, schemathesis, the state machines.

- atheris on the two targets of fuzz_decode.py (`body`: decompress and split
  a request body; `judge`: a batch all the way to the frames that would be
  appended, read back), each in its own process, both at once, for
  `profile.t20_fuzz_s` seconds (CI 20 s, long 300 s), with libFuzzer's
  `-timeout=1` (an input over 1 s is a finding) and `-rss_limit_mb=256`.
  Seeds are valid batches, so mutation starts past the decoders' first checks.
- the same two targets under hypothesis, `profile.t20_examples` byte strings
  each, half of them mutations of the seeds: the stand-in for machines where
  atheris has no wheel, and cheap enough to run everywhere.
- schemathesis (`st run`, every check, tests/reliability/schemathesis.toml)
  against docs/openapi.json served by a real collector on 127.0.0.1, then: 0
  answers 5xx in the collector's own request counter, and every event the
  collector counted as accepted is in the store (nothing accepted-but-not-
  stored). Request bodies are sent as they are generated, so the run pins
  `Content-Encoding: identity`: the compressed paths are atheris's.
- the hypothesis state machines of the SDK spool (tests/sdk/test_stateful.py)
  and of identity stitching (tests/collector/test_identity_properties.py) run
  with 500 examples each in their own modules; the long profile runs them
  again here with `profile.t20_examples` (5,000).

A finding is a crash (any exception other than a 4xx refusal), a hang, memory
past the limit, a 5xx, or an event accepted but not stored.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from tests.reliability import fuzz_decode
from tests.reliability.constants import KEY
from tests.reliability.figures import Figures
from tests.reliability.procs import CollectorProcess, http_get
from tests.reliability.profile import Profile
from tests.reliability.store import read_store

RSS_LIMIT_MB = 256
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_GENERATED = re.compile(r"(\d+) generated")
_REQUESTS = re.compile(r'^maidian_requests_total\{path="([^"]+)",status="(\d+)"\} (\d+)$', re.MULTILINE)
_ACCEPTED = re.compile(r'^maidian_events_total\{outcome="accepted"\} (\d+)$', re.MULTILINE)


def _atheris_available() -> bool:
    return fuzz_decode.atheris is not None


def _fuzz(target: str, seconds: int, work: Path) -> tuple[int, int, str, list[str]]:
    """(exit code, runs, the tail of the output, the artifacts left) of one atheris run."""
    corpus = work / f"corpus-{target}"
    corpus.mkdir(parents=True)
    for i, seed in enumerate(fuzz_decode.seeds()[target]):
        (corpus / f"seed-{i}").write_bytes(seed)
    artifacts = work / f"artifacts-{target}"
    artifacts.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "tests.reliability.fuzz_decode",
        target,
        f"-max_total_time={seconds}",
        "-timeout=1",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    # libFuzzer's RSS limit reads getrusage's ru_maxrss, which Linux carries across exec: a child
    # exec'd straight from pytest would start at pytest's own peak (300 MiB after the suite) and
    # "run out of memory" at once. A shell forks the fuzzer as a fresh process of its own.
    shim = ["sh", "-c", '"$@"; exit $?', "sh"]
    proc = subprocess.run([*shim, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=seconds + 120, check=False)
    out = proc.stdout + proc.stderr
    runs = sum(int(m.group(1)) for m in _DONE.finditer(out))
    return proc.returncode, runs, out[-3000:], sorted(p.name for p in artifacts.iterdir())


@pytest.mark.skipif(not _atheris_available(), reason="atheris has no wheel here; the hypothesis stand-in runs")
def test_atheris_on_the_decode_path(tmp_path: Path, profile: Profile, figures: Figures) -> None:
    with ThreadPoolExecutor(2) as pool:
        runs = dict(
            zip(
                fuzz_decode.TARGETS,
                pool.map(lambda t: _fuzz(t, profile.t20_fuzz_s, tmp_path), fuzz_decode.TARGETS),
                strict=True,
            )
        )
    figures.inputs += sum(r[1] for r in runs.values())
    figures.note(
        "atheris: "
        + ", ".join(f"{t} {r[1]:,} runs in {profile.t20_fuzz_s} s" for t, r in runs.items())
        + f"; -timeout=1 -rss_limit_mb={RSS_LIMIT_MB}; findings: "
        + str(sum(len(r[3]) for r in runs.values()))
    )
    for target, (code, count, tail, artifacts) in runs.items():
        assert not artifacts, f"{target}: findings {artifacts}\n{tail}"
        assert code == 0, f"{target}: exit {code}\n{tail}"
        assert count > 0, f"{target}: no runs reported\n{tail}"


def _mutations() -> st.SearchStrategy[bytes]:
    """Seeds with bytes flipped, cut or spliced in, or plain random bytes."""
    every = [s for ss in fuzz_decode.seeds().values() for s in ss]

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(every)))
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data)))
            op = draw(st.sampled_from(["flip", "cut", "insert"]))
            if op == "flip" and at < len(data):
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif op == "cut":
                del data[at : at + draw(st.integers(1, 16))]
            else:
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
        return bytes(data)

    return st.one_of(st.binary(max_size=4096), mutate())


@pytest.mark.parametrize("target", sorted(fuzz_decode.TARGETS))
def test_hypothesis_byte_fuzzing_of_the_decode_path(profile: Profile, figures: Figures, target: str) -> None:
    run = fuzz_decode.TARGETS[target]
    tried = [0]

    @settings(
        max_examples=profile.t20_examples,
        deadline=1000,  # ms: the atheris -timeout=1 of this stand-in
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(_mutations())
    def fuzz(data: bytes) -> None:
        tried[0] += 1
        run(data)

    fuzz()
    figures.inputs += tried[0]
    figures.note(f"hypothesis stand-in, {target}: {tried[0]:,} inputs, 0 findings")


def _metrics(url: str) -> str:
    status, body = http_get(url + "/metrics")
    assert status == 200
    return body.decode()


def test_schemathesis_against_the_openapi_description(
    tmp_path: Path, profile: Profile, figures: Figures, collectors: Callable[..., CollectorProcess]
) -> None:
    collector = collectors()
    st_cli = Path(sys.executable).with_name("st")
    cmd = [
        str(st_cli),
        "--no-color",
        "--config-file",
        str(ROOT / "tests" / "reliability" / "schemathesis.toml"),
        "run",
        str(ROOT / "docs" / "openapi.json"),
        "--url",
        collector.url,
        "--header",
        f"X-Maidian-Write-Key: {KEY}",
        "--header",
        "Content-Encoding: identity",
        # The native routes. The vendor routes take records in their vendors' encodings (base64 of
        # gzip of JSON for Sensors), which no schema can describe, so almost every schema-valid body
        # is rightly a 400; the vendors' own SDKs test them (tests/collector/test_vendor_*.py).
        "--include-path-regex",
        "^/(v1/|healthz|readyz|metrics)",
        "--max-examples",
        str(profile.t20_api_examples),
        "--seed",
        "20",
        "--request-timeout",
        "10",
        "--generation-database",
        ":memory:",
    ]
    env = dict(os.environ, SCHEMATHESIS_TELEMETRY="false")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=280, check=False, env=env)
    out = proc.stdout + proc.stderr
    metrics = _metrics(collector.url)
    status_5xx = sum(int(n) for _p, s, n in _REQUESTS.findall(metrics) if s.startswith("5"))
    accepted = sum(int(n) for n in _ACCEPTED.findall(metrics))
    alive = collector.alive()
    assert collector.stop() == 0
    stored = read_store(collector.config.parent / "data")
    generated = sum(int(n) for n in _GENERATED.findall(out))
    figures.inputs += generated
    figures.status_5xx += status_5xx
    figures.acknowledged += accepted
    figures.stored += len(stored.ids)
    figures.note(
        f"schemathesis: {generated:,} requests over 5 operations ({profile.t20_api_examples} examples each), "
        f"exit {proc.returncode}; collector 5xx {status_5xx}; accepted {accepted}, stored {len(stored.ids)}"
    )
    assert proc.returncode == 0, out[-6000:]
    assert alive
    assert status_5xx == 0
    assert len(stored.ids) == accepted, "accepted but not stored"


@pytest.mark.long
def test_state_machines_with_the_long_budget(profile: Profile, figures: Figures) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    from tests.collector.test_identity_properties import ObserveReopenReplay
    from tests.sdk.test_stateful import DeliveryMachine

    for machine, steps in ((DeliveryMachine, 30), (ObserveReopenReplay, 10)):
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=profile.t20_examples,
                stateful_step_count=steps,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
            ),
        )
        figures.inputs += profile.t20_examples
    figures.note(f"state machines: spool delivery and identity stitching, {profile.t20_examples:,} examples each")
