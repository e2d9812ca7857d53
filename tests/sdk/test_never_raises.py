"""Never raise into the host: every public method of both clients, called with arbitrary values.

Outside strict mode no call may raise, whatever it is given (wrong types,
None, huge numbers, deep nesting, values msgpack cannot carry), and:

- a recording call (`track`, `profile_*`) either records its event or counts
  exactly one refusal in `stats.dropped`, never as `internal` (an SDK bug);
- no call leaves the client poisoned: a valid order tracked after it is
  accepted, and nothing is dropped for it;
- every refusal is counted and reported through `on_error` once.

Strict mode raises `InvalidEvent` (a `CallerError`) and nothing else, and
refuses an event the plan marks `trigger: server` when the client is an app.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maidian.sdk import AsyncClient, Client, InvalidEvent
from maidian.tracking_plan.model import Plan
from tests.sdk.conftest import ORDER
from tests.sdk.sink import Sink


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """One sink for the module (hypothesis runs many examples per test)."""
    with Sink() as sink:
        yield sink.url


VALID = {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100}


class Weird:
    """An object no encoder knows."""


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.just(Weird()),
    st.just(dt.datetime(2026, 1, 1)),
    st.just(decimal.Decimal("1.5")),
    st.just({1, 2}),
    st.just(object),
    st.just("x" * 600_000),  # larger than a whole batch may be
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(max_size=5), st.integers(), st.none()), inner, max_size=3),
    ),
    max_leaves=8,
)


def _nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


deep = st.integers(min_value=100, max_value=3000).map(_nest)


arbitrary = st.one_of(values, deep)

# name -> (number of positional arguments, keyword arguments that take arbitrary values, records an event)
METHODS: dict[str, tuple[int, tuple[str, ...], bool]] = {
    "track": (2, ("time", "identities"), True),
    "profile_set": (1, ("identities",), True),
    "profile_set_once": (1, ("identities",), True),
    "profile_increment": (1, ("identities",), True),
    "profile_append": (1, ("identities",), True),
    "profile_unset": (1, ("identities",), True),
    "profile_delete": (0, ("identities",), True),
    "login": (1, (), False),
    "logout": (0, (), False),
    "bind": (2, (), False),
    "unbind": (2, (), False),
    "register_super_properties": (1, (), False),
    "unregister_super_property": (1, (), False),
    "time_event": (1, (), False),
}


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, list[Any], dict[str, Any]]:
    name = draw(st.sampled_from(sorted(METHODS)))
    positional, keywords, _records = METHODS[name]
    args = [draw(arbitrary) for _ in range(positional)]
    if name == "track" and draw(st.booleans()):
        args[0] = draw(st.sampled_from(["stock_order_submit", "stock_order_filled", "", "no_such_event"]))
    kwargs = {k: draw(arbitrary) for k in keywords if draw(st.booleans())}
    return name, args, kwargs


class Counting:
    def __init__(self) -> None:
        self.errors = 0

    def on_error(self, message: str) -> None:
        self.errors += 1


def _moved(client: Any) -> int:
    stats = client.stats
    return int(stats.tracked + sum(stats.dropped.values()))


def _exercise(make: Callable[[Counting], Any], sequence: list[tuple[str, list[Any], dict[str, Any]]]) -> None:
    seen = Counting()
    client = make(seen)
    try:
        for name, args, kwargs in sequence:
            before = _moved(client)
            dropped_before = sum(client.stats.dropped.values())
            errors_before = seen.errors
            getattr(client, name)(*args, **kwargs)  # must not raise
            stats = client.stats
            assert "internal" not in stats.dropped, f"{name} hit an SDK bug: {stats.dropped}"
            refused = sum(stats.dropped.values()) - dropped_before
            if METHODS[name][2]:
                assert _moved(client) - before == 1, f"{name}: neither recorded nor counted as refused"
            assert seen.errors - errors_before == refused, f"{name}: a refusal was not reported once"
            canary_before = (client.stats.tracked, dict(client.stats.dropped))
            client.logout()
            client.track("stock_order_submit", VALID)
            assert client.stats.tracked == canary_before[0] + 1, f"{name} left the client unable to track"
            assert client.stats.dropped == canary_before[1]
    finally:
        _close(client)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sequence=st.lists(calls(), min_size=1, max_size=6), mode=st.sampled_from(["warn", "off"]))
def test_no_public_method_raises_outside_strict_mode(url: str, mini_plan: Plan, sequence: Any, mode: str) -> None:
    for cls in (Client, AsyncClient):
        _exercise(
            lambda seen, cls=cls: cls(
                url, write_key="k", plan=mini_plan, mode=mode, pii_key=b"k", on_error=seen.on_error
            ),
            sequence,
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sequence=st.lists(calls(), min_size=1, max_size=4))
def test_strict_mode_raises_only_invalid_event(url: str, mini_plan: Plan, sequence: Any) -> None:
    for cls in (Client, AsyncClient):
        client = cls(url, write_key="k", plan=mini_plan, mode="strict", pii_key=b"k")
        try:
            for name, args, kwargs in sequence:
                with contextlib.suppress(InvalidEvent):  # the one error strict mode raises; others fail the test
                    getattr(client, name)(*args, **kwargs)
                assert "internal" not in client.stats.dropped
        finally:
            _close(client)


def _close(client: Any) -> None:
    if isinstance(client, AsyncClient):
        client._exit_within(0.0)
    else:
        client.close(0.0)


@given(timeout=arbitrary)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_flush_and_close_take_any_timeout(url: str, timeout: Any) -> None:
    seen = Counting()
    client = Client(url, write_key="k", on_error=seen.on_error)
    client.track("stock_order_submit", ORDER)
    client.flush(timeout)
    client.close(timeout)
    assert "internal" not in client.stats.dropped
    usable = isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and 0 <= timeout < math.inf
    assert client.stats.dropped.get("invalid", 0) == (0 if usable else 2)

    async def run() -> None:
        aclient = AsyncClient(url, write_key="k")
        aclient.track("stock_order_submit", ORDER)
        await aclient.flush(timeout)
        await aclient.aclose(timeout)
        assert "internal" not in aclient.stats.dropped

    asyncio.run(run())


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_strict_mode_refuses_a_server_only_event_from_an_app(url: str, mini_plan: Plan, cls: type[Any]) -> None:
    app = cls(url, write_key="k", plan=mini_plan, mode="strict", pii_key=b"k")
    filled = {"stock_code": "600519", "filled_quantity": 100}
    with pytest.raises(InvalidEvent) as raised:
        app.track("stock_order_filled", filled)
    assert [getattr(v, "rule", None) for v in raised.value.violations] == ["trigger"]
    assert app.stats.tracked == 0
    server = cls(url, source="orders-service", secret=b"s", plan=mini_plan, mode="strict", pii_key=b"k")
    server.track("stock_order_filled", filled, identities={"login_id": "u1"})
    assert server.stats.tracked == 1
    _close(app)
    _close(server)


def test_a_deeply_nested_event_name_is_refused_by_type_not_repr(url: str, mini_plan: Plan) -> None:
    """Found by the property above in CI: the refusal's message took the name's repr, which overflowed the stack."""
    name = _nest(1500)
    strict = Client(url, write_key="k", plan=mini_plan, mode="strict", pii_key=b"k")
    try:
        with pytest.raises(InvalidEvent, match="dict"):
            strict.track(name, ORDER)
        assert "internal" not in strict.stats.dropped
    finally:
        strict.close(0.0)
    warned: list[str] = []
    warn = Client(url, write_key="k", plan=mini_plan, mode="warn", pii_key=b"k", on_error=warned.append)
    try:
        warn.track(name, ORDER)
        assert warn.stats.dropped == {"invalid": 1}
    finally:
        warn.close(0.0)
