"""A tiny real HTTP proxy on 127.0.0.1 for the SDK's proxy tests: CONNECT tunnels and absolute-form forwarding.

It reads each request's head, records it (`seen`: method, target and the
`Proxy-Authorization` header), then either opens a tunnel (CONNECT, answered
`200 Connection established`) or forwards the request in origin form with
`Connection: close`, and pipes bytes both ways until either side closes. With
`require_auth`, a request without those credentials gets `407`.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["ForwardProxy", "Seen"]


@dataclass(frozen=True, slots=True)
class Seen:
    method: str
    target: str
    proxy_authorization: str | None


@dataclass
class ForwardProxy:
    require_auth: tuple[str, str] | None = None
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="forward-proxy", daemon=True)

    def __enter__(self) -> ForwardProxy:
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                return
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [line for line in lines[1:] if line]
        auth = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("proxy-authorization:")), None)
        self.seen.append(Seen(method, target, auth))
        if self.require_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.require_auth).encode()).decode()
            if auth != expected:
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)), timeout=10)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            first = rest
        else:
            parts = urlsplit(target)
            upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=10)
            kept = [h for h in headers if not h.lower().startswith(("proxy-", "connection:"))]
            origin = parts.path + (f"?{parts.query}" if parts.query else "")
            first = "\r\n".join([f"{method} {origin} {version}", *kept, "Connection: close", "", ""]).encode("latin-1")
            first += rest
        with upstream:
            if first:
                upstream.sendall(first)
            _pipe(client, upstream)


def _pipe(a: socket.socket, b: socket.socket) -> None:
    peers = {a: b, b: a}
    while True:
        ready, _, _ = select.select(list(peers), [], [], 10)
        if not ready:
            return
        for sock in ready:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                with contextlib.suppress(OSError):
                    peers[sock].shutdown(socket.SHUT_WR)
                return
            peers[sock].sendall(data)
