"""Who may use the support view: password and token checks, sessions, CSRF tokens, lock-out, single sign-on.

Promises:
- passwords are stored only as scrypt hashes (`scrypt$N$r$p$salt$hash`, salt
  and hash in base64); `hash_password` uses N=2**17, r=8, p=1 (OWASP's
  password storage guidance, 128 MiB of memory per check); a stored hash
  states its own parameters, and one cheaper than N=2**14 is refused. Tokens
  issued by the operator are stored as SHA-256. Checks compare in constant time.
- a session expires after `idle_timeout_s` without a request and after
  `session_max_s` in all; its id and CSRF token are 192-bit random values.
- after `max_failures` failed logins within `lockout_s`, the account *and* the
  client address are refused for `lockout_s`, even with the right password; a
  login to an unknown account counts against the address.
- single sign-on: the header naming the user is read only when the request's
  peer is one of the configured proxies; the user must still be a listed,
  enabled account (the role comes from the configuration, never the header).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from maidian.collector.errors import CollectorError
from maidian.collector.settings import SupportAccount, SupportConfig, hash_key

__all__ = [
    "SCRYPT_N",
    "Access",
    "LockedOut",
    "Session",
    "hash_password",
    "verify_password",
]

SCRYPT_N: Final = 2**17
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
_MIN_N: Final = 2**14
_SALT_BYTES: Final = 16
_HASH_BYTES: Final = 32
# Sessions kept at once per process; the oldest go first (each is a few hundred bytes).
_MAX_SESSIONS: Final = 10_000
_MAX_TRACKED: Final = 10_000


class LockedOut(CollectorError):
    """Too many failed logins for this account or from this address; `retry_after_s` says when to try again."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("too many failed logins; try again later")
        self.retry_after_s = retry_after_s


def _maxmem(n: int, r: int, p: int) -> int:
    return 128 * r * (n + p + 2) + (1 << 20)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The stored form of a password: `scrypt$N$r$p$salt$hash`."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_maxmem(n, r, p), dklen=_HASH_BYTES)
    b64 = base64.b64encode
    return f"scrypt${n}${r}${p}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches the stored scrypt hash (a malformed or too cheap hash matches nothing)."""
    try:
        tag, n_s, r_s, p_s, salt_s, digest_s = stored.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt, digest = base64.b64decode(salt_s, validate=True), base64.b64decode(digest_s, validate=True)
    except ValueError:
        return False
    if tag != "scrypt" or n < _MIN_N or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
        return False
    got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=_maxmem(n, r, p), dklen=len(digest))
    return hmac.compare_digest(got, digest)


@dataclass(slots=True)
class Session:
    """One signed-in member of staff. `view` is the one person they have open (set by a search)."""

    sid: str
    account: str
    role: str
    csrf: str
    created_s: float
    seen_s: float
    via: str
    view: object | None = field(default=None)


@dataclass(slots=True)
class _Failures:
    times: list[float]
    locked_until: float = 0.0


class Access:
    """The accounts, sessions and lock-out counters of one collector process."""

    def __init__(self, settings: SupportConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.accounts = {a.name: a for a in settings.accounts if not a.disabled}
        self.sessions: dict[str, Session] = {}
        self._failures: dict[str, _Failures] = {}
        # A check against a missing account costs what a real one does: no timing tells which names exist.
        self._decoy = hash_password(secrets.token_hex(8), n=_MIN_N)

    # -- logging in --------------------------------------------------------------------

    def retry_after_s(self, name: str, address: str) -> float:
        """Seconds until this account and address may try again (0: they may now)."""
        now = self.clock()
        found = (self._failures.get("u:" + name), self._failures.get("a:" + address))
        waits = [f.locked_until - now for f in found if f is not None]
        return max([0.0, *(w for w in waits if w > 0)])

    def login(self, name: str, secret: str, address: str) -> Session | None:
        """A new session for a right password or token; None (and a failure counted) otherwise.

        Raises `LockedOut` while the account or the address is locked, without checking the secret.
        """
        wait = self.retry_after_s(name, address)
        if wait > 0:
            raise LockedOut(wait)
        account = self.accounts.get(name)
        if account is None or not self._matches(account, secret):
            if account is None:
                verify_password(secret, self._decoy)
            self._fail("a:" + address)
            if account is not None:
                self._fail("u:" + name)
            return None
        self._failures.pop("u:" + name, None)
        return self._open(account, "password")

    def _matches(self, account: SupportAccount, secret: str) -> bool:
        ok = False
        if account.token_sha256:
            ok = hmac.compare_digest(hash_key(secret), account.token_sha256)
        if not ok and account.password_scrypt:
            ok = verify_password(secret, account.password_scrypt)
        return ok

    def _fail(self, key: str) -> None:
        now = self.clock()
        window = self.settings.lockout_s
        entry = self._failures.get(key)
        if entry is None:
            if len(self._failures) >= _MAX_TRACKED:
                self._forget_old(now)
            entry = self._failures[key] = _Failures([])
        entry.times = [t for t in entry.times if t > now - window] + [now]
        if len(entry.times) >= self.settings.max_failures:
            entry.locked_until = now + window
            entry.times = []

    def _forget_old(self, now: float) -> None:
        window = self.settings.lockout_s
        for key in [
            k for k, f in self._failures.items() if f.locked_until < now and all(t < now - window for t in f.times)
        ]:
            del self._failures[key]

    def sso(self, header_value: str, peer: str | None) -> Session | None:
        """A session for the user a trusted proxy vouches for, or None (not from a proxy, or not an account)."""
        settings = self.settings
        if not settings.sso_header or not header_value or not _peer_in(peer, settings):
            return None
        account = self.accounts.get(header_value.strip())
        return None if account is None else self._open(account, "sso")

    def _open(self, account: SupportAccount, via: str) -> Session:
        now = self.clock()
        self._expire(now)
        if len(self.sessions) >= _MAX_SESSIONS:
            del self.sessions[min(self.sessions.values(), key=lambda s: s.seen_s).sid]
        session = Session(
            secrets.token_urlsafe(24), account.name, account.role, secrets.token_urlsafe(24), now, now, via
        )
        self.sessions[session.sid] = session
        return session

    # -- each request ------------------------------------------------------------------

    def session(self, sid: str) -> Session | None:
        """The live session with this id (its idle clock restarted), or None."""
        session = self.sessions.get(sid)
        if session is None:
            return None
        now = self.clock()
        if self._expired(session, now) or session.account not in self.accounts:
            del self.sessions[sid]
            return None
        session.seen_s = now
        return session

    def csrf_ok(self, session: Session, token: str) -> bool:
        return bool(token) and hmac.compare_digest(token.encode(), session.csrf.encode())

    def logout(self, session: Session) -> None:
        self.sessions.pop(session.sid, None)

    def _expired(self, session: Session, now: float) -> bool:
        s = self.settings
        return now - session.seen_s > s.idle_timeout_s or now - session.created_s > s.session_max_s

    def _expire(self, now: float) -> None:
        for sid in [sid for sid, s in self.sessions.items() if self._expired(s, now)]:
            del self.sessions[sid]


def _peer_in(peer: str | None, settings: SupportConfig) -> bool:
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    return any(address in network for network in settings.sso_proxies)
