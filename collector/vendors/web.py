"""What the vendors' browser SDKs need besides ingestion: analytics.js's settings and metrics, and CORS everywhere.

Promises (docs/migration.md, "A web page with analytics.js"):

- `GET /segment/v1/projects/{writeKey}/settings` answers the settings
  analytics.js (`@segment/analytics-next`) fetches from its CDN before it
  sends anything, so a page needs only `cdnURL: "https://collector/segment"`.
  The settings name this collector as the Segment.io destination's `apiHost`
  (the host and scheme the request came to), enable nothing else, and turn
  the SDK's usage metrics off (`sampleRate: 0`). Unknown or revoked keys are
  answered as on the ingestion routes (401, 403), so a wrong key shows at
  load time.
- `POST /segment/v1/m` (analytics.js usage metrics, sent when a page passes
  its own `cdnSettings` with metrics on) is accepted and discarded: 200,
  counted per request in `maidian_vendor_requests_total`.
- On `/debug`, a browser's `Dry-Run` header is the web SDK's
  `debug_mode_upload` (`true`: store too), the opposite of the app SDKs'
  meaning (`true`: check only); see `debug_dry_run`.
- Every answer on the vendor paths, unknown paths under `/segment` (404)
  and unknown methods (405) included, carries the CORS headers, so a
  browser shows the status instead of a CORS failure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from maidian.collector.vendors.common import VendorResponse, cors_headers, header

__all__ = ["debug_dry_run", "metrics_response", "settings_response", "unrouted_response"]

SETTINGS_PATH: Final = "/segment/v1/projects/{write_key}/settings"
METRICS_PATH: Final = "/segment/v1/m"


def debug_dry_run(dry_run_header: bool, request_headers: Mapping[str, str]) -> bool:
    """Whether a `/debug` request only asks for the verdict (stores nothing).

    The Android and Python SDKs send `Dry-Run: true` to mean "check, do not
    import". The web SDK sends its `debug_mode_upload` option as `Dry-Run`
    instead: `true` means "import too", and its default `false` "check
    only". A browser's request (it has an `Origin`) is read the web SDK's way.
    """
    if header(request_headers, "origin"):
        return not dry_run_header
    return dry_run_header


def public_base(headers: Mapping[str, str], scheme: str, host: str, *, forwarded: bool) -> tuple[str, str]:
    """(scheme, host) the browser used to reach the collector; proxy headers count only when `forwarded`."""
    if forwarded:
        scheme = (header(headers, "x-forwarded-proto") or scheme).split(",")[0].strip() or scheme
        host = (header(headers, "x-forwarded-host") or host).split(",")[0].strip() or host
    return scheme, host


def settings_document(write_key: str, *, scheme: str, host: str) -> dict[str, Any]:
    """analytics-next's CDN settings with this collector as the only destination."""
    return {
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": f"{host}/segment/v1",
                "protocol": "https" if scheme == "https" else "http",
                "unbundledIntegrations": [],
                "addBundledMetadata": False,
                "maybeBundledConfigIds": {},
            }
        },
        "plan": {
            "track": {"__default": {"enabled": True, "integrations": {}}},
            "identify": {"__default": {"enabled": True}},
            "group": {"__default": {"enabled": True}},
        },
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }


def settings_response(
    write_key: str, request_headers: Mapping[str, str], *, scheme: str, host: str, forwarded: bool
) -> VendorResponse:
    """200 with the settings for `write_key` (already checked by the caller)."""
    scheme, host = public_base(request_headers, scheme, host, forwarded=forwarded)
    body = json.dumps(settings_document(write_key, scheme=scheme, host=host)).encode()
    headers = (*cors_headers(request_headers), ("Cache-Control", "no-cache"))
    return VendorResponse(200, body, "application/json", headers)


def metrics_response(request_headers: Mapping[str, str]) -> VendorResponse:
    """analytics.js's usage metrics: taken and discarded."""
    return VendorResponse(200, b"", "text/plain", cors_headers(request_headers))


def unrouted_response(status: int, path_length: int, request_headers: Mapping[str, str]) -> VendorResponse:
    """404 (no such path) or 405 (no such method) under a vendor path, in Segment's error shape, with CORS."""
    what = "path" if status == 404 else "method for this path"
    message = f"no such vendor {what} (a path of {path_length} characters); see docs/migration.md, 'The routes'"
    code = "not_found" if status == 404 else "method_not_allowed"
    body = json.dumps({"success": False, "code": code, "message": message}).encode()
    return VendorResponse(status, body, "application/json", cors_headers(request_headers))
