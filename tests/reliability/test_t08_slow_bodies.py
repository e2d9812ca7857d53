"""T8, slow bodies before authentication (issue 14, item 1) against a real `maidian serve` process.

300 connections with no credentials each send a whole request head and then
one body byte every 3 s: 200 to `/v1/batch` and 100 to the Sensors route
`/sa`, where the sender is named only in the body. An attacker reconnects
whatever the collector closes, so 300 stay open throughout. Meanwhile honest
SDK-like senders (a write key, 20-event msgpack+zstd batches over keep-alive
connections, as the SDK sends them) keep sending.

Checked: at least 99% of the honest requests are answered 200 and their p99
is under 1 s; every event acknowledged is stored; `/readyz` answers 200 while
the honest senders are admitted (it says "overloaded" only when an
authenticated request would be refused); no answer is a 5xx other than the
503 the unauthenticated pool gives a slow `/sa` request past its share.

On main before this test, the bodies were read before the sender was
authenticated and each byte renewed a per-read timeout: 260 such connections
held all 256 slots and every honest request got 503.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable

from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger
from tests.reliability.load import order_event
from tests.reliability.probe import percentile
from tests.reliability.procs import CollectorProcess, batch_body, http_get, key_headers
from tests.reliability.profile import Profile
from tests.reliability.store import read_store

SLOW_NATIVE = 200
SLOW_SENSORS = 100
BYTE_EVERY_S = 3.0
HONEST_SENDERS = 4
BATCH = 20
SUCCESS_MIN = 0.99
P99_MAX_S = 1.0


class _Attacker:
    """Keeps `count` slow connections open to each path, one body byte per connection every BYTE_EVERY_S."""

    def __init__(self, port: int, paths: dict[str, int]) -> None:
        self.port = port
        self.paths = paths
        self.stop = threading.Event()
        self.opened = 0
        self.closed_by_server = 0
        self.answers: dict[str, dict[int, int]] = {path: {} for path in paths}
        self.open_now = 0
        self.min_open = 1 << 30
        self._thread = threading.Thread(target=self._run, name="slow-bodies", daemon=True)

    def _connect(self, path: str) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/msgpack\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
        )
        s.setblocking(False)
        self.opened += 1
        return s

    def _run(self) -> None:
        conns: list[tuple[str, socket.socket]] = [
            (path, self._connect(path)) for path, n in self.paths.items() for _ in range(n)
        ]
        while not self.stop.is_set():
            kept: list[tuple[str, socket.socket]] = []
            for path, s in conns:
                gone = False
                try:
                    data = s.recv(4096)
                    if data.startswith(b"HTTP/1.1 "):
                        status = int(data[9:12])
                        self.answers[path][status] = self.answers[path].get(status, 0) + 1
                    gone = data == b""
                except BlockingIOError:
                    pass
                except OSError:
                    gone = True
                if not gone:
                    try:
                        s.send(b"\x00")
                    except BlockingIOError:
                        pass
                    except OSError:
                        gone = True
                if gone:
                    self.closed_by_server += 1
                    s.close()
                kept.append((path, self._connect(path) if gone else s))
            conns = kept
            self.open_now = len(conns)
            self.min_open = min(self.min_open, len(conns))
            self.stop.wait(BYTE_EVERY_S)
        for _path, s in conns:
            s.close()

    def __enter__(self) -> _Attacker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(30)


def _honest(port: int, device: str, until: float, out: list[tuple[int, float, list[str]]]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    seq = 0
    try:
        while time.monotonic() < until:
            events = [order_event(device, seq + j + 1, int(time.time() * 1000), f"anon-{device}") for j in range(BATCH)]
            seq += BATCH
            ids = [e["event_id"] for e in events]
            started = time.perf_counter()
            try:
                conn.request("POST", "/v1/batch", batch_body(events), key_headers())
                resp = conn.getresponse()
                body = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                status, body = 0, b""
            stored = status == 200 and all(r["status"] != "quarantined" for r in json.loads(body)["results"])
            acked = ids if stored else []
            out.append((status, time.perf_counter() - started, acked))
    finally:
        conn.close()


def test_slow_bodies_without_credentials(
    profile: Profile, figures: Figures, collectors: Callable[..., CollectorProcess]
) -> None:
    collector = collectors()
    port = collector.port
    with _Attacker(port, {"/v1/batch": SLOW_NATIVE, "/sa": SLOW_SENSORS}) as attacker:
        while attacker.opened < SLOW_NATIVE + SLOW_SENSORS:
            time.sleep(0.05)  # the attacker's thread opens them all before anything is measured
        until = time.monotonic() + profile.t8_slow_bodies_s
        results: list[tuple[int, float, list[str]]] = []
        readyz: list[int] = []
        senders = [
            threading.Thread(target=_honest, args=(port, f"{k:032x}", until, results), daemon=True)
            for k in range(1, HONEST_SENDERS + 1)
        ]
        for t in senders:
            t.start()
        while time.monotonic() < until:
            readyz.append(http_get(f"{collector.url}/readyz")[0])
            time.sleep(0.5)
        for t in senders:
            t.join(30)
        open_at_end = attacker.open_now
    statuses = [status for status, _s, _ids in results]
    ok = statuses.count(200)
    success = ok / max(1, len(statuses))
    p99 = percentile([s for _st, s, _ids in results], 99)
    ledger = Ledger()
    acked = [eid for _st, _s, ids in results for eid in ids]
    ledger.track(acked)
    ledger.ack(acked)
    check = ledger.check(read_store(collector.config.parent / "data"))
    figures.add_check(check)
    figures.inputs += attacker.opened
    figures.status_5xx += sum(1 for s in statuses if s >= 500)
    native = attacker.answers["/v1/batch"]
    sensors = attacker.answers["/sa"]
    figures.note(
        f"{SLOW_NATIVE}+{SLOW_SENSORS} slow no-credential bodies (1 byte/{BYTE_EVERY_S:g} s, {attacker.min_open}-"
        f"{open_at_end} open, {attacker.opened} opened): honest senders {ok}/{len(statuses)} = {success:.2%} "
        f"answered 200, p99 {p99 * 1000:.0f} ms; /readyz 200 in {readyz.count(200)}/{len(readyz)}; slow "
        f"/v1/batch answered {native}, slow /sa answered {sensors}"
    )
    check.assert_clean()
    assert attacker.min_open >= SLOW_NATIVE + SLOW_SENSORS - 5, "the attacker could not keep its connections"
    assert success >= SUCCESS_MIN, f"{success:.2%} of honest requests succeeded"
    assert p99 < P99_MAX_S
    assert set(native) <= {401}, native  # refused from the head, before any body byte
    assert readyz.count(200) == len(readyz), readyz
    assert collector.alive()
