"""Consent: after `opt_out()` nothing is tracked, what waited is purged, and the choice survives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from maidian.sdk import AsyncClient, Client, Timeouts
from tests.sdk.conftest import ORDER, Shell
from tests.sdk.sink import Sink


async def test_opt_out_purges_the_buffer_and_records_nothing_after(sink: Sink, shell_kind: str) -> None:
    sink.blackhole = True  # nothing leaves before the opt-out
    c = Shell(shell_kind, sink.url)
    for _ in range(5):
        c.track("stock_order_submit", ORDER)
    c.opt_out()
    assert c.opted_out
    assert c.stats.queued == 0
    assert c.stats.dropped == {"opted_out": 5}
    c.track("stock_order_submit", ORDER)
    c.profile_set({"risk_level": "C3"})
    c.login("u-1")
    assert c.stats.tracked == 5  # nothing since
    sink.blackhole = False
    c.opt_in()
    c.track("stock_order_submit", ORDER)
    assert await c.flush(10)
    assert len(sink.stored) == 1
    await c.close()


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_an_opted_out_device_stays_opted_out_across_restarts(sink: Sink, tmp_path: Path, cls: type) -> None:
    spool = str(tmp_path / "spool")
    sink.blackhole = True
    first = Client(sink.url, write_key="wk_test", spool=spool)
    for _ in range(20):
        first.track("stock_order_submit", {**ORDER, "mobile": "13812345678"})
    first.opt_out()
    first.close(0.2)
    assert not list(Path(spool).rglob("*.seg")) or all(p.stat().st_size == 0 for p in Path(spool).rglob("*.seg"))
    assert b"13812345678" not in b"".join(p.read_bytes() for p in Path(spool).rglob("*") if p.is_file())
    sink.blackhole = False
    again = cls(sink.url, write_key="wk_test", spool=spool)
    assert again.opted_out
    again.track("stock_order_submit", ORDER)
    assert again.stats.tracked == 0
    again.opt_in()
    again._exit_within(0.0) if isinstance(again, AsyncClient) else again.close(1)
    third = Client(sink.url, write_key="wk_test", spool=spool)
    assert not third.opted_out
    third.track("stock_order_submit", ORDER)
    assert third.flush(10)
    third.close(1)
    assert len(sink.stored) == 1  # only the event tracked after opting in again


async def test_a_batch_in_flight_at_opt_out_is_never_resent(sink: Sink, shell_kind: str) -> None:
    sink.blackhole = True
    c = Shell(shell_kind, sink.url, timeouts=Timeouts(request_s=0.3))
    for _ in range(3):
        c.track("stock_order_submit", ORDER)
    assert await c.flush(0.1) is False  # the batch is on the wire, unanswered
    c.opt_out()
    sink.blackhole = False
    assert await c.flush(5)  # the timed-out batch is settled as opted out, not retried
    assert c.stats.dropped == {"opted_out": 3}
    assert sink.stored == {}
    await c.close()


def test_opted_out_can_be_given_at_construction(sink: Sink) -> None:
    client = Client(sink.url, write_key="wk_test", opted_out=True)
    client.track("stock_order_submit", ORDER)
    assert client.stats.tracked == 0
    assert client.flush(1)
    client.close(1)
    assert sink.requests == []
