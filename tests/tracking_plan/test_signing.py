"""Signatures bind the timestamp, nonce, method, path and body."""

from __future__ import annotations

from maidian.tracking_plan.signing import make_nonce, sign, signature_matches


def test_a_signature_matches_only_its_own_request() -> None:
    secret = b"s3cret"
    request = {
        "timestamp": 1_763_800_000,
        "nonce": make_nonce(),
        "method": "POST",
        "path": "/v1/batch",
        "body": b"zstd",
    }
    header = sign(secret, **request)  # type: ignore[arg-type]
    assert header.startswith("v1=")
    assert signature_matches(header, secret, **request)  # type: ignore[arg-type]
    assert not signature_matches(header, b"other", **request)  # type: ignore[arg-type]
    for field, other in [
        ("timestamp", 1_763_800_001),
        ("nonce", make_nonce()),
        ("method", "PUT"),
        ("path", "/v1/debug"),
        ("body", b"zstd!"),
    ]:
        assert not signature_matches(header, secret, **{**request, field: other}), field  # type: ignore[arg-type]
    assert not signature_matches("v1=" + "0" * 64, secret, **request)  # type: ignore[arg-type]
    assert not signature_matches("garbage \udcff", secret, **request)  # type: ignore[arg-type]
