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

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from maidian.collector.config_file import BOOL, NUMBER, STR, STRINGS, Table, Tables, check_file, group
from maidian.collector.errors import ConfigError
from maidian.collector.settings import (
    DEFAULT_DEDUP_WINDOW_S,
    EVENT_LOOPS,
    SUPPORT_ROLES,
    AuthConfig,
    Config,
    DedupConfig,
    Durability,
    LiveConfig,
    Network,
    ServerConfig,
    ServerSource,
    SinkConfig,
    StorageConfig,
    SupportAccount,
    SupportConfig,
    TimeConfig,
    VendorSource,
    WriteKey,
    hash_key,
)
from maidian.tracking_plan.envelope import Limits

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
