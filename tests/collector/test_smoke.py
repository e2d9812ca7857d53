from __future__ import annotations

from typing import Any

from tests.collector.helpers import body_of, headers_for, order, statuses


async def test_accepts_a_batch(client: Any) -> None:
    resp = await client.post("/v1/batch", data=body_of([order(1), order(2)]), headers=headers_for())
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    assert statuses(result) == ["accepted", "accepted"]
    resp = await client.post("/v1/batch", data=body_of([order(2), order(3)]), headers=headers_for())
    assert statuses(await resp.json()) == ["duplicate", "accepted"]
