"""Configuration: a frozen `Config` made of small groups, resolved once.

Each setting comes from the constructor's argument, else from the environment
(`MAIDIAN_ENDPOINT`, `MAIDIAN_WRITE_KEY`, `MAIDIAN_SOURCE`, `MAIDIAN_SECRET`,
`MAIDIAN_PII_KEY`, `MAIDIAN_MODE`, `MAIDIAN_SPOOL`, `MAIDIAN_DEBUG`,
`MAIDIAN_CA_BUNDLE`, `MAIDIAN_CLIENT_CERT`, `MAIDIAN_CLIENT_KEY`,
`MAIDIAN_PROXY`), else from the defaults below, each of which says where its
number comes from. Resolution happens once, in the client's constructor;
nothing reads the environment later.

The proxy follows the standard variables as urllib reads them
(`https_proxy`/`HTTPS_PROXY` for an https endpoint, `http_proxy`/`HTTP_PROXY`
for http, the lower-case spelling first; `no_proxy`/`NO_PROXY` exempts hosts,
judged by `urllib.request.proxy_bypass_environment`); `proxy=` (or
`MAIDIAN_PROXY`) overrides them, and `proxy=""` means none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final, Literal
from urllib.parse import urlsplit

import msgspec

from .errors import ConfigError

__all__ = [
    "BatchLimits",
    "Config",
    "Mode",
    "Overflow",
    "QueueLimits",
    "RetryPolicy",
    "SpoolConfig",
    "Timeouts",
    "resolve_config",
]

Mode = Literal["strict", "warn", "off"]
Overflow = Literal["drop_oldest", "drop_newest"]
MODES: Final = ("strict", "warn", "off")
OVERFLOWS: Final = ("drop_oldest", "drop_newest")


class BatchLimits(msgspec.Struct, frozen=True):
    """When a batch is closed and how many may be on the wire at once."""

    # 500 order events pack to ~150 KiB and compress to ~7 KiB: a quarter of the
    # collector's 2,000-event cap (envelope.Limits), far below its 1 MiB body cap.
    max_events: int = 500
    # Packed bytes before compression; half of the collector's 1 MiB body cap, so
    # even incompressible events never meet a 413.
    max_bytes: int = 512 << 10
    # Segment and PostHog flush every 0.5-10 s; one second keeps an app's radio
    # mostly idle and a QA live view current.
    linger_s: float = 1.0
    # Two requests in flight double throughput against a slow collector; more
    # only deepens queues there (docs/reliability.md, T8 bounds in-flight at 2).
    max_in_flight: int = 2
    # zstd level 1: the same ratio as 3 on repetitive event batches at about
    # twice the speed (benchmarks/sdk_peers.py measures both).
    zstd_level: int = 1


class RetryPolicy(msgspec.Struct, frozen=True):
    """Exponential backoff with full jitter; Retry-After is a minimum."""

    # First retry after up to 0.5 s, doubling per consecutive failure.
    base_s: float = 0.5
    # A 90 s outage then costs about 10 attempts (docs/reliability.md, T3: <= outage/20 s + 10).
    cap_s: float = 30.0
    # The protocol's cap on honouring Retry-After (docs/protocol.md).
    max_retry_after_s: float = 600.0
    # 401/403: a key fixed in the console should start working within a minute.
    auth_retry_s: float = 60.0


class QueueLimits(msgspec.Struct, frozen=True):
    """The in-memory buffer of packed events."""

    # ~300 B per packed order event: 100,000 events hold about 30 MiB, a
    # ten-minute outage at 150 events/s.
    max_events: int = 100_000
    # Keep the newest data when full; the spool's age cap drops oldest too,
    # so one rule holds everywhere (docs/decisions.md).
    overflow: Overflow = "drop_oldest"


class SpoolConfig(msgspec.Struct, frozen=True):
    """The optional disk spool; `None` in `Config.spool` means memory only."""

    path: str
    # 64 MiB is about 200,000 order events: a day of a busy trading client.
    max_bytes: int = 64 << 20
    # The collector deduplicates for >= 8 days (docs/reliability.md): a spooled
    # event older than 7 days could be stored twice, so it is dropped, counted.
    max_age_s: float = 7 * 24 * 3600.0
    # Segments are dropped whole at the caps: 1/16 of the default cap.
    segment_bytes: int = 4 << 20
    # fsync at most this often (0 disables fsync). Writes reach the OS at once,
    # so a killed process loses nothing; this bounds loss on power failure.
    fsync_interval_s: float = 1.0


class Timeouts(msgspec.Struct, frozen=True):
    """Time budgets."""

    # docs/reliability.md, T8: a blackholed collector is detected within 10.5 s.
    request_s: float = 10.0
    # The exit hook's budget; peers were seen holding exit for 13 s.
    exit_s: float = 2.0
    connect_s: float = 5.0


class Config(msgspec.Struct, frozen=True):
    """Everything a client needs, resolved once."""

    endpoint: str
    write_key: str | None = None
    source: str | None = None
    secret: bytes | None = None
    mode: Mode = "off"
    pii_key: bytes | None = None
    anonymous_id: str | None = None
    app_name: str | None = None
    app_version: str | None = None
    debug: bool = False
    batch: BatchLimits = msgspec.field(default_factory=BatchLimits)
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    queue: QueueLimits = msgspec.field(default_factory=QueueLimits)
    spool: SpoolConfig | None = None
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    # An http:// forward proxy (CONNECT for an https endpoint); None: connect directly.
    proxy: str | None = None
    # TLS: a CA bundle to trust instead of the system's, and a client certificate (mutual TLS).
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None


def _pick(value: str | None, env: Mapping[str, str], name: str) -> str | None:
    if value is not None:
        return value
    found = env.get(name)
    return found if found else None


def _as_bytes(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return value.encode("utf-8")


def resolve_config(
    endpoint: str | None = None,
    *,
    write_key: str | None = None,
    source: str | None = None,
    secret: str | bytes | None = None,
    mode: str | None = None,
    has_plan: bool = False,
    pii_key: str | bytes | None = None,
    anonymous_id: str | None = None,
    app_name: str | None = None,
    app_version: str | None = None,
    debug: bool | None = None,
    batch: BatchLimits | None = None,
    retry: RetryPolicy | None = None,
    queue: QueueLimits | None = None,
    spool: SpoolConfig | str | os.PathLike[str] | None = None,
    timeouts: Timeouts | None = None,
    proxy: str | None = None,
    ca_bundle: str | os.PathLike[str] | None = None,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Arguments, then the environment, then defaults; raises `ConfigError` naming the setting."""
    env = os.environ if env is None else env
    url = _pick(endpoint, env, "MAIDIAN_ENDPOINT")
    if url is None:
        raise ConfigError("no endpoint: pass Client('http://host:port', ...) or set MAIDIAN_ENDPOINT")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"endpoint must be an http(s) base URL such as http://127.0.0.1:8106, got {url!r}")
    if parts.query or "key" in url.lower():
        raise ConfigError("endpoint must not carry a query or a key; pass write_key= instead")
    key = _pick(write_key, env, "MAIDIAN_WRITE_KEY")
    src = _pick(source, env, "MAIDIAN_SOURCE")
    sec = _as_bytes(secret) if secret is not None else _as_bytes(_pick(None, env, "MAIDIAN_SECRET"))
    if (src is None) != (sec is None):
        raise ConfigError("a server source needs both source= and secret= (or MAIDIAN_SOURCE and MAIDIAN_SECRET)")
    if key is None and src is None:
        raise ConfigError("no credentials: pass write_key= (apps) or source= and secret= (backend services)")
    chosen = _pick(mode, env, "MAIDIAN_MODE") or ("warn" if has_plan else "off")
    if chosen not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {chosen!r}")
    if chosen != "off" and not has_plan:
        raise ConfigError(f"mode={chosen!r} needs a tracking plan: pass plan=")
    q = queue or QueueLimits()
    if q.overflow not in OVERFLOWS:
        raise ConfigError(f"queue.overflow must be one of {', '.join(OVERFLOWS)}, got {q.overflow!r}")
    if q.max_events < 1:
        raise ConfigError("queue.max_events must be at least 1")
    b = batch or BatchLimits()
    if b.max_events < 1 or b.max_bytes < 1 or b.max_in_flight < 1 or b.linger_s < 0:
        raise ConfigError(f"batch limits must be positive, got {b}")
    spool_path = spool if spool is not None else _pick(None, env, "MAIDIAN_SPOOL")
    spool_cfg = (
        spool_path if isinstance(spool_path, SpoolConfig) or spool_path is None else SpoolConfig(os.fspath(spool_path))
    )
    dbg = debug if debug is not None else env.get("MAIDIAN_DEBUG", "") not in ("", "0", "false")
    ca = _file_setting(ca_bundle, env, "MAIDIAN_CA_BUNDLE", "ca_bundle")
    cert = _file_setting(client_cert, env, "MAIDIAN_CLIENT_CERT", "client_cert")
    cert_key = _file_setting(client_key, env, "MAIDIAN_CLIENT_KEY", "client_key")
    if cert_key is not None and cert is None:
        raise ConfigError("client_key needs client_cert (the certificate it belongs to)")
    return Config(
        endpoint=url.rstrip("/"),
        write_key=key,
        source=src,
        secret=sec,
        mode=chosen,  # type: ignore[arg-type]  # checked against MODES above
        pii_key=_as_bytes(pii_key) if pii_key is not None else _as_bytes(_pick(None, env, "MAIDIAN_PII_KEY")),
        anonymous_id=anonymous_id,
        app_name=app_name,
        app_version=app_version,
        debug=dbg,
        batch=b,
        retry=retry or RetryPolicy(),
        queue=q,
        spool=spool_cfg,
        timeouts=timeouts or Timeouts(),
        proxy=_resolve_proxy(proxy, env, parts.scheme, parts.hostname),
        ca_bundle=ca,
        client_cert=cert,
        client_key=cert_key,
    )


def _file_setting(value: str | os.PathLike[str] | None, env: Mapping[str, str], name: str, what: str) -> str | None:
    path = os.fspath(value) if value is not None else _pick(None, env, name)
    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"{what}: no such file {path!r}")
    return path


def _resolve_proxy(proxy: str | None, env: Mapping[str, str], scheme: str, host: str) -> str | None:
    chosen = proxy if proxy is not None else _pick(None, env, "MAIDIAN_PROXY")
    if chosen is None:
        chosen = env.get(f"{scheme}_proxy") or env.get(f"{scheme.upper()}_PROXY")
        no_proxy = env.get("no_proxy") or env.get("NO_PROXY")
        if chosen and no_proxy:
            import urllib.request

            # Documented since Python 2 and stable, though typeshed does not list it.
            bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
            if bypass(host, {"no": no_proxy}):
                return None
    if not chosen:
        return None
    if "://" not in chosen:
        chosen = "http://" + chosen  # how urllib reads a bare host:port
    parts = urlsplit(chosen)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"proxy must be an http:// forward proxy URL such as http://proxy:3128, not {parts.scheme!r}")
    return chosen
