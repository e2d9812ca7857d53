"""Properties the collector derives for vendor traffic: `$ip` from the connection, device facts from the User-Agent.

Promises (docs/migration.md, "What maidian derives"):

- `$ip` is the TCP peer's address, or, when the peer is one of the
  configured trusted proxies (`[vendors] trusted_proxies`), the right-most
  `X-Forwarded-For` address that is not itself a trusted proxy. Senders write
  `X-Forwarded-For`, so without trusted proxies it is never read.
- From the request's `User-Agent`, parsed by `ua-parser` (the maintained
  uap-core rules, `ua-parser-builtins`): `$os`, `$os_version`, `$runtime`
  and `$runtime_version` (the browser: Sensors' `$browser`,
  `$browser_version`), `$device_model` and `$manufacturer`. Parses are
  cached per distinct User-Agent (a page sends one for all its requests).
- Derived values fill only what the record did not say itself (the app
  SDKs send their own `$os`, `$model`), on track events only: profile and
  identity operations carry no presets.
- Each derivation is switched per project or write key (`derive = ["ip",
  "user_agent"]` on a binding, else `[vendors] derive`); `derive = []` turns
  both off, as PIPL asks where IP addresses are not needed.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from maidian.collector.vendors.common import Mapped, header

__all__ = ["DERIVATIONS", "Deriver", "client_ip", "user_agent_properties"]

DERIVATIONS: Final = ("ip", "user_agent")
# Distinct User-Agents whose parse is kept; browsers and app versions in use number in the thousands.
_UA_CACHE: Final = 8192
# A User-Agent longer than this is not parsed (its regexes cost grows with the length; real ones are < 512).
_MAX_UA_CHARS: Final = 1024

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None


def client_ip(peer: str | None, headers: Mapping[str, str], trusted_proxies: Iterable[Network]) -> str | None:
    """The client's address: the peer, or behind trusted proxies the last untrusted `X-Forwarded-For` hop."""
    address = _address(peer or "")
    if address is None:
        return None
    proxies = tuple(trusted_proxies)

    def trusted(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(a in net for net in proxies)

    if not proxies or not trusted(address):
        return str(address)
    hops = (header(headers, "x-forwarded-for") or "").split(",")
    for hop in reversed(hops):
        found = _address(hop)
        if found is None:
            return str(address)  # a malformed hop: nothing before it can be believed
        if not trusted(found):
            return str(found)
        address = found
    return str(address)


@functools.lru_cache(maxsize=_UA_CACHE)
def user_agent_properties(user_agent: str) -> tuple[tuple[str, str], ...]:
    """The maidian presets a User-Agent tells, as (name, value) pairs; empty when it tells nothing.

    A header that is not UTF-8 (aiohttp hands its bytes over as surrogates) tells nothing.
    """
    if not user_agent or len(user_agent) > _MAX_UA_CHARS:
        return ()
    if not user_agent.isascii():
        try:
            user_agent.encode("utf-8")
        except UnicodeEncodeError:  # header bytes that were not UTF-8 (aiohttp keeps them as surrogates)
            return ()
    import ua_parser

    result = ua_parser.parse(user_agent)
    out: list[tuple[str, str]] = []
    if result.os is not None and result.os.family != "Other":
        out.append(("$os", result.os.family))
        version = ".".join(p for p in (result.os.major, result.os.minor, result.os.patch) if p)
        if version:
            out.append(("$os_version", version))
    if result.user_agent is not None and result.user_agent.family != "Other":
        out.append(("$runtime", result.user_agent.family))
        version = ".".join(p for p in (result.user_agent.major, result.user_agent.minor) if p)
        if version:
            out.append(("$runtime_version", version))
    device = result.device
    if device is not None and device.family != "Other":
        if device.model:
            out.append(("$device_model", device.model))
        if device.brand and not device.brand.startswith("Generic"):
            out.append(("$manufacturer", device.brand))
    return tuple((name, value[:256]) for name, value in out)


@dataclass(frozen=True, slots=True)
class Deriver:
    """The collector's derivations for vendor requests: trusted proxies and the default switches."""

    trusted_proxies: tuple[Network, ...] = ()
    default: tuple[str, ...] = DERIVATIONS

    def trusts(self, peer: str | None) -> bool:
        """Whether `peer` is a trusted proxy, whose forwarding headers are believed."""
        address = _address(peer or "")
        return address is not None and any(address in net for net in self.trusted_proxies)

    def apply(
        self, mapped: Mapped, *, peer: str | None, headers: Mapping[str, str], switches: tuple[str, ...] | None
    ) -> None:
        """Add the derived presets to the mapped track events, in place (see the module doc)."""
        on = self.default if switches is None else switches
        if not on:
            return
        derived: dict[str, Any] = {}
        if "user_agent" in on:
            derived.update(user_agent_properties(header(headers, "user-agent") or ""))
        ip = client_ip(peer, headers, self.trusted_proxies) if "ip" in on else None
        for event in mapped.events:
            if event.get("type") != "track":
                continue
            props = event["properties"]
            for name, value in derived.items():
                props.setdefault(name, value)
            if ip is not None:
                props["$ip"] = ip
