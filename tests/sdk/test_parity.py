"""The same behaviour from `Client` (thread) and `AsyncClient` (asyncio), against a real sink on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from maidian.sdk import BatchLimits, InvalidEvent, QueueLimits, RetryPolicy, ServerRejected, Timeouts
from maidian.sdk.utm import utm_properties
from maidian.tracking_plan import Validator, build_plan
from maidian.tracking_plan.model import Plan
from maidian.tracking_plan.pii import hash_value
from tests.conftest import MINI_PLAN
from tests.sdk.conftest import ORDER, Shell
from tests.sdk.sink import Fault, Sink


async def test_events_arrive_once_with_ids_presets_and_identities(sink: Sink, shell_kind: str) -> None:
    c = Shell(shell_kind, sink.url, app_version="3.2.1")
    for i in range(1200):
        c.track("stock_order_submit", {**ORDER, "quantity": 100 * (i + 1)})
    assert await c.flush()
    source = c.source_id
    assert sink.ids() == {f"{source}-{i}" for i in range(1, 1201)}
    assert len(sink.raw) == 1200
    event = sink.stored[f"{source}-7"]
    assert event["type"] == "track"
    assert event["properties"]["quantity"] == 700
    assert event["properties"]["stock_name"] == "贵州茅台"
    assert event["properties"]["$lib"] == "maidian-python"
    assert event["properties"]["$app_version"] == "3.2.1"
    assert event["identities"] == {"anonymous_id": c.anonymous_id}
    batch = sink.batches[0]
    assert batch["lib"] == "maidian-python"
    assert batch["sent_at"] >= event["time"]
    stats = c.stats
    assert (stats.tracked, stats.sent, stats.acknowledged, stats.dropped) == (1200, 1200, 1200, {})
    assert await c.close()


async def test_identity_profile_and_super_property_calls(sink: Sink, shell_kind: str) -> None:
    c = Shell(shell_kind, sink.url, anonymous_id="device-42")
    c.register_super_properties({"utm_source": "wechat"})
    c.time_event("stock_order_submit")
    c.login("u_10086")
    c.bind("customer_no", "1234567890")
    c.track("stock_order_submit", ORDER)
    c.profile_set({"risk_level": "C3"})
    c.profile_set_once({"first_seen": "2026-01-01"})
    c.profile_increment({"login_count": 1})
    c.profile_append({"tags": ["vip"]})
    c.profile_unset(["tags"])
    c.unregister_super_property("utm_source")
    c.unbind("customer_no")
    c.logout()
    c.track("account_login", {"method": "sms"})
    c.profile_delete(identities={"login_id": "u_10086"})
    assert await c.flush()
    events = sorted(sink.stored.values(), key=lambda e: int(e["event_id"].rsplit("-", 1)[1]))
    kinds = [e.get("event") or e["type"] for e in events]
    assert kinds == [
        "bind",
        "bind",
        "stock_order_submit",
        "profile_set",
        "profile_set_once",
        "profile_increment",
        "profile_append",
        "profile_unset",
        "unbind",
        "account_login",
        "profile_delete",
    ]
    assert events[0]["identities"] == {"anonymous_id": "device-42", "login_id": "u_10086"}
    order = events[2]
    assert order["identities"] == {"anonymous_id": "device-42", "login_id": "u_10086", "customer_no": "1234567890"}
    assert order["properties"]["utm_source"] == "wechat"
    assert order["properties"]["$duration_ms"] >= 0
    assert events[3]["properties"] == {"risk_level": "C3"}
    assert events[7]["properties"] == {"tags": True}
    assert events[8]["identities"] == {"anonymous_id": "device-42", "customer_no": "1234567890"}
    login = events[9]
    assert login["identities"] == {"anonymous_id": "device-42"}
    assert "utm_source" not in login["properties"]
    assert events[10]["identities"] == {"login_id": "u_10086"}
    await c.close()


async def test_backend_service_signs_and_tracks_for_many_users(sink: Sink, shell_kind: str) -> None:
    c = Shell(shell_kind, sink.url, write_key=None, source="orders-service", secret="s3cret")
    for user in ("u_1", "u_2", "u_3"):
        c.track("stock_order_filled", {"stock_code": "600519", "filled_quantity": 100}, identities={"login_id": user})
    assert await c.flush()
    assert {e["identities"]["login_id"] for e in sink.stored.values()} == {"u_1", "u_2", "u_3"}
    assert all(e["properties"]["$server"] is True for e in sink.stored.values())
    nonces = {r.headers["X-Maidian-Nonce"] for r in sink.requests}
    assert len(nonces) == len(sink.requests)
    await c.close()


async def test_unknown_key_holds_events_instead_of_dropping_them(sink: Sink, shell_kind: str) -> None:
    errors: list[str] = []
    c = Shell(shell_kind, sink.url, write_key="wk_revoked", on_error=errors.append)
    c.track("stock_order_submit", ORDER)
    assert not await c.flush(1.0)
    assert c.stats.dropped == {}
    assert c.stats.in_flight == 1
    assert any("credentials" in e for e in errors)
    assert await c.close(0.2) is False


async def test_503_with_retry_after_is_honoured(sink: Sink, shell_kind: str) -> None:
    sink.script(Fault(503, retry_after="2"))
    c = Shell(shell_kind, sink.url, batch=BatchLimits(linger_s=0.05))
    c.track("stock_order_submit", ORDER)
    assert await c.flush(10)
    first, second = sink.requests[0], sink.requests[1]
    assert first.status == 503
    assert second.at - first.at >= 2.0 - 0.1, "a request came earlier than Retry-After advised"
    assert second.event_ids == first.event_ids, "the retry must resend the same event ids"
    assert c.stats.retries == 1
    await c.close()


async def test_lost_answers_are_retried_and_deduplicated(sink: Sink, shell_kind: str) -> None:
    sink.script(Fault(drop=True, store=True), Fault(drop=True, store=True))
    c = Shell(shell_kind, sink.url, retry=RetryPolicy(base_s=0.05, cap_s=0.1))
    for _ in range(50):
        c.track("stock_order_submit", ORDER)
    assert await c.flush(10)
    assert len(sink.stored) == 50
    assert len(sink.raw) > 50  # the same ids arrived again, and the sink deduplicated them
    assert c.stats.duplicates > 0
    await c.close()


async def test_burst_of_20000_against_a_slow_collector_loses_nothing(sink: Sink, shell_kind: str) -> None:
    sink.delay_s = 0.05
    c = Shell(shell_kind, sink.url)
    durations = []
    clock = time.perf_counter
    for i in range(20_000):
        start = clock()
        c.track("stock_order_submit", {**ORDER, "quantity": i})
        durations.append(clock() - start)
    assert await c.flush(60)
    assert len(sink.stored) == 20_000
    assert c.stats.dropped == {}
    durations.sort()
    p99_us = durations[int(len(durations) * 0.99)] * 1e6
    print(f"track() p99 {p99_us:.1f} us, max {durations[-1] * 1e3:.2f} ms")
    # No call waited for a request to be answered: a client that did would take the 50 ms delay on
    # at least one call per 500-event batch (40 of them). A loaded machine may pause any thread for
    # that long now and then, so a few such calls are not a finding; dozens would be.
    waited = sum(1 for d in durations if d >= sink.delay_s)
    assert waited <= 3, f"{waited} track() calls took at least {sink.delay_s * 1e3:.0f} ms"
    await c.close()


async def test_overflow_keeps_the_newest_counts_exactly_and_tells_the_collector(sink: Sink, shell_kind: str) -> None:
    drops: list[int] = []
    c = Shell(
        shell_kind,
        sink.url,
        queue=QueueLimits(max_events=10_000),
        batch=BatchLimits(max_events=20_000, linger_s=3600),  # nothing leaves until flush()
        on_drop=lambda reason, n: drops.append(n),
    )
    for i in range(15_000):
        c.track("stock_order_submit", {**ORDER, "quantity": i})
    assert c.stats.dropped == {"overflow": 5_000}
    assert sum(drops) == 5_000
    assert await c.flush(30)
    source = c.source_id
    assert sink.ids() == {f"{source}-{i}" for i in range(5_001, 15_001)}
    assert sink.batches[0]["dropped"] == {"source": source, "counts": {"overflow": 5_000}}
    await c.close()


async def test_pii_tags_are_applied_before_events_leave(sink: Sink, shell_kind: str, mini_plan: Plan) -> None:
    c = Shell(shell_kind, sink.url, plan=mini_plan, pii_key="k1")
    c.track("stock_order_submit", {**_valid_order(), "mobile": "13812345678", "id_card": "110101199003077777"})
    c.bind("mobile_hash", "13812345678")
    assert await c.flush()
    body = b"".join(sink.bodies)
    for canary in (b"13812345678", b"110101199003077777"):
        assert canary not in body
    order = next(e for e in sink.stored.values() if e.get("event") == "stock_order_submit")
    assert order["properties"]["mobile"] == "138****5678"
    assert "id_card" not in order["properties"]
    bind = next(e for e in sink.stored.values() if e["type"] == "bind")
    assert bind["identities"]["mobile_hash"] == hash_value("13812345678", b"k1")
    assert Validator(mini_plan).validate(order) == []
    assert Validator(mini_plan).validate(bind) == []
    await c.close()


async def test_bad_calls_never_raise_in_production_and_are_counted(sink: Sink, shell_kind: str) -> None:
    errors: list[str] = []
    c = Shell(shell_kind, sink.url, on_error=errors.append)
    c.track("stock_order_submit", ORDER, time=1.5)  # type: ignore[arg-type]
    c.track("stock_order_submit", ["side", "buy"])  # type: ignore[arg-type]
    c.track(None)  # type: ignore[arg-type]
    c.track("stock_order_submit", {"at": object()})
    c.profile_set("risk_level")  # type: ignore[arg-type]
    c.login("undefined")
    c.track("stock_order_submit", ORDER)
    assert await c.flush()
    assert c.stats.dropped == {"invalid": 5, "unencodable": 1}
    assert len(errors) == 6
    assert len(sink.stored) == 1
    await c.close()


async def test_a_bug_in_the_sender_is_reported_and_sending_goes_on(
    sink: Sink, shell_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    errors: list[str] = []
    c = Shell(shell_kind, sink.url, on_error=errors.append)
    core = c.client._core
    real = core.next_batch
    calls = [0]

    def flaky(now: float, wall_ms: int) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("boom")
        return real(now, wall_ms)

    monkeypatch.setattr(core, "next_batch", flaky)
    c.track("stock_order_submit", ORDER)
    assert await c.flush(10)
    assert len(sink.stored) == 1
    assert any("boom" in e for e in errors)
    await c.close()


async def test_strict_mode_raises_at_the_call_site(sink: Sink, shell_kind: str, mini_plan: Plan) -> None:
    c = Shell(shell_kind, sink.url, plan=mini_plan, mode="strict", pii_key="k1")
    with pytest.raises(InvalidEvent) as info:
        c.track("stock_order_submit", {**_valid_order(), "side": "hold", "quantity": 150})
    rules = {v.rule for v in info.value.violations}
    assert rules == {"enum", "range"}
    assert "side" in str(info.value)
    with pytest.raises(InvalidEvent):
        c.profile_set({"risk_level": "C9"})
    with pytest.raises(InvalidEvent):
        c.bind("customer_no", "123")  # the plan wants ten digits
    assert "customer_no" not in c.identities
    c.track("stock_order_submit", _valid_order())
    assert await c.flush()
    assert len(sink.stored) == 1
    assert c.stats.violations == 3
    await c.close()


async def test_warn_mode_counts_and_calls_back_without_raising(sink: Sink, shell_kind: str, mini_plan: Plan) -> None:
    sink.validator = Validator(mini_plan)
    seen: list[tuple[str, Any]] = []
    quarantined: list[str] = []
    c = Shell(
        shell_kind,
        sink.url,
        plan=mini_plan,
        pii_key="k1",
        on_violation=lambda name, vs: seen.append((name, vs)),
        on_quarantine=lambda event_id, name, reasons: quarantined.append(event_id),
    )
    c.track("stock_order_submit", {**_valid_order(), "side": "hold"})
    c.track("stock_order_bogus", {})
    c.track("stock_order_submit", _valid_order())
    assert await c.flush()
    assert {name for name, _ in seen} == {"stock_order_submit", "stock_order_bogus"}
    assert c.stats.violations == 2  # the unknown name is said at the call, counted once by the full check
    assert c.stats.quarantined == 2
    assert len(quarantined) == 2
    assert set(quarantined) == set(sink.quarantined)
    assert c.stats.acknowledged == 1
    await c.close()


async def test_flush_and_close_keep_their_timeouts_against_a_blackholed_collector(sink: Sink, shell_kind: str) -> None:
    sink.blackhole = True
    c = Shell(shell_kind, sink.url, timeouts=Timeouts(request_s=30))
    c.track("stock_order_submit", ORDER)
    start = time.monotonic()
    assert await c.flush(0.5) is False
    assert await c.close(0.5) is False
    assert time.monotonic() - start < 0.5 + 0.5 + 0.5
    assert c.stats.dropped == {"unsent": 1}  # no spool keeps it: the event is counted, not forgotten
    c.track("stock_order_submit", ORDER)  # after close: counted, never raised
    assert c.stats.dropped == {"unsent": 1, "closed": 1}


async def test_a_silent_collector_is_timed_out_and_the_batch_retried(sink: Sink, shell_kind: str) -> None:
    sink.blackhole = True
    c = Shell(shell_kind, sink.url, timeouts=Timeouts(request_s=0.5), retry=RetryPolicy(base_s=0.05, cap_s=0.1))
    c.track("stock_order_submit", ORDER)
    assert await asyncio.to_thread(sink.arrived.wait, 10)
    sink.blackhole = False  # the next attempt is answered
    assert await c.flush(10)
    assert len(sink.stored) == 1
    assert c.stats.retries >= 1
    await c.close()


async def test_debug_mode_shows_each_verdict_at_once(
    sink: Sink, shell_kind: str, mini_plan: Plan, capsys: pytest.CaptureFixture[str]
) -> None:
    sink.validator = Validator(mini_plan)
    c = Shell(shell_kind, sink.url, plan=mini_plan, pii_key="k1", debug=True)
    c.track("stock_order_submit", {**_valid_order(), "side": "hold"})
    err = capsys.readouterr().err
    assert "stock_order_submit" in err
    assert "quarantined" in err
    assert "/properties/side" in err
    assert sink.requests[-1].path == "/v1/debug"
    c.track("stock_order_submit", _valid_order())
    assert "accepted" in capsys.readouterr().err
    assert len(sink.requests) == 2
    assert sink.stored == {}, "the validate-only endpoint stores nothing"
    await c.close()


async def test_debug_mode_in_strict_raises_the_collectors_verdict(sink: Sink, shell_kind: str, mini_plan: Plan) -> None:
    # The collector runs a newer plan than the app: "buy" was withdrawn. Valid locally, refused remotely.
    doc = json.loads(MINI_PLAN.read_text())
    doc["events"]["stock_order_submit"]["properties"]["properties"]["side"]["enum"] = ["sell"]
    sink.validator = Validator(build_plan(doc))
    c = Shell(shell_kind, sink.url, plan=mini_plan, pii_key="k1", debug=True, mode="strict")
    with pytest.raises(ServerRejected) as info:
        c.track("stock_order_submit", _valid_order())
    assert info.value.reasons[0]["path"] == "/properties/side"
    c.track("stock_order_submit", {**_valid_order(), "side": "sell"})
    await c.close()


async def test_deep_link_utm_parameters_become_properties(sink: Sink, shell_kind: str) -> None:
    c = Shell(shell_kind, sink.url)
    props = utm_properties("broker://quote/600519?utm_source=wechat&utm_campaign=spring&utm_x=&ref=1")
    c.track("stock_order_submit", {**ORDER, **props})
    assert await c.flush()
    (event,) = sink.stored.values()
    assert event["properties"]["utm_source"] == "wechat"
    assert event["properties"]["utm_campaign"] == "spring"
    assert "ref" not in event["properties"]
    await c.close()


async def test_async_client_accepts_track_from_other_threads(sink: Sink) -> None:
    c = Shell("asyncio", sink.url, batch=BatchLimits(max_events=10))

    def worker() -> None:
        for _ in range(100):
            c.track("stock_order_submit", ORDER)

    c.track("stock_order_submit", ORDER)
    await asyncio.gather(*(asyncio.to_thread(worker) for _ in range(3)))
    assert await c.flush()
    assert len(sink.stored) == 301
    await c.close()


def _valid_order() -> dict[str, Any]:
    return {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100}
