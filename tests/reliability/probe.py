"""Probes on a running collector for the hostile-input tests (T14, T15, T17, T18).

- `LoopProbe`: a thread asking `/healthz` every `every_s` while hostile
  requests run. `/healthz` does no work, so how long its answer takes is the
  time the event loop was busy with something else: the loop's lag, seen from
  outside the process without instrumenting it.
- `post`: one POST by `http.client`, with an exact body or a chunked one (an
  iterable of chunks), timed; the status, the answer's body, the seconds and the headers.
- `percentile`: the p-th percentile of a list of durations (nearest rank).
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["LoopProbe", "Reply", "percentile", "post"]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int  # 0: no answer (reset, timeout)
    body: bytes
    seconds: float
    headers: dict[str, str] = field(default_factory=dict)


def post(url: str, path: str, body: bytes | Iterable[bytes], headers: dict[str, str], timeout_s: float = 30) -> Reply:
    """POST `body` (bytes: with Content-Length; an iterable: chunked) and time the answer."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout_s)
    started = time.perf_counter()
    try:
        if isinstance(body, bytes):
            conn.request("POST", path, body=body, headers=headers)
        else:
            conn.request("POST", path, body=iter(body), headers=headers, encode_chunked=True)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, data, time.perf_counter() - started, dict(resp.getheaders()))
    except (OSError, http.client.HTTPException):
        return Reply(0, b"", time.perf_counter() - started)
    finally:
        conn.close()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


class LoopProbe:
    """`with LoopProbe(url) as probe:` ... `probe.max_s`: the slowest `/healthz` answer meanwhile."""

    def __init__(self, url: str, every_s: float = 0.02) -> None:
        self._url = url
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-probe", daemon=True)
        self.latencies_s: list[float] = []
        self.failures = 0

    def __enter__(self) -> LoopProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    @property
    def max_s(self) -> float:
        return max(self.latencies_s, default=0.0)

    def _run(self) -> None:
        parts = urlsplit(self._url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
        try:
            while not self._stop.wait(self._every_s):
                started = time.perf_counter()
                try:
                    conn.request("GET", "/healthz")
                    resp = conn.getresponse()
                    resp.read()
                    ok = resp.status == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn.close()
                    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
                if ok:
                    self.latencies_s.append(time.perf_counter() - started)
                else:
                    self.failures += 1
        finally:
            conn.close()
