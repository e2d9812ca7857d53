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

Through a proxy (`Config.proxy`), an https endpoint is reached with a CONNECT
tunnel and an http one with absolute-form requests; credentials in the proxy
URL become a `Proxy-Authorization: Basic` header. TLS uses the standard
library's defaults (`ssl.create_default_context`), with `Config.ca_bundle` as
the trusted CAs when given and `Config.client_cert`/`client_key` for mutual TLS.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
from urllib.parse import unquote, urlsplit

from .config import Config
from .core import Response

__all__ = ["HttpTransport", "proxy_parts", "tls_context"]


def tls_context(config: Config) -> ssl.SSLContext:
    """The standard library's default context, with the configured CA bundle and client certificate."""
    context = ssl.create_default_context(cafile=config.ca_bundle)
    if config.client_cert is not None:
        context.load_cert_chain(config.client_cert, config.client_key)
    return context


def proxy_parts(proxy: str) -> tuple[str, int, dict[str, str]]:
    """(host, port, headers for the proxy) of an http:// proxy URL."""
    parts = urlsplit(proxy)
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return parts.hostname or "127.0.0.1", parts.port or 80, headers


class HttpTransport:
    """POST bodies to one collector over a persistent connection."""

    def __init__(self, endpoint: str, *, timeout_s: float, config: Config | None = None) -> None:
        parts = urlsplit(endpoint)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._base = parts.path.rstrip("/")
        self._timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False
        self._context = tls_context(config) if self._https and config is not None else None
        self._proxy = proxy_parts(config.proxy) if config is not None and config.proxy else None
        # Absolute-form request targets through a plain-http proxy; a tunnel keeps origin-form.
        self._prefix = f"http://{parts.netloc}" if self._proxy is not None and not self._https else ""

    @classmethod
    def for_config(cls, config: Config) -> HttpTransport:
        return cls(config.endpoint, timeout_s=config.timeouts.request_s, config=config)

    def _connect(self) -> http.client.HTTPConnection:
        timeout = self._timeout_s
        if self._proxy is not None:
            host, port, proxy_headers = self._proxy
            if self._https:
                conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=self._context)
                conn.set_tunnel(self._host, self._port, headers=proxy_headers)
                return conn
            return http.client.HTTPConnection(host, port, timeout=timeout)
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

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
                if self._prefix and self._proxy is not None:
                    headers = {**headers, **self._proxy[2]}
                conn.request("POST", self._prefix + self._base + path, body, headers)
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
