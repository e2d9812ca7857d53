"""Authentication: who sent a request, and may they send it now.

Two kinds of senders (docs/protocol.md, "Authentication"):
- client sources (apps) send a write key in `X-Maidian-Write-Key`. Keys are
  known only by their SHA-256; the hash of the presented key is compared with
  every configured hash in constant time (`hmac.compare_digest`), so neither
  the key nor its position in the list leaks through timing. Several keys may
  be active at once (rotation); a revoked key is answered 403, an unknown one
  401. A key in the URL is refused, since URLs end up in proxy logs.
- server sources sign the request (maidian.tracking_plan.signing): source
  name, timestamp, nonce and an HMAC-SHA256 over them, the method, the path
  and the body as sent. The timestamp must be within `WINDOW_S` of the
  collector's clock and a nonce is accepted once within the window
  (`NonceCache`). Only these senders are `trusted`: they alone may send events
  the plan marks `trigger: server`. A request carrying any of the four signing
  headers is a signed request and must carry all of them: stray signing headers
  next to a write key are refused (401), never ignored, so a request means one
  thing whichever headers a proxy on the way drops.

Credentials are checked from the request's head, before any body byte is read
(`claim`): a write key whole; a signed request's source, timestamp and nonce
shape. The signature covers the body, so it and the nonce's single use are
checked once the body is in (`confirm`). A sender with no or wrong
credentials is thus refused without holding a request slot while a body
trickles in (http/admission.py).

Each write key may have a token bucket in events per second (`RateLimiter`):
a flooding key gets 429 with Retry-After and the other keys are unaffected.

Vendor SDKs (docs/migration.md) authenticate in their own way, and each
resolves to a write key, whose name, quota and revocation then apply:
- a Sensors project is served when `[[vendors.sensors.projects]]` names it
  (Sensors SDKs send no credential, only the project name); any other project
  is 403, which its SDKs answer by keeping their data.
- a Segment write key (Basic auth) is looked up like `X-Maidian-Write-Key`.
A binding with `allow_from` accepts only those peer addresses (the TCP peer,
never a forwarded-for header), and only such a binding may be `trusted`: a
backend on a listed network may then send `trigger: server` events through a
vendor SDK, while the same request from anywhere else is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from maidian.collector.errors import Forbidden, RateLimited, Unauthenticated
from maidian.collector.settings import AuthConfig, ServerSource, VendorSource, WriteKey
from maidian.tracking_plan import signing
from maidian.tracking_plan.envelope import (
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_SOURCE,
    HEADER_TIMESTAMP,
    HEADER_WRITE_KEY,
)

__all__ = ["Authenticator", "Claim", "NonceCache", "Principal", "RateLimiter"]

# Query parameters that look like a credential; any of them is refused.
_SIGNING_HEADERS: Final = (HEADER_SOURCE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
_KEY_PARAMS: Final = frozenset({"write_key", "writekey", "key", "api_key", "apikey", "token", "secret"})
# What a nonce may be: signing.make_nonce makes 32 hex digits; a value that is not ASCII cannot be signed.
_NONCE: Final = re.compile(r"[!-~]{1,128}")
# One answer for an unknown source and a wrong signature: a 401 never confirms a source name.
_BAD_SIGNATURE: Final = "the signature does not match the request"
# A nonce cache this large holds five minutes at 3,000 signed requests per second.
MAX_NONCES: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who sent a request: a write key's name or a server source's name."""

    name: str
    kind: str  # "key" or "source"; "sensors" or "segment" for vendor traffic
    trusted: bool
    key: WriteKey | None = None
    # Vendor traffic: what the collector derives for this sender (its binding's `derive`; None: the default).
    derive: tuple[str, ...] | None = None

    @property
    def sender(self) -> str:
        """The sender's request-slot pool (http/admission.py): its kind and name."""
        return f"{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class _SignedHead:
    """A signed request's head, checked: what its body must still prove."""

    source: ServerSource
    timestamp: int
    nonce: str
    signature: str


@dataclass(frozen=True, slots=True)
class Claim:
    """Who a request's head says sent it (`Authenticator.claim`); `signed` is what `confirm` still checks."""

    principal: Principal
    signed: _SignedHead | None = None

    @property
    def sender(self) -> str:
        """The principal's slot pool (http/admission.py): its kind and name."""
        return self.principal.sender


class NonceCache:
    """Nonces seen within the signing window, forgotten once they are older than it."""

    def __init__(self, window_s: float = signing.WINDOW_S, max_size: int = MAX_NONCES) -> None:
        self.window_s = window_s
        self.max_size = max_size
        self._seen: dict[str, float] = {}

    def add(self, nonce: str, now_s: float) -> bool:
        """Remember `nonce`; False when it was already seen within the window."""
        if nonce in self._seen:
            return False
        if len(self._seen) >= self.max_size:
            self.expire(now_s)
            if len(self._seen) >= self.max_size:
                return False  # refuse rather than forget a nonce that could then be replayed
        self._seen[nonce] = now_s
        return True

    def expire(self, now_s: float) -> None:
        # Insertion order is arrival order: drop from the front while old enough.
        cutoff = now_s - 2 * self.window_s
        old = []
        for nonce, at in self._seen.items():
            if at >= cutoff:
                break
            old.append(nonce)
        for nonce in old:
            del self._seen[nonce]


class _Bucket:
    __slots__ = ("burst", "rate", "tokens", "updated_s")

    def __init__(self, rate: float, burst: float, now_s: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated_s = now_s


class RateLimiter:
    """Token buckets per write key, in events per second."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: WriteKey, events: int, now_s: float) -> None:
        """Spend `events` tokens of `key`'s bucket, or raise `RateLimited` with the wait."""
        if key.rate_events_per_s <= 0:
            return
        bucket = self._buckets.get(key.sha256)
        burst = key.burst_events or key.rate_events_per_s
        if bucket is None:
            bucket = self._buckets[key.sha256] = _Bucket(key.rate_events_per_s, burst, now_s)
        bucket.tokens = min(bucket.burst, bucket.tokens + (now_s - bucket.updated_s) * bucket.rate)
        bucket.updated_s = now_s
        if events <= bucket.tokens:
            bucket.tokens -= events
            return
        need = min(events, bucket.burst) - bucket.tokens
        wait = max(1, math.ceil(need / bucket.rate))
        raise RateLimited(f"this write key is over its quota of {key.rate_events_per_s:g} events/s", retry_after_s=wait)


class Authenticator:
    """Decides who sent a request from its headers, query and body."""

    def __init__(self, config: AuthConfig) -> None:
        self.nonces = NonceCache()
        self.limiter = RateLimiter()
        self.reload(config)

    def reload(self, config: AuthConfig) -> None:
        """Use a new set of keys and sources from now on (nonces and quotas carry over)."""
        self._keys: tuple[WriteKey, ...] = config.write_keys
        self._hashes = tuple(bytes.fromhex(k.sha256) for k in config.write_keys)
        self._sources: dict[str, ServerSource] = {s.name: s for s in config.sources}
        self._sensors: dict[str, VendorSource] = {p.name: p for p in config.sensors_projects}
        self._segment: dict[str, VendorSource] = {s.write_key: s for s in config.segment_sources}
        self._named: dict[str, list[WriteKey]] = {}
        for k in config.write_keys:
            self._named.setdefault(k.name, []).append(k)

    def authenticate(
        self,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        *,
        method: str,
        path: str,
        body: bytes,
        now_s: float,
    ) -> Principal:
        """The sender of a request, or 401/403 saying why not (`claim` then `confirm`)."""
        return self.confirm(self.claim(headers, query, now_s=now_s), method=method, path=path, body=body, now_s=now_s)

    def claim(self, headers: Mapping[str, str], query: Mapping[str, str], *, now_s: float) -> Claim:
        """Who the request's head says sent it, checked as far as the head allows; 401/403 before any body byte.

        A write key is checked whole here. A signed request's source, timestamp
        and nonce are checked here; its signature covers the body, so
        `confirm` checks it once the body is in.
        """
        if any(name.lower() in _KEY_PARAMS for name in query):
            raise Unauthenticated(f"credentials in the URL are refused; send the write key in {HEADER_WRITE_KEY}")
        if any(h in headers for h in _SIGNING_HEADERS):
            return self._signed_head(headers, now_s)
        presented = headers.get(HEADER_WRITE_KEY)
        if not presented:
            raise Unauthenticated(f"no credentials: send a write key in {HEADER_WRITE_KEY} or sign the request")
        return Claim(self._by_key(presented))

    def confirm(self, claim: Claim, *, method: str, path: str, body: bytes, now_s: float) -> Principal:
        """The claim's principal once the body is in: a signed request's signature and nonce checked (401/403)."""
        signed = claim.signed
        if signed is None:
            return claim.principal
        if not signing.signature_matches(
            signed.signature,
            signed.source.secret,
            timestamp=signed.timestamp,
            nonce=signed.nonce,
            method=method,
            path=path,
            body=body,
        ):
            raise Unauthenticated(_BAD_SIGNATURE)
        if signed.source.revoked:
            raise Forbidden("this server source has been revoked")
        if not self.nonces.add(signed.nonce, now_s):
            raise Unauthenticated("this nonce was already used: a replayed request")
        return claim.principal

    def _by_key(self, presented: str) -> Principal:
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: WriteKey | None = None
        for key, stored in zip(self._keys, self._hashes, strict=True):
            if hmac.compare_digest(digest, stored):  # every key is compared: no early exit in timing
                found = key
        if found is None:
            raise Unauthenticated("unknown write key")
        if found.revoked:
            raise Forbidden("this write key has been revoked; use the project's current key")
        return Principal(found.name, "key", trusted=False, key=found)

    def _signed_head(self, headers: Mapping[str, str], now_s: float) -> Claim:
        name = headers.get(HEADER_SOURCE, "")
        stamp = headers.get(HEADER_TIMESTAMP, "")
        nonce = headers.get(HEADER_NONCE, "")
        signature = headers.get(HEADER_SIGNATURE, "")
        missing = [
            h
            for h, v in (
                (HEADER_SOURCE, name),
                (HEADER_TIMESTAMP, stamp),
                (HEADER_NONCE, nonce),
                (HEADER_SIGNATURE, signature),
            )
            if not v
        ]
        if missing:
            raise Unauthenticated(f"a signed request needs {', '.join(missing)}")
        # What the head alone says is checked first, the same for every source name; then the name, with the
        # signature's own answer, so that a sender without the secret cannot tell which sources exist.
        try:
            timestamp = int(stamp)
        except ValueError:
            raise Unauthenticated(f"{HEADER_TIMESTAMP} must be unix seconds") from None
        if abs(now_s - timestamp) > signing.WINDOW_S:
            raise Unauthenticated(
                f"the signature's timestamp is more than {signing.WINDOW_S} s from the collector's clock"
            )
        if not _NONCE.fullmatch(nonce):
            raise Unauthenticated(f"{HEADER_NONCE} must be 1 to 128 visible ASCII characters")
        source = self._sources.get(name)
        if source is None:
            raise Unauthenticated(_BAD_SIGNATURE)
        return Claim(
            Principal(source.name, "source", trusted=True),
            _SignedHead(source, timestamp, nonce, signature),
        )

    def sensors_project(self, project: str, peer: str | None) -> Principal:
        """The sender of a Sensors request naming `project`, from the TCP peer address `peer`; 403 when refused."""
        binding = self._sensors.get(project)
        if binding is None:
            raise Forbidden("this Sensors project is not served here; add it to [[vendors.sensors.projects]]")
        key = next((k for k in self._named.get(binding.write_key, ()) if not k.revoked), None)
        if key is None:
            raise Forbidden("the write key this Sensors project is bound to has been revoked")
        _check_peer(binding, peer)
        return Principal(key.name, "sensors", trusted=binding.trusted, key=key, derive=binding.derive)

    def segment_key(self, presented: str, peer: str | None) -> Principal:
        """The sender of a Segment request with this write key, from `peer`; 401 unknown, 403 revoked or refused."""
        by_key = self._by_key(presented)
        binding = self._segment.get(by_key.name)
        if binding is not None:
            _check_peer(binding, peer)
        trusted = binding is not None and binding.trusted
        derive = binding.derive if binding is not None else None
        return Principal(by_key.name, "segment", trusted=trusted, key=by_key.key, derive=derive)

    def segment_source(self, key_name: str) -> Principal:
        """The sender of imported Segment messages: the `[[write_keys]]` entry named `key_name` (403 when
        unknown or revoked), trusted when its Segment binding is; the importer runs on the collector's host."""
        key = next((k for k in self._named.get(key_name, ()) if not k.revoked), None)
        if key is None:
            raise Forbidden(f"no active write key is named {key_name!r} in [[write_keys]]")
        binding = self._segment.get(key.name)
        trusted = binding is not None and binding.trusted
        derive = binding.derive if binding is not None else None
        return Principal(key.name, "segment", trusted=trusted, key=key, derive=derive)

    def take(self, principal: Principal, events: int, now_s: float) -> None:
        """Charge `events` to the principal's rate limit (429 when over)."""
        if principal.key is not None:
            self.limiter.take(principal.key, events, now_s)


def _check_peer(binding: VendorSource, peer: str | None) -> None:
    """403 unless the binding takes any address or `peer` is in one of its networks."""
    if not binding.allow_from:
        return
    try:
        address = ipaddress.ip_address((peer or "").split("%", 1)[0])
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address is None or not any(address in network for network in binding.allow_from):
        raise Forbidden("this source may only send from the addresses in its allow_from")
