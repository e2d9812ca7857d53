"""Request signing for server-side sources.

Backend services (the ones that send `trigger: server` events such as
`stock_order_filled`) authenticate each request with a shared secret instead of
a write key. The signature covers the timestamp, a nonce, the method, the path
and the body exactly as sent (after compression), so a captured request cannot
be altered, pointed at another path, or replayed:

    X-Maidian-Source:    orders-service
    X-Maidian-Timestamp: 1763800000            (unix seconds)
    X-Maidian-Nonce:     4f1c2b9e0a7d4c3b8e6f  (fresh for every attempt, retries included)
    X-Maidian-Signature: v1=<hex HMAC-SHA256(secret, "v1:{ts}:{nonce}:{METHOD}:{path}:" + body)>

The collector accepts a timestamp within `WINDOW_S` of its clock and refuses a
nonce it has seen within the window. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Final

__all__ = ["WINDOW_S", "make_nonce", "sign", "signature_matches"]

# Five minutes either way: the window Standard Webhooks and most payment APIs use.
WINDOW_S: Final = 300
_VERSION: Final = "v1"


def make_nonce() -> str:
    """A fresh 128-bit nonce as 32 hex digits."""
    return os.urandom(16).hex()


def _mac(secret: bytes, *, timestamp: int, nonce: str, method: str, path: str, body: bytes) -> str:
    head = f"{_VERSION}:{timestamp}:{nonce}:{method.upper()}:{path}:".encode()
    return hmac.new(secret, head + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, *, timestamp: int, nonce: str, method: str, path: str, body: bytes) -> str:
    """The value of the signature header for this request."""
    mac = _mac(secret, timestamp=timestamp, nonce=nonce, method=method, path=path, body=body)
    return f"{_VERSION}={mac}"


def signature_matches(
    header: str, secret: bytes, *, timestamp: int, nonce: str, method: str, path: str, body: bytes
) -> bool:
    """True when `header` is the signature of this request under `secret` (constant-time)."""
    expected = sign(secret, timestamp=timestamp, nonce=nonce, method=method, path=path, body=body)
    return hmac.compare_digest(header.encode("utf-8", "replace"), expected.encode())
