"""The sans-I/O core with fakes: no threads, no sockets, no sleeps; time is an argument."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from maidian.sdk.config import BatchLimits, QueueLimits, RetryPolicy
from maidian.sdk.core import Callbacks, Response, compile_plan
from maidian.sdk.errors import InvalidEvent
from maidian.sdk.retry import backoff_s, classify, parse_retry_after
from maidian.tracking_plan import envelope, signing
from maidian.tracking_plan.model import Plan
from maidian.tracking_plan.pii import hash_value
from tests.sdk.conftest import ORDER
from tests.sdk.fakes import SOURCE, answer, decode, ids, make_core, send_now

T0 = 1_763_800_000_000


def test_a_batch_closes_at_max_events_and_track_says_when_to_wake_the_sender() -> None:
    core = make_core(batch=BatchLimits(max_events=3, linger_s=5))
    assert core.track("stock_order_submit", ORDER, T0) is True  # the first after a quiet spell: start the clock
    assert core.next_batch(now=100.0, wall_ms=T0) is None
    assert core.next_deadline(100.0) == 105.0
    assert core.track("stock_order_submit", ORDER, T0) is False
    assert core.track("stock_order_submit", ORDER, T0) is True  # a full batch waits
    assert core.next_deadline(100.1) == 100.1
    batch = core.next_batch(now=100.1, wall_ms=T0)
    assert batch is not None
    assert len(batch) == 3
    assert core.next_batch(now=100.2, wall_ms=T0) is None


def test_a_batch_closes_when_its_oldest_event_has_lingered_and_at_max_bytes() -> None:
    core = make_core(batch=BatchLimits(max_events=100, max_bytes=1000, linger_s=2, max_in_flight=5))
    core.track("stock_order_submit", ORDER, T0)
    assert core.next_batch(now=10.0, wall_ms=T0) is None
    for _ in range(10):
        core.track("stock_order_submit", ORDER, T0)
    assert core.next_batch(now=11.0, wall_ms=T0) is None
    assert core.next_deadline(11.0) == 12.0
    batch = core.next_batch(now=12.0, wall_ms=T0)
    assert batch is not None
    assert 1 < len(batch) < 11  # cut by bytes: the packed events total at most max_bytes
    assert sum(len(e) for e in batch.events) <= 1000
    # The rest lingered as long: due at once, in batches cut by bytes too.
    taken = len(batch)
    while (rest := core.next_batch(now=12.0, wall_ms=T0)) is not None:
        taken += len(rest)
    assert taken == 11


def test_flush_sends_what_waits_without_lingering() -> None:
    core = make_core(batch=BatchLimits(max_events=100, linger_s=60))
    core.track("stock_order_submit", ORDER, T0)
    assert core.next_batch(now=0.0, wall_ms=T0) is None
    core.request_flush()
    batch = core.next_batch(now=0.0, wall_ms=T0)
    assert batch is not None
    core.on_result(batch, answer(batch), 0.0, 0)
    assert core.idle()


def test_the_body_is_a_protocol_batch_of_events_packed_once() -> None:
    core = make_core()
    core.track("stock_order_submit", ORDER, T0, T0 - 5, {"login_id": "u_1"})
    core.record("profile_set", {"risk_level": "C3"}, T0)
    batch = send_now(core, wall_ms=T0 + 10)
    assert batch is not None
    body = decode(batch)
    assert list(body) == [f for f in envelope.BATCH_FIELDS if f not in envelope.OPTIONAL_BATCH_FIELDS]
    assert body["sent_at"] == T0 + 10
    track, profile = body["events"]
    assert list(track) == list(envelope.EVENT_FIELDS)
    assert track == {
        "type": "track",
        "event": "stock_order_submit",
        "event_id": f"{SOURCE}-1",
        "time": T0 - 5,
        "identities": {"login_id": "u_1"},
        "properties": {**ORDER, **{k: v for k, v in track["properties"].items() if k.startswith("$")}},
    }
    assert track["properties"]["$lib"] == "maidian-python"
    assert profile == {
        "type": "profile_set",
        "event_id": f"{SOURCE}-2",
        "time": T0,
        "identities": {"anonymous_id": "device-1"},
        "properties": {"risk_level": "C3"},
    }
    assert envelope.parse_event_id(track["event_id"]) == (SOURCE, 1)


@given(
    st.dictionaries(
        st.from_regex(r"\A[a-z][a-z0-9_]{0,20}\Z"),
        st.integers(-(2**63), 2**64 - 1) | st.text() | st.booleans(),
        max_size=40,
    )
)
def test_any_properties_round_trip_with_the_presets_appended(props: dict[str, Any]) -> None:
    core = make_core()
    core.track("stock_order_submit", props, T0)
    (packed,) = core._buffer.take(1, 1 << 20)[0]
    event = msgspec.msgpack.decode(core.whole(packed))
    assert {k: v for k, v in event["properties"].items() if not k.startswith("$")} == props
    assert event["properties"]["$lib"] == "maidian-python"


def test_a_caller_may_override_a_preset() -> None:
    core = make_core()
    core.track("stock_order_submit", {"$app_version": "9.9.9", "x": 1}, T0)
    batch = send_now(core)
    assert batch is not None
    props = decode(batch)["events"][0]["properties"]
    assert props["$app_version"] == "9.9.9"
    assert props["$lib"] == "maidian-python"


def test_a_retry_resends_the_same_ids_after_the_backoff() -> None:
    core = make_core(retry=RetryPolicy(base_s=1.0, cap_s=1.0))
    for _ in range(3):
        core.track("stock_order_submit", ORDER, T0)
    first = send_now(core)
    assert first is not None
    sent_ids = ids(first)
    core.on_result(first, Response(None, error="ConnectionResetError"), now=1.0, wall_s=T0 / 1000)
    wait_until = core.next_deadline(1.0)
    assert 1.0 <= wait_until <= 2.0
    assert core.next_batch(wait_until - 0.001, T0) is None
    again = core.next_batch(wait_until, T0 + 5000)
    assert again is not None
    assert ids(again) == sent_ids
    assert decode(again)["sent_at"] == T0 + 5000
    core.on_result(again, answer(again), now=wait_until + 0.1, wall_s=T0 / 1000)
    stats = core.stats()
    assert (stats.acknowledged, stats.retries, stats.sent, stats.in_flight) == (3, 1, 3, 0)
    assert core.idle()


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (None, "retry"),
        (200, "done"),
        (400, "drop"),
        (401, "hold"),
        (403, "hold"),
        (408, "retry"),
        (413, "split"),
        (415, "drop"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (504, "retry"),
    ],
)
def test_classify_follows_the_protocols_error_table(status: int | None, action: str) -> None:
    assert classify(status, "reset").action == action


def test_retry_after_reads_seconds_and_dates_caps_them_and_ignores_garbage() -> None:
    now = 1_763_800_000.0
    assert parse_retry_after("3", now, 600) == 3
    assert parse_retry_after("99999", now, 600) == 600
    assert parse_retry_after("abc", now, 600) is None
    assert parse_retry_after("", now, 600) is None
    assert parse_retry_after(None, now, 600) is None
    assert parse_retry_after("-5", now, 600) is None
    date = format_datetime(datetime.fromtimestamp(now + 30, tz=UTC), usegmt=True)
    assert parse_retry_after(date, now, 600) == pytest.approx(30, abs=1)
    past = format_datetime(datetime.fromtimestamp(now - 30, tz=UTC), usegmt=True)
    assert parse_retry_after(past, now, 600) == 0


@pytest.mark.parametrize(("header", "least", "most"), [("3", 3, 3.5), ("99999", 600, 600), ("abc", 0, 0.5)])
def test_retry_after_is_a_minimum_over_the_backoff(header: str, least: float, most: float) -> None:
    core = make_core(retry=RetryPolicy(base_s=0.5, cap_s=30))
    core.track("stock_order_submit", ORDER, T0)
    batch = send_now(core)
    assert batch is not None
    core.on_result(batch, Response(429, retry_after=header), now=10.0, wall_s=T0 / 1000)
    assert least <= core.next_deadline(10.0) - 10.0 <= most


@given(st.integers(1, 60), st.integers(0, 2**32))
def test_backoff_is_full_jitter_under_the_cap(failures: int, seed: int) -> None:
    delay = backoff_s(failures, 0.5, 30.0, random.Random(seed))
    assert 0 <= delay <= min(30.0, 0.5 * 2 ** (failures - 1))


def test_413_splits_the_batch_and_a_lone_event_too_large_is_dropped_counted() -> None:
    drops: list[tuple[str, int]] = []
    core = make_core(callbacks=Callbacks(on_drop=lambda r, n: drops.append((r, n))))
    for _ in range(4):
        core.track("stock_order_submit", ORDER, T0)
    batch = send_now(core)
    assert batch is not None
    core.on_result(batch, Response(413), 0.0, T0 / 1000)
    halves = [send_now(core), send_now(core)]
    assert [len(h) for h in halves if h is not None] == [2, 2]
    assert ids(halves[0]) + ids(halves[1]) == ids(batch)  # type: ignore[arg-type]
    core.on_result(halves[0], answer(halves[0]), 0.0, 0)  # type: ignore[arg-type]
    core.on_result(halves[1], Response(413), 0.0, 0)  # type: ignore[arg-type]
    for _ in range(2):
        single = send_now(core)
        assert single is not None
        core.on_result(single, Response(413), 0.0, 0)
    assert core.stats().dropped == {"too_large": 2}
    assert drops == [("too_large", 1), ("too_large", 1)]
    assert core.idle()


def test_400_drops_the_whole_batch_counted_and_reported() -> None:
    errors: list[str] = []
    core = make_core(callbacks=Callbacks(on_error=errors.append))
    for _ in range(5):
        core.track("stock_order_submit", ORDER, T0)
    batch = send_now(core)
    assert batch is not None
    core.on_result(batch, Response(400, b'{"error": {"code": "bad_batch"}}'), 0.0, 0)
    assert core.stats().dropped == {"rejected_batch": 5}
    assert "400" in errors[0]
    assert core.idle()


def test_401_keeps_the_events_and_retries_slowly() -> None:
    core = make_core(retry=RetryPolicy(auth_retry_s=60))
    core.track("stock_order_submit", ORDER, T0)
    batch = send_now(core)
    assert batch is not None
    core.on_result(batch, Response(401), 0.0, 0)
    assert core.next_batch(59.9, T0) is None
    again = core.next_batch(60.0, T0)
    assert again is not None
    assert ids(again) == ids(batch)
    assert core.stats().dropped == {}


def test_quarantined_events_are_reported_and_never_resent() -> None:
    seen: list[tuple[str, str, Any]] = []
    core = make_core(callbacks=Callbacks(on_quarantine=lambda *a: seen.append(a)))
    core.track("stock_order_submit", ORDER, T0)
    core.track("stock_order_submit", ORDER, T0)
    core.track("stock_order_submit", ORDER, T0)
    batch = send_now(core)
    assert batch is not None
    reasons = [{"rule": "enum", "path": "/properties/side", "message": "expected one of"}]
    core.on_result(batch, answer(batch, "accepted", "quarantined", "duplicate", reasons=reasons), 0.0, 0)
    assert seen == [(f"{SOURCE}-2", "stock_order_submit", reasons)]
    stats = core.stats()
    assert (stats.acknowledged, stats.duplicates, stats.quarantined) == (2, 1, 1)
    assert core.idle()
    assert core.next_batch(100.0, T0) is None


@pytest.mark.parametrize("body", [b"not json", b'{"results": []}', b"[1, 2]", b'{"results": "x"}'])
def test_a_200_without_one_result_per_event_is_retried(body: bytes) -> None:
    core = make_core()
    core.track("stock_order_submit", ORDER, T0)
    batch = send_now(core)
    assert batch is not None
    core.on_result(batch, Response(200, body), 0.0, 0)
    assert not core.idle()
    assert core.stats().in_flight == 1


@pytest.mark.parametrize(("overflow", "kept"), [("drop_oldest", [4, 5, 6]), ("drop_newest", [1, 2, 3])])
def test_overflow_policy_is_exact_and_reported(overflow: str, kept: list[int]) -> None:
    drops: list[tuple[str, int]] = []
    core = make_core(
        queue=QueueLimits(max_events=3, overflow=overflow),  # type: ignore[arg-type]
        batch=BatchLimits(max_events=100),
        callbacks=Callbacks(on_drop=lambda r, n: drops.append((r, n))),
    )
    for i in range(1, 7):
        core.track("stock_order_submit", {"i": i}, T0)
    assert core.stats().dropped == {"overflow": 3}
    assert drops == [("overflow", 1)] * 3
    batch = send_now(core)
    assert batch is not None
    assert [e["properties"]["i"] for e in decode(batch)["events"]] == kept
    assert decode(batch)["dropped"] == {"source": SOURCE, "counts": {"overflow": 3}}
    assert core.stats().tracked == (6 if overflow == "drop_oldest" else 3)


def test_unencodable_values_are_counted_in_production_and_raise_in_strict(mini_plan: Plan) -> None:
    errors: list[str] = []
    core = make_core(callbacks=Callbacks(on_error=errors.append))
    core.track("stock_order_submit", {"when": object()}, T0)
    core.track(None, {}, T0)  # type: ignore[arg-type]
    core.track("stock_order_submit", ["not", "a", "mapping"], T0)  # type: ignore[arg-type]
    core.track("stock_order_submit", {}, T0, -1)
    assert core.stats().dropped == {"unencodable": 1, "invalid": 3}
    assert len(errors) == 4
    core.track("stock_order_submit", {"ok": True}, T0)
    batch = send_now(core)
    assert batch is not None
    assert len(decode(batch)["events"]) == 1  # the refused ones never reached the buffer
    strict = make_core(checks=compile_plan(mini_plan, "strict"), mode="strict")
    with pytest.raises(InvalidEvent):
        strict.track("stock_order_submit", {"stock_code": object()}, T0)


def test_server_sources_sign_every_attempt_with_a_fresh_nonce() -> None:
    core = make_core(write_key=None, source="orders-service", secret="s3cret")
    core.track("stock_order_filled", {"stock_code": "600519"}, T0)
    first = send_now(core)
    assert first is not None
    attempts = [(dict(first.headers), first.body)]
    core.on_result(first, Response(503), 0.0, 0)
    second = core.next_batch(1000.0, T0 + 1000)
    assert second is not None
    attempts.append((dict(second.headers), second.body))
    for h, body in attempts:
        assert h[envelope.HEADER_SOURCE] == "orders-service"
        assert envelope.HEADER_WRITE_KEY not in h
        assert signing.signature_matches(
            h[envelope.HEADER_SIGNATURE],
            b"s3cret",
            timestamp=int(h[envelope.HEADER_TIMESTAMP]),
            nonce=h[envelope.HEADER_NONCE],
            method="POST",
            path=envelope.BATCH_PATH,
            body=body,
        )
    assert attempts[0][0][envelope.HEADER_NONCE] != attempts[1][0][envelope.HEADER_NONCE]
    assert decode(first)["events"][0]["properties"]["$server"] is True


def test_in_flight_requests_are_bounded() -> None:
    core = make_core(batch=BatchLimits(max_events=1, max_in_flight=2, linger_s=0))
    for _ in range(5):
        core.track("stock_order_submit", ORDER, T0)
    taken = [send_now(core) for _ in range(3)]
    assert taken[2] is None
    assert taken[0] is not None
    core.on_result(taken[0], answer(taken[0]), 0.0, 0)
    assert send_now(core) is not None


def test_while_the_collector_fails_one_request_probes_and_nothing_new_is_taken() -> None:
    core = make_core(batch=BatchLimits(max_events=1, max_in_flight=3, linger_s=0), retry=RetryPolicy(base_s=0.0))
    for _ in range(6):
        core.track("stock_order_submit", ORDER, T0)

    def next_ids() -> list[str] | None:
        batch = core.next_batch(1.0, T0)
        return None if batch is None else ids(batch)

    first, second = send_now(core), send_now(core)
    assert first is not None
    assert second is not None
    core.on_result(first, Response(None, error="ConnectionRefusedError"), now=1.0, wall_s=0)
    # The other request still finishes; no new request starts while the collector fails.
    assert next_ids() is None
    core.on_result(second, Response(503), now=1.0, wall_s=0)
    probe = core.next_batch(1.0, T0)
    assert probe is not None
    assert ids(probe) == ids(first)
    assert next_ids() is None  # one probe at a time: the other retry and fresh events wait
    assert core.stats().in_flight == 2
    core.on_result(probe, Response(None, error="ConnectionRefusedError"), now=1.0, wall_s=0)
    probe = core.next_batch(1.0, T0)
    assert probe is not None
    assert ids(probe) == ids(second)
    core.on_result(probe, answer(probe), now=1.0, wall_s=0)
    # The first success restores every slot: the held retry, then fresh events.
    taken = [next_ids() for _ in range(4)]
    assert taken[0] == ids(first)
    assert taken[1] is not None
    assert taken[2] is not None
    assert taken[3] is None


def test_pii_tags_apply_to_properties_profiles_and_identities(mini_plan: Plan) -> None:
    core = make_core(checks=compile_plan(mini_plan, "off"), pii_key=b"k", mode="off")
    core.track("stock_order_submit", {"mobile": "13812345678", "id_card": "x", "stock_code": "600519"}, T0)
    core.record("profile_set", {"real_name": "张三丰"}, T0)
    core.set_identity("mobile_hash", "13812345678")
    core.track("account_login", {}, T0)
    batch = send_now(core)
    assert batch is not None
    order, profile, login = decode(batch)["events"]
    assert order["properties"]["mobile"] == "138****5678"
    assert "id_card" not in order["properties"]
    assert profile["properties"] == {"real_name": "张**"}
    assert login["identities"]["mobile_hash"] == hash_value("13812345678", b"k")
    assert core.identities["mobile_hash"] == "13812345678"


def test_a_timed_event_carries_its_duration_once() -> None:
    core = make_core()
    core.time_event("stock_order_submit", T0)
    core.track("stock_order_submit", {}, T0 + 1500)
    core.track("stock_order_submit", {}, T0 + 3000)
    batch = send_now(core)
    assert batch is not None
    first, second = decode(batch)["events"]
    assert first["properties"]["$duration_ms"] == 1500
    assert "$duration_ms" not in second["properties"]


def test_a_forked_core_keeps_identities_and_starts_a_new_source() -> None:
    core = make_core()
    core.set_identity("login_id", "u_1")
    core.register_super_properties({"utm_source": "x"})
    core.track("stock_order_submit", {}, T0)
    child = core.forked(type(core._buffer)(10, "drop_oldest"), "f" * 32, None)  # type: ignore[call-arg]
    assert child.stats().queued == 0
    child.track("stock_order_submit", {}, T0)
    batch = send_now(child)
    assert batch is not None
    (event,) = decode(batch)["events"]
    assert event["event_id"] == "f" * 32 + "-1"
    assert event["identities"]["login_id"] == "u_1"
    assert event["properties"]["utm_source"] == "x"


def test_every_reason_the_sdk_reports_is_one_the_collector_knows() -> None:
    """A reason missing from the protocol's list would be counted as `other` at the collector."""
    from maidian.sdk import core
    from maidian.tracking_plan.envelope import DROP_REASONS

    names = ("OVERFLOW", "EXPIRED", "UNENCODABLE", "INVALID", "TOO_LARGE", "REJECTED_BATCH", "UNSENT", "OPTED_OUT")
    assert {getattr(core, n) for n in names} <= DROP_REASONS
