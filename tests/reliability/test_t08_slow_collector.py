"""T8, slow and blackholed collector, and slowloris against the collector.

Part one: an app (host.py `paced`, a process of its own so its threads can be
counted) sends through the fault proxy while the proxy first adds 5 s to every
answer, then keeps requests without ever answering. The SDK's request timeout
must fire within 10.5 s, it may have at most 2 requests in flight and 10
threads, and nothing may be lost once the collector answers again.

Part two: 200 connections send a request head one byte at a time. A healthy
sender's p99 latency must stay within twice its baseline, and the collector
must close every slow connection within its 10 s header timeout.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from pathlib import Path

from tests.reliability.figures import Figures
from tests.reliability.ledger import Ledger, server_errors
from tests.reliability.load import order_event
from tests.reliability.procs import CollectorProcess, Host, batch_body, key_headers, write_config
from tests.reliability.profile import Profile
from tests.reliability.proxy import Fault, FaultProxy
from tests.reliability.store import read_store

SLOWLORIS = 200
HEADER_TIMEOUT_S = 10.0


def test_slow_then_blackholed_collector(
    tmp_path: Path,
    profile: Profile,
    figures: Figures,
    proxied: CollectorProcess,
    proxy: FaultProxy,
) -> None:
    collector = proxied
    slow_until = [0.0]
    dark_until = [0.0]

    def policy(r: object) -> Fault | None:
        at = time.monotonic()
        if at < slow_until[0]:
            return Fault(delay_s=5.0)
        if at < dark_until[0]:
            return Fault("blackhole")
        return None

    proxy.policy = policy
    duration = profile.t8_slow_s + profile.t8_blackhole_s + 3.0
    host = Host("paced", tmp_path / "host.log", url=proxy.url, rate=100, duration=duration, flush_timeout=90)
    ready = host.line("ready")
    slow_until[0] = float(ready["at"]) + profile.t8_slow_s
    dark_until[0] = slow_until[0] + profile.t8_blackhole_s
    done = host.line("done", timeout_s=duration + 150)
    assert host.wait() == 0
    exchanges = [ex for ex in proxy.snapshot() if ex.path == "/v1/batch"]
    dark = [ex for ex in exchanges if ex.action == "blackhole"]
    gave_up = [ex.ended - ex.at for ex in dark]
    slowed = [ex for ex in exchanges if ex.at < slow_until[0] and ex.status == 200]
    ledger = Ledger()
    ledger.track(f"{done['source']}-{i}" for i in range(1, int(done["tracked"]) + 1))
    ledger.ack(proxy.acks())
    ledger.indeterminate.update(proxy.indeterminate())
    check = ledger.check(read_store(collector.config.parent / "data"))
    figures.add_check(check)
    figures.status_5xx += server_errors(proxy.statuses())
    figures.note(
        f"{len(slowed)} answers 5 s late; {len(dark)} requests blackholed, the SDK gave up after "
        f"{min(gave_up, default=0):.2f}-{max(gave_up, default=0):.2f} s; at most {proxy.max_in_flight} in flight; "
        f"{done['threads_max']} threads in the app (from {done['threads_before']})"
    )
    check.assert_clean()
    assert done["flushed"]
    assert dark, "no request was blackholed"
    assert max(gave_up) <= 10.5
    assert proxy.max_in_flight <= 2
    assert int(done["threads_max"]) <= 10


def _healthy_latencies(port: int, count: int, seq0: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for k in range(count):
            events = [order_event("f" * 32, seq0 + k * 10 + j, int(time.time() * 1000), "healthy") for j in range(10)]
            body = batch_body(events)
            started = time.perf_counter()
            conn.request("POST", "/v1/batch", body, key_headers())
            resp = conn.getresponse()
            resp.read()
            out.append(time.perf_counter() - started)
            assert resp.status == 200
    finally:
        conn.close()
    return out


def _p99(values: list[float]) -> float:
    values = sorted(values)
    return values[int(len(values) * 0.99)]


def test_slowloris(tmp_path: Path, figures: Figures) -> None:
    config = write_config(tmp_path / "collector.toml", tmp_path / "data")
    collector = CollectorProcess(config).start()
    try:
        _healthy_latencies(collector.port, 20, 1)  # warm up
        baseline = _healthy_latencies(collector.port, 200, 1000)
        sockets: list[tuple[socket.socket, float]] = []
        for _ in range(SLOWLORIS):
            s = socket.create_connection(("127.0.0.1", collector.port))
            s.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            s.setblocking(False)
            sockets.append((s, time.monotonic()))
        closed_after: list[float] = []
        stop = threading.Event()

        def dribble() -> None:
            open_ = dict(sockets)
            while open_ and not stop.is_set():
                for s, opened in list(open_.items()):
                    try:
                        if s.recv(1) == b"":
                            raise ConnectionResetError
                    except BlockingIOError:
                        try:
                            s.send(b"X")
                            continue
                        except OSError:
                            pass
                    except OSError:
                        pass
                    closed_after.append(time.monotonic() - opened)
                    del open_[s]
                stop.wait(0.5)

        attacker = threading.Thread(target=dribble, daemon=True)
        attacker.start()
        under_attack = _healthy_latencies(collector.port, 200, 10_000)
        attacker.join(HEADER_TIMEOUT_S + 10)
        stop.set()
        for s, _ in sockets:
            s.close()
    finally:
        assert collector.stop() == 0
    base_p99, attack_p99 = _p99(baseline), _p99(under_attack)
    figures.inputs += SLOWLORIS
    figures.note(
        f"healthy p99 {base_p99 * 1000:.1f} ms alone, {attack_p99 * 1000:.1f} ms under {SLOWLORIS} slowloris "
        f"connections ({attack_p99 / base_p99:.2f}x); all closed by the collector after "
        f"{min(closed_after, default=0):.1f}-{max(closed_after, default=0):.1f} s"
    )
    assert len(closed_after) == SLOWLORIS, f"{SLOWLORIS - len(closed_after)} slow connections were never closed"
    assert max(closed_after) <= HEADER_TIMEOUT_S + 0.5
    assert attack_p99 <= 2 * base_p99
