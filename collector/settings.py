"""The collector's settings: frozen dataclasses of small groups, and the defaults with where each number comes from.

config.py resolves them from flags, environment and the TOML file, and re-exports them.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from maidian.tracking_plan.envelope import DEFAULT_LIMITS, Limits

Durability = Literal["fsync", "write"]


EVENT_LOOPS: Final = ("auto", "asyncio", "uvloop")


# docs/reliability.md: the SDK spools events for at most 7 days, so the collector
# must remember event ids for longer than that.
DEFAULT_DEDUP_WINDOW_S: Final = 8 * 86_400


# Vector's disk buffer syncs every 500 ms; we halve it for `write` mode's loss bound.
DEFAULT_SYNC_INTERVAL_MS: Final = 200


# A segment of 128 MiB holds about 6 million events at ~20 bytes each compressed,
# small enough to copy, rewrite (deletion) or ship in seconds.
DEFAULT_SEGMENT_MAX_BYTES: Final = 128 << 20


DEFAULT_SEGMENT_MAX_AGE_S: Final = 3600


# Bytes written but not yet covered by an fsync before new requests get 503:
# about 20,000 events' worth of 500-event frames, far above a healthy disk's backlog.
DEFAULT_MAX_UNSYNCED_BYTES: Final = 64 << 20


# Requests being handled at once before new ones get 503. Each waits for an fsync
# (up to ~10 ms on a busy disk), so many must be in flight to keep the disk busy;
# each holds at most a 16 MiB decoded body: 256 bound memory at 4 GiB in the worst case.
DEFAULT_MAX_IN_FLIGHT: Final = 256


# docs/reliability.md, T8: idle and header timeouts of at most 10 s (nginx's client_header_timeout is 60 s, Go
# servers are commonly given 10 s); an SDK sends at least every second while it has events.
DEFAULT_IDLE_TIMEOUT_S: Final = 10.0


# For the whole body, from admission to its last byte: a byte now and then does not renew it (nginx's
# client_body_timeout is per read, which let 260 senders of a byte every 4 s hold every slot). The largest
# body (1 MiB) arrives in 10 s at 100 KiB/s; an SDK's batches are tens of KiB.
DEFAULT_BODY_TIMEOUT_S: Final = 10.0


# Slots one sender (a write key, a signed source) may hold: half of them, so that one key's clients
# (or someone holding its public app key) leave the other half to the other senders. 128 requests
# in flight for one key are 10-20x what one process commits at its peak (group commit).
DEFAULT_MAX_IN_FLIGHT_PER_SENDER: Final = 128


# Slots for requests whose sender is known only from the body (Sensors, Segment's writeKey in the
# body), outside the others.
DEFAULT_MAX_IN_FLIGHT_UNAUTHENTICATED: Final = 32


# docs/reliability.md, T12: events more than an hour in the future are clamped and flagged.
DEFAULT_FUTURE_TOLERANCE_S: Final = 3600


def hash_key(key: str) -> str:
    """The stored form of a write key: SHA-256 as 64 lowercase hex digits."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class WriteKey:
    """A client write key, known only by its hash. A revoked key is answered 403, an unknown one 401."""

    name: str
    sha256: str
    revoked: bool = False
    # Token bucket per key; 0 means no limit. The burst defaults to one second's worth.
    rate_events_per_s: float = 0.0
    burst_events: float = 0.0


@dataclass(frozen=True, slots=True)
class ServerSource:
    """A backend service that signs its requests (maidian.tracking_plan.signing)."""

    name: str
    secret: bytes = field(repr=False)
    revoked: bool = False


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class VendorSource:
    """A vendor SDK's traffic let in: a Sensors project (`name`), or a Segment write key's binding.

    `write_key` names the `[[write_keys]]` entry whose name, quota and
    revocation apply. With `allow_from`, requests from other peer addresses
    are answered 403; only such a source may be `trusted`, that is, send
    events the plan marks `trigger: server`.
    """

    name: str
    write_key: str
    trusted: bool = False
    allow_from: tuple[Network, ...] = ()
    # What the collector derives for this sender ("ip", "user_agent"); None: `[vendors] derive`.
    derive: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class AuthConfig:
    write_keys: tuple[WriteKey, ...] = ()
    sources: tuple[ServerSource, ...] = ()
    # docs/migration.md: the Sensors projects served, and Segment write keys with a binding.
    sensors_projects: tuple[VendorSource, ...] = ()
    segment_sources: tuple[VendorSource, ...] = ()
    # `[vendors] derive`: what the collector derives for vendor traffic unless a binding says otherwise.
    vendor_derive: tuple[str, ...] = ("ip", "user_agent")
    # `[vendors] trusted_proxies`: peers whose X-Forwarded-For is believed for `$ip`.
    trusted_proxies: tuple[Network, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8106  # clear of the 8080 that local development servers usually take
    workers: int = 1
    reuse_port: bool = False
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    # How long SIGTERM waits for requests in flight before closing connections.
    shutdown_timeout_s: float = 30.0
    # "auto": uvloop when it is installed (the collector extra installs it), else asyncio's own
    # loop; "asyncio" or "uvloop" to choose. uvloop took a third off aiohttp's CPU per request
    # here (docs/decisions.md, "Collector: measured throughput, and where the time goes").
    event_loop: str = "auto"
    # A connection that has not sent a whole request head this long after it opened or after its last
    # answer is closed: idle keep-alive, and slowloris headers (docs/reliability.md, T8: at most 10 s).
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    # A request whose body has not arrived whole this long after admission is answered 408 and its slot freed.
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    # http/admission.py: at most this many of max_in_flight per sender, and a pool of its own for requests
    # whose sender is known only from their body.
    max_in_flight_per_sender: int = DEFAULT_MAX_IN_FLIGHT_PER_SENDER
    max_in_flight_unauthenticated: int = DEFAULT_MAX_IN_FLIGHT_UNAUTHENTICATED


@dataclass(frozen=True, slots=True)
class StorageConfig:
    data_dir: Path = Path("maidian-data")
    durability: Durability = "fsync"
    sync_interval_ms: int = DEFAULT_SYNC_INTERVAL_MS
    segment_max_bytes: int = DEFAULT_SEGMENT_MAX_BYTES
    segment_max_age_s: float = DEFAULT_SEGMENT_MAX_AGE_S
    max_unsynced_bytes: int = DEFAULT_MAX_UNSYNCED_BYTES
    writer_id: str = "w0"
    # How often the catalog indexer follows the log, and the dedup snapshot is written.
    index_interval_s: float = 0.5
    snapshot_interval_s: float = 30.0
    # Whether this process keeps the catalog up to date (with several workers, only w0 does).
    index_catalog: bool = True


@dataclass(frozen=True, slots=True)
class SinkConfig:
    """Where accepted frames go (docs/scaling.md): local segments (default) or Apache Kafka topics."""

    kind: str = "local"
    kafka_bootstrap: str = ""
    raw_topic: str = "maidian.raw"
    quarantine_topic: str = "maidian.quarantine"
    # A request whose frames are not acknowledged by the brokers within this is answered 503.
    delivery_timeout_ms: int = 10_000
    # Frames waiting in the producer's queue beyond this answer 503 at once (backpressure).
    queue_max_messages: int = 100_000


@dataclass(frozen=True, slots=True)
class DedupConfig:
    window_s: float = DEFAULT_DEDUP_WINDOW_S


@dataclass(frozen=True, slots=True)
class TimeConfig:
    future_tolerance_s: float = DEFAULT_FUTURE_TOLERANCE_S


# The live view (qa/live.py): a page shows the last few hundred events; 2,000 cover a test session's recent past.
DEFAULT_LIVE_HISTORY_EVENTS: Final = 2000


# Per page, about 1 MiB of JSON at ~500 bytes per event before the oldest is dropped.
DEFAULT_LIVE_QUEUE_EVENTS: Final = 2000


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """The live view at /live (docs/guide-operator.md): off unless enabled, and then behind a token."""

    enabled: bool = False
    # SHA-256 of the token a browser must present (`maidian keys hash TOKEN`); write keys ship inside apps.
    token_sha256: str = ""
    # Let browsers on this machine in without the token (`maidian qa`; never behind a reverse proxy).
    allow_loopback: bool = False
    # Count the session's coverage from start-up, not only while a page watches (`maidian qa`).
    observe_always: bool = False
    history_events: int = DEFAULT_LIVE_HISTORY_EVENTS
    queue_events: int = DEFAULT_LIVE_QUEUE_EVENTS


# The support view (docs/guide-support.md). OWASP's session guidance: an idle timeout of 15-30 minutes
# for sensitive applications, and an absolute one of a working shift.
DEFAULT_SUPPORT_IDLE_S: Final = 15 * 60


DEFAULT_SUPPORT_SESSION_S: Final = 8 * 3600


# Failed logins before an account, or a client address, is locked out for `lockout_s`.
DEFAULT_SUPPORT_MAX_FAILURES: Final = 5


DEFAULT_SUPPORT_LOCKOUT_S: Final = 15 * 60


SUPPORT_ROLES: Final = ("agent", "officer")


@dataclass(frozen=True, slots=True)
class SupportAccount:
    """One member of staff: a name, a role, and a password hash (`scrypt$...`) and/or a token's SHA-256."""

    name: str
    role: str
    password_scrypt: str = field(default="", repr=False)
    token_sha256: str = field(default="", repr=False)
    disabled: bool = False


@dataclass(frozen=True, slots=True)
class SupportConfig:
    """The support agents' view at /support: off unless enabled, and then only for the accounts listed."""

    enabled: bool = False
    accounts: tuple[SupportAccount, ...] = ()
    # The bank's time zone, for every time the page shows (an IANA name: zoneinfo).
    time_zone: str = "Asia/Shanghai"
    idle_timeout_s: float = DEFAULT_SUPPORT_IDLE_S
    session_max_s: float = DEFAULT_SUPPORT_SESSION_S
    max_failures: int = DEFAULT_SUPPORT_MAX_FAILURES
    lockout_s: float = DEFAULT_SUPPORT_LOCKOUT_S
    # The environment variable holding the key hashed identities (x-pii: hash) were hashed with.
    pii_key_env: str = "MAIDIAN_PII_KEY"
    # Single sign-on through a reverse proxy: the header naming the verified user, honoured only from these peers.
    sso_header: str = ""
    sso_proxies: tuple[Network, ...] = ()
    # Events per timeline page.
    page_events: int = 200
    # Mark the session cookie Secure even when the collector itself speaks plain HTTP (TLS ends at a proxy).
    secure_cookie: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    plan: Path
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    auth: AuthConfig = AuthConfig()
    dedup: DedupConfig = DedupConfig()
    time: TimeConfig = TimeConfig()
    limits: Limits = DEFAULT_LIMITS
    live: LiveConfig = LiveConfig()
    support: SupportConfig = SupportConfig()
    sink: SinkConfig = SinkConfig()
