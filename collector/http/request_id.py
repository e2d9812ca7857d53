"""Request ids: the sender's `X-Request-Id` when it is a plain token, else one of the collector's own.

A request id is stored in every frame's head and printed by the readers, so
it must encode (as UTF-8 and msgpack) and print as it came. aiohttp hands
header bytes that are not UTF-8 on as lone surrogates, which encode nowhere:
such a value (or one with spaces, controls or non-ASCII letters, or longer
than `MAX_REQUEST_ID_CHARS`) is replaced, never refused, since the id is the
sender's convenience and the events matter more.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Mapping
from typing import Final

__all__ = ["MAX_REQUEST_ID_CHARS", "next_request_id", "request_id_of"]

MAX_REQUEST_ID_CHARS: Final = 64
HEADER_REQUEST_ID: Final = "X-Request-Id"
# Visible ASCII: what proxies (nginx's $request_id, Envoy's UUIDs) send.
_TOKEN: Final = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID_CHARS}}}")

_REQUEST_IDS = itertools.count(1)
# Process start (ms, hex) and a counter: unique per process, cheaper than a UUID (1 µs against 6).
_REQUEST_PREFIX: Final = f"{int(time.time() * 1000):x}-{os.getpid()}-"


def next_request_id() -> str:
    """A new id unique to this process."""
    return _REQUEST_PREFIX + str(next(_REQUEST_IDS))


def request_id_of(headers: Mapping[str, str]) -> str:
    """The sender's `X-Request-Id` when it is 1-64 visible ASCII characters, else a new id."""
    given = headers.get(HEADER_REQUEST_ID)
    if given and _TOKEN.fullmatch(given):
        return given
    return next_request_id()
