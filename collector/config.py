"""The collector's configuration: a frozen dataclass of small groups, resolved once.

Sources, strongest first: command-line flags, environment variables
(`MAIDIAN_*`), the TOML file (`--config` or `MAIDIAN_CONFIG`), then the
defaults below. `docs/collector.md` is the reference for every setting.

Write keys are stored hashed: the TOML file holds `sha256 = "<hex>"` for each
key, never the key. A key given on the command line or in `MAIDIAN_WRITE_KEYS`
is hashed at once and the plain text is not kept. Server-source secrets are
read from the environment variable the file names (`secret_env`), or from the
file itself (`secret`) for tests and local runs.

Vendor traffic (docs/migration.md) is authorised in `[vendors]`: each Sensors
project the collector serves, and optionally a Segment write key, is bound to
a write key by name, whose quota and revocation then apply; a binding may be
limited to peer addresses (`allow_from`), and only such a binding may be
`trusted` (send `trigger: server` events). Bindings are reloaded with the keys.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from maidian.collector.config_file import BOOL, NUMBER, STR, STRINGS, Table, Tables, check_file, group
from maidian.collector.errors import ConfigError
from maidian.tracking_plan.envelope import DEFAULT_LIMITS, Limits

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigSource",
    "DedupConfig",
    "Durability",
    "LiveConfig",
    "ServerConfig",
    "ServerSource",
    "SinkConfig",
    "StorageConfig",
    "SupportAccount",
    "SupportConfig",
    "TimeConfig",
    "VendorSource",
    "WriteKey",
    "file_shape",
    "hash_key",
    "read_file",
    "resolve_config",
]

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


# -- resolving -----------------------------------------------------------------

_GROUPS: Final[dict[str, type[Any]]] = {
    "server": ServerConfig,
    "storage": StorageConfig,
    "dedup": DedupConfig,
    "time": TimeConfig,
    "limits": Limits,
    "live": LiveConfig,
    "sink": SinkConfig,
}

# Environment variable -> (group, field); the group "" is the top level.
ENVIRONMENT: Final[dict[str, tuple[str, str]]] = {
    "MAIDIAN_PLAN": ("", "plan"),
    "MAIDIAN_DATA": ("storage", "data_dir"),
    "MAIDIAN_HOST": ("server", "host"),
    "MAIDIAN_PORT": ("server", "port"),
    "MAIDIAN_WORKERS": ("server", "workers"),
    "MAIDIAN_EVENT_LOOP": ("server", "event_loop"),
    "MAIDIAN_DURABILITY": ("storage", "durability"),
    "MAIDIAN_SYNC_INTERVAL_MS": ("storage", "sync_interval_ms"),
    "MAIDIAN_DEDUP_WINDOW_S": ("dedup", "window_s"),
    "MAIDIAN_SINK": ("sink", "kind"),
    "MAIDIAN_KAFKA_BOOTSTRAP": ("sink", "kafka_bootstrap"),
}


# How environment variables and flags may say a boolean (the file says true or false).
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _coerce(group: str, name: str, value: Any, kind: type[Any]) -> Any:
    where = f"{group}.{name}" if group else name
    try:
        default = getattr(kind(), name) if group else None
    except TypeError:
        default = None
    if name in ("plan", "data_dir"):
        return Path(value)
    if name == "durability":
        if value not in ("fsync", "write"):
            raise ConfigError(f"{where}: expected 'fsync' or 'write'")
        return value
    if name == "event_loop":
        if value not in EVENT_LOOPS:
            raise ConfigError(f"{where}: expected one of {', '.join(EVENT_LOOPS)}")
        return value
    if isinstance(default, bool):
        if isinstance(value, str):
            word = value.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ConfigError(f"{where}: expected true or false, not {value[:40]!r}")
            return word in _TRUE
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if isinstance(default, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number") from None
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string")
    return value


def _group(name: str, kind: type[Any], table: Mapping[str, Any]) -> Any:
    known = set(kind.__dataclass_fields__)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"[{name}]: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    return kind(**{k: _coerce(name, k, v, kind) for k, v in table.items()})


def _write_key(entry: Mapping[str, Any], i: int) -> WriteKey:
    where = f"write_keys[{i}]"
    if "key" in entry:
        raise ConfigError(f"{where}: store the key's sha256, never the key (maidian keys hash KEY)")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise ConfigError(f"{where}: 'sha256' must be the 64-hex-digit SHA-256 of the key")
    return WriteKey(
        name=str(entry.get("name", f"key{i}")),
        sha256=digest.lower(),
        revoked=bool(entry.get("revoked", False)),
        rate_events_per_s=float(entry.get("rate_events_per_s", 0)),
        burst_events=float(entry.get("burst_events", 0)),
    )


def _source(entry: Mapping[str, Any], i: int, env: Mapping[str, str]) -> ServerSource:
    where = f"sources[{i}]"
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' is required")
    secret: str | None
    if "secret_env" in entry:
        secret = env.get(str(entry["secret_env"]))
        if not secret:
            raise ConfigError(f"{where}: environment variable {entry['secret_env']!r} is not set")
    else:
        secret = entry.get("secret")
    if not isinstance(secret, str) or len(secret) < 16:
        raise ConfigError(f"{where}: a secret of at least 16 characters is required ('secret_env' or 'secret')")
    return ServerSource(name=name, secret=secret.encode(), revoked=bool(entry.get("revoked", False)))


_VENDOR_TABLES: Final = {"sensors": "projects", "segment": "sources"}
_VENDOR_SETTINGS: Final = ("derive", "trusted_proxies")
_DERIVATIONS: Final = ("ip", "user_agent")


def _derive(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, str) and d in _DERIVATIONS for d in raw):
        raise ConfigError(f"{where}: 'derive' must be a list of {', '.join(repr(d) for d in _DERIVATIONS)}")
    return tuple(dict.fromkeys(raw))


def _networks(raw: Any, where: str, name: str) -> tuple[Network, ...]:
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise ConfigError(f"{where}: '{name}' must be a list of addresses or networks (\"10.20.0.0/16\")")
    try:
        return tuple(ipaddress.ip_network(a, strict=False) for a in raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {name}: {exc}") from None


def vendor_settings(doc: Any) -> tuple[tuple[str, ...], tuple[Network, ...]]:
    """`[vendors] derive` and `trusted_proxies` (docs/migration.md, "What maidian derives")."""
    if not isinstance(doc, dict):
        return _DERIVATIONS, ()
    derive = _derive(doc["derive"], "vendors") if "derive" in doc else _DERIVATIONS
    return derive, _networks(doc.get("trusted_proxies", []), "vendors", "trusted_proxies")


def _vendor_sources(doc: Any, keys: list[WriteKey]) -> dict[str, tuple[VendorSource, ...]]:
    """`[vendors]`: per vendor, its bindings, each checked against the write keys."""
    if not isinstance(doc, dict):
        raise ConfigError("vendors: expected a table ([vendors.sensors], [vendors.segment])")
    unknown = sorted(set(doc) - set(_VENDOR_TABLES) - set(_VENDOR_SETTINGS))
    if unknown:
        raise ConfigError(f"vendors: unknown vendor {unknown[0]!r}; known: {', '.join(_VENDOR_TABLES)}")
    names = {k.name for k in keys}
    out: dict[str, tuple[VendorSource, ...]] = {}
    for vendor, list_name in _VENDOR_TABLES.items():
        table = doc.get(vendor, {})
        if not isinstance(table, dict) or set(table) - {list_name}:
            raise ConfigError(f"vendors.{vendor}: expected only [[vendors.{vendor}.{list_name}]]")
        entries = table.get(list_name, [])
        if not isinstance(entries, list):
            raise ConfigError(f"vendors.{vendor}.{list_name}: expected an array of tables")
        found: list[VendorSource] = []
        for i, entry in enumerate(entries):
            where = f"vendors.{vendor}.{list_name}[{i}]"
            found.append(_vendor_source(entry, where, vendor, names))
        seen = [v.name for v in found]
        twice = sorted({n for n in seen if seen.count(n) > 1})
        if twice:
            raise ConfigError(f"vendors.{vendor}.{list_name}: {twice[0]!r} is listed twice")
        out[vendor] = tuple(found)
    return out


def _vendor_source(entry: Any, where: str, vendor: str, key_names: set[str]) -> VendorSource:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table")
    known = {"write_key", "trusted", "allow_from", "derive"} | ({"name"} if vendor == "sensors" else set())
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    key = entry.get("write_key")
    if not isinstance(key, str) or key not in key_names:
        raise ConfigError(f"{where}: 'write_key' must name one of the [[write_keys]] entries")
    name = entry.get("name", key) if vendor == "sensors" else key
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: 'name' (the Sensors project) is required")
    trusted = entry.get("trusted", False)
    if not isinstance(trusted, bool):
        raise ConfigError(f"{where}: 'trusted' must be true or false")
    networks = _networks(entry.get("allow_from", []), where, "allow_from")
    derive = _derive(entry["derive"], where) if "derive" in entry else None
    if trusted and not networks:
        raise ConfigError(f"{where}: a trusted source must list the addresses it may send from ('allow_from')")
    return VendorSource(name=name, write_key=key, trusted=trusted, allow_from=networks, derive=derive)


_SUPPORT_SCALARS: Final = frozenset(SupportConfig.__dataclass_fields__) - {"accounts", "sso_proxies"}


def _support(doc: Any) -> SupportConfig:
    """`[support]` with its `[[support.accounts]]` (docs/guide-support.md)."""
    if not isinstance(doc, dict):
        raise ConfigError("support: expected a table")
    scalars = {k: v for k, v in doc.items() if k in _SUPPORT_SCALARS}
    base: SupportConfig = _group("support", SupportConfig, scalars)
    unknown = sorted(set(doc) - set(SupportConfig.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"[support]: unknown setting {unknown[0]!r}")
    raw = doc.get("sso_proxies", [])
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise ConfigError("support.sso_proxies: expected a list of addresses or networks")
    try:
        proxies = tuple(ipaddress.ip_network(a, strict=False) for a in raw)
    except ValueError as exc:
        raise ConfigError(f"support.sso_proxies: {exc}") from None
    entries = doc.get("accounts", [])
    if not isinstance(entries, list):
        raise ConfigError("support.accounts: expected an array of tables ([[support.accounts]])")
    accounts = tuple(_support_account(e, i) for i, e in enumerate(entries))
    names = [a.name for a in accounts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"support.accounts: {twice[0]!r} is listed twice")
    return replace(base, accounts=accounts, sso_proxies=proxies)


def _support_account(entry: Any, i: int) -> SupportAccount:
    where = f"support.accounts[{i}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table")
    if "password" in entry or "token" in entry:
        raise ConfigError(f"{where}: store a hash, never the secret (maidian support add-user)")
    known = set(SupportAccount.__dataclass_fields__)
    unknown = sorted(set(entry) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown setting {unknown[0]!r}; known: {', '.join(sorted(known))}")
    name, role = entry.get("name"), entry.get("role")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: 'name' is required")
    if role not in SUPPORT_ROLES:
        raise ConfigError(f"{where}: 'role' must be one of {', '.join(SUPPORT_ROLES)}")
    scrypt = entry.get("password_scrypt", "")
    token = entry.get("token_sha256", "")
    if not isinstance(scrypt, str) or not isinstance(token, str):
        raise ConfigError(f"{where}: 'password_scrypt' and 'token_sha256' are strings")
    if scrypt and not scrypt.startswith("scrypt$"):
        raise ConfigError(f"{where}: 'password_scrypt' must come from 'maidian support hash-password'")
    if token and len(token) != 64:
        raise ConfigError(f"{where}: 'token_sha256' must be the 64-hex-digit SHA-256 of the token")
    return SupportAccount(name, role, scrypt, token.lower(), bool(entry.get("disabled", False)))


def file_shape() -> Table:
    """Every key the TOML file may hold, and its type (config_file.py checks the file against it)."""
    vendor = {"write_key": STR, "trusted": BOOL, "allow_from": STRINGS, "derive": STRINGS}
    return Table(
        {
            "plan": STR,
            **{name: group(kind) for name, kind in _GROUPS.items()},
            "write_keys": Tables(
                Table(
                    {
                        "name": STR,
                        "sha256": STR,
                        "key": STR,  # refused with its own message (`_write_key`): store the hash
                        "revoked": BOOL,
                        "rate_events_per_s": NUMBER,
                        "burst_events": NUMBER,
                    }
                )
            ),
            "sources": Tables(Table({"name": STR, "secret": STR, "secret_env": STR, "revoked": BOOL})),
            "support": group(
                SupportConfig,
                sso_proxies=STRINGS,
                accounts=Tables(
                    Table(
                        {
                            "name": STR,
                            "role": STR,
                            "password_scrypt": STR,
                            "token_sha256": STR,
                            "disabled": BOOL,
                            # Secrets in clear: refused with their own message (`_support_account`).
                            "password": STR,
                            "token": STR,
                        }
                    )
                ),
            ),
            "vendors": Table(
                {
                    "derive": STRINGS,
                    "trusted_proxies": STRINGS,
                    "sensors": Table({"projects": Tables(Table({"name": STR, **vendor}))}),
                    "segment": Table({"sources": Tables(Table(vendor))}),
                }
            ),
        }
    )


def read_file(file: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML file parsed and checked against `file_shape` (ConfigError naming the file, line and key)."""
    try:
        text = Path(file).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    check_file(doc, file_shape(), file=str(file), text=text)
    return doc


def resolve_config(
    *,
    file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    write_keys: tuple[str, ...] = (),
) -> Config:
    """Resolve flags, then environment, then the TOML file, then defaults, into one `Config`.

    `flags` uses the environment's keys without the prefix in lower case
    (`plan`, `data`, `host`, `port`, `workers`, `durability`, ...); `write_keys`
    are plain keys from the command line, hashed here.
    """
    env = dict(os.environ if env is None else env)
    file = file or env.get("MAIDIAN_CONFIG")
    doc: dict[str, Any] = {}
    if file:
        doc = read_file(file)
    tables: dict[str, dict[str, Any]] = {g: dict(doc.get(g, {})) for g in _GROUPS}
    top: dict[str, Any] = {"plan": doc.get("plan")}
    unknown = sorted(set(doc) - {*_GROUPS, "plan", "write_keys", "sources", "vendors", "support"})
    if unknown:
        raise ConfigError(f"{file}: unknown top-level setting {unknown[0]!r}")
    overrides = {name: env[name] for name in ENVIRONMENT if env.get(name)}
    for name, value in (flags or {}).items():
        if value is not None:
            overrides["MAIDIAN_" + name.upper()] = value
    for name, value in overrides.items():
        if name not in ENVIRONMENT:
            continue
        group, field_name = ENVIRONMENT[name]
        (tables[group] if group else top)[field_name] = value
    if top["plan"] is None:
        raise ConfigError("no tracking plan: give --plan, MAIDIAN_PLAN or 'plan' in the config file")
    keys = [_write_key(e, i) for i, e in enumerate(doc.get("write_keys", []))]
    plain = [*write_keys, *(k for k in env.get("MAIDIAN_WRITE_KEYS", "").split(",") if k.strip())]
    keys += [WriteKey(name=f"key{len(keys) + i}", sha256=hash_key(k.strip())) for i, k in enumerate(plain)]
    sources = tuple(_source(e, i, env) for i, e in enumerate(doc.get("sources", [])))
    vendors = _vendor_sources(doc.get("vendors", {}), keys)
    derive, proxies = vendor_settings(doc.get("vendors", {}))
    config = Config(
        plan=Path(top["plan"]),
        server=_group("server", ServerConfig, tables["server"]),
        storage=_group("storage", StorageConfig, tables["storage"]),
        dedup=_group("dedup", DedupConfig, tables["dedup"]),
        time=_group("time", TimeConfig, tables["time"]),
        limits=_group("limits", Limits, tables["limits"]),
        live=_group("live", LiveConfig, tables["live"]),
        support=_support(doc.get("support", {})),
        sink=_group("sink", SinkConfig, tables["sink"]),
        auth=AuthConfig(
            write_keys=tuple(keys),
            sources=sources,
            sensors_projects=vendors["sensors"],
            segment_sources=vendors["segment"],
            vendor_derive=derive,
            trusted_proxies=proxies,
        ),
    )
    return check_config(config)


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where a configuration came from, so it can be resolved again (SIGHUP reloads keys)."""

    file: str | None = None
    flags: tuple[tuple[str, Any], ...] = ()
    write_keys: tuple[str, ...] = ()

    def resolve(self, env: Mapping[str, str] | None = None) -> Config:
        return resolve_config(file=self.file, env=env, flags=dict(self.flags), write_keys=self.write_keys)


def check_config(config: Config) -> Config:
    """Refuse settings that would break a promise (a dedup window shorter than the SDK's spool age)."""
    if config.dedup.window_s < DEFAULT_DEDUP_WINDOW_S:
        raise ConfigError(
            f"dedup.window_s: {config.dedup.window_s:g} s is shorter than the SDK's 7-day spool plus a day "
            f"({DEFAULT_DEDUP_WINDOW_S} s); retries would be stored twice"
        )
    if not 1 <= config.server.workers <= 64:
        raise ConfigError("server.workers: expected 1 to 64")
    for name in ("max_in_flight", "max_in_flight_per_sender", "max_in_flight_unauthenticated"):
        if getattr(config.server, name) < 1:
            raise ConfigError(f"server.{name}: expected at least 1")
    if config.server.body_timeout_s <= 0:
        raise ConfigError("server.body_timeout_s: expected more than 0")
    live = config.live
    if live.enabled and not live.allow_loopback and len(live.token_sha256) != 64:
        raise ConfigError(
            "live.token_sha256: the live view needs the 64-hex-digit SHA-256 of a token (maidian keys hash)"
        )
    if live.history_events < 0 or live.queue_events < 1:
        raise ConfigError("live: history_events must be >= 0 and queue_events >= 1")
    _check_support(config.support)
    if config.sink.kind not in ("local", "kafka"):
        raise ConfigError("sink.kind: expected 'local' or 'kafka'")
    if config.sink.kind == "kafka" and not config.sink.kafka_bootstrap:
        raise ConfigError("sink.kafka_bootstrap: the kafka sink needs the brokers (--kafka-bootstrap HOST:PORT,...)")
    if not config.auth.write_keys and not config.auth.sources:
        raise ConfigError("no write key or server source: give --write-key, MAIDIAN_WRITE_KEYS or [[write_keys]]")
    return config


def _check_support(support: SupportConfig) -> None:
    if not support.enabled:
        return
    if not support.accounts:
        raise ConfigError("support: enabled with no [[support.accounts]]; add one with 'maidian support add-user'")
    if not support.sso_header and not any(a.password_scrypt or a.token_sha256 for a in support.accounts):
        raise ConfigError("support: no account has a password hash or a token, and no sso_header is set")
    if support.sso_header and not support.sso_proxies:
        raise ConfigError("support.sso_header: list the reverse proxies it is trusted from (sso_proxies)")
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(support.time_zone)
    except (KeyError, ValueError, OSError):
        raise ConfigError(f"support.time_zone: {support.time_zone!r} is not a known time zone") from None
    if support.max_failures < 1 or support.idle_timeout_s <= 0 or support.session_max_s <= 0:
        raise ConfigError("support: max_failures, idle_timeout_s and session_max_s must be positive")
    if not 10 <= support.page_events <= 2000:
        raise ConfigError("support.page_events: expected 10 to 2000")


def with_storage(config: Config, **changes: Any) -> Config:
    """A copy of `config` with storage settings changed (per worker process, tests)."""
    return replace(config, storage=replace(config.storage, **changes))
