"""Errors raised by `maidian.collector`.

Every error says whose fault it is, and the ones a request can cause carry the
HTTP status and the protocol's error code they map to (docs/protocol.md), so
one middleware turns them into responses. A 5xx is never the sender's fault:
it is either an overload the sender should wait out (503 with Retry-After) or
a bug.

    CollectorError                      root of this package's errors
     ├── ConfigError                     the configuration cannot be used (the operator's fault)
     ├── DataDirError                    the data directory cannot be used (locked, unreadable, full)
 │    ├── DerivedFileError           catalog.sqlite or identity.sqlite is damaged: `maidian rebuild`
 │    └── DiskError                  its disk refused a read or write (full, quota, I/O error, read-only)
     ├── NoSuchPerson                    a reader was asked for an identity no stored event carries
 ├── PrivacyError                    a privacy operation could not be carried out (deletion, retention)
 ├── IdentityGraphError              the identity graph cannot do what was asked (identity/types.py)
     └── RequestError                    a request is refused; carries `status` and `code`
          ├── BadRequest                 400: the body is not a batch (undecodable, bad_batch, bad_encoding)
          ├── Unauthenticated            401: no key, unknown key, bad signature, replay
          ├── Forbidden                  403: a revoked key
          ├── RequestTimeout             408: the body stopped arriving
          ├── PayloadTooLarge            413: over a size limit (on the wire or decoded)
          ├── UnsupportedMediaType       415: unknown content type or encoding
          ├── RateLimited                429: this key is over its quota (Retry-After)
          ├── Unavailable                503: overloaded, disk full, writer behind, stopping (Retry-After)
          └── VendorError                a Sensors or Segment request refused (`vendors/common.py`), answered in
               │                          the vendor's own shape by the vendor routes (docs/migration.md)
               ├── Undecodable           400: a malformed form field, base64, gzip or JSON
               ├── Unauthenticated       401: no usable Segment write key (Sensors answers it 403)
               ├── Forbidden             403: a Sensors project or Segment key not accepted here
               ├── TooLarge              413: over a vendor limit (body, query, base64, records)
               └── UnsupportedMediaType  415: encrypted Sensors payloads, codings other than gzip

Messages never quote event values, identity values or keys: they name the
rule, the place and the limit.
"""

from __future__ import annotations

import errno
import os
from typing import Final

__all__ = [
    "BadRequest",
    "CollectorError",
    "ConfigError",
    "DataDirError",
    "DerivedFileError",
    "DiskError",
    "Forbidden",
    "NoSuchPerson",
    "PayloadTooLarge",
    "PrivacyError",
    "RateLimited",
    "RequestError",
    "RequestTimeout",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
]


class CollectorError(Exception):
    """Root of the errors raised by `maidian.collector`."""


class PrivacyError(CollectorError):
    """A privacy operation could not be carried out; the message says where."""


class ConfigError(CollectorError):
    """The configuration (file, environment or flags) is wrong; the message names the setting."""


class DataDirError(CollectorError):
    """The data directory cannot be used (missing, unreadable, or locked by another writer)."""


class DerivedFileError(DataDirError):
    """A file derived from the logs (catalog.sqlite, identity.sqlite) is damaged; `maidian rebuild` recreates it."""


class DiskError(DataDirError):
    """The data directory's disk refused a read or a write; `errno_name` says how (ENOSPC, EDQUOT, EIO, EROFS).

    Every writer of the data directory leaves it consistent when a write fails
    (SQLite rolls its transaction back; segments are replaced by rename and
    appended whole frames at a time), so the message can promise that running
    the command again once the disk takes writes finishes the job.
    """

    _WHAT: Final = {
        "ENOSPC": "its disk is full",
        "EDQUOT": "its disk quota is used up",
        "EIO": "its disk reports an I/O error",
        "EROFS": "its file system is read-only",
        "EFBIG": "a file reached the largest size allowed",
    }

    def __init__(self, errno_name: str, where: str = "") -> None:
        super().__init__(
            f"the data directory cannot be used: {self._WHAT.get(errno_name, errno_name)} ({errno_name})"
            f"{f' ({where})' if where else ''}; nothing is left half-done: free space (or fix the disk) and run"
            " the command again"
        )
        self.errno_name = errno_name

    @classmethod
    def from_os_error(cls, exc: OSError) -> DiskError | None:
        """The `DiskError` an OS error amounts to, or None when it is not the disk refusing."""
        name = errno.errorcode.get(exc.errno or 0)
        if name not in cls._WHAT:
            return None
        return cls(name, os.fsdecode(exc.filename) if exc.filename is not None else "")


class NoSuchPerson(CollectorError):
    """No stored event carries the identity a reader was asked for."""


class RequestError(CollectorError):
    """A request is refused. `status` and `code` are what the sender sees (docs/protocol.md)."""

    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.retry_after_s = retry_after_s


class BadRequest(RequestError):
    status = 400
    code = "bad_batch"


class Unauthenticated(RequestError):
    status = 401
    code = "unauthenticated"


class Forbidden(RequestError):
    status = 403
    code = "forbidden"


class RequestTimeout(RequestError):
    status = 408
    code = "timeout"


class PayloadTooLarge(RequestError):
    status = 413
    code = "too_large"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(RequestError):
    status = 429
    code = "rate_limited"


class Unavailable(RequestError):
    status = 503
    code = "unavailable"
