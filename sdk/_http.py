"""The thread client's transport: one keep-alive `http.client` connection per sender thread.

Standard library only, so the sync client pulls in no HTTP stack. Every failure
below HTTP (refused, reset, timed out, a garbled status line) becomes a
`Response` with `status=None`: the core treats it as indeterminate and retries
with the same event ids. A request on a reused connection that fails before any
answer is tried once more on a fresh connection at once, because servers close
idle keep-alive connections whenever they like.

`abort()` may be called from another thread to make a blocked request return
now (the socket is shut down under it); `close()` and `flush()` use it to keep
their time budgets against a collector that never answers.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from urllib.parse import urlsplit

from .core import Response

__all__ = ["HttpTransport"]


class HttpTransport:
    """POST bodies to one collector over a persistent connection."""

    def __init__(self, endpoint: str, *, timeout_s: float) -> None:
        parts = urlsplit(endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout_s)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)

    def send(self, path: str, body: bytes, headers: dict[str, str]) -> Response:
        """One POST; never raises for network trouble."""
        reused = self._conn is not None
        for _ in range(2):
            if self._aborted:
                return Response(None, error="aborted")
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            try:
                conn.request("POST", self._base + path, body, headers)
                reply = conn.getresponse()
                data = reply.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)):
                    reused = False
                    continue
                return Response(None, error=f"{type(exc).__name__}: {exc}"[:200])
            if reply.will_close:
                self.close()
            return Response(reply.status, data, reply.getheader("Retry-After"))
        return Response(None, error="connection closed twice")

    def abort(self) -> None:
        """Make a request blocked in another thread return now; later sends fail at once."""
        self._aborted = True
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
