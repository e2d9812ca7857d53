"""SDK-like traffic through several collectors, with retries that reach more than one of them.

`SpreadLoad` is the battery's paced load (tests/reliability/load.py: SDK-form ids, a ledger of what was
tracked and acknowledged, resends until acknowledged) posting each attempt to the next collector in turn.
With `echo_fraction`, an acknowledged batch is sometimes sent once more to another collector, as an SDK
does when the answer to its first try was lost: both collectors store it (each one's dedup cache is only
best-effort), so the raw topic holds it twice, and only the ledger can keep it once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import aiohttp

from tests.reliability.load import Load, _Batch


@dataclass
class SpreadLoad(Load):
    urls: list[str] = field(default_factory=list)
    echo_fraction: float = 0.0
    echoes: int = 0
    _turn: int = 0

    async def _post(self, session: aiohttp.ClientSession, url: str, batch: _Batch) -> bool:
        self._turn += 1
        first = self.urls[self._turn % len(self.urls)] if self.urls else url
        ok = await super()._post(session, first, batch)
        if ok and len(self.urls) > 1 and random.Random(batch.ids[0]).random() < self.echo_fraction:
            other = self.urls[(self._turn + 1) % len(self.urls)]
            self._unacked += 1  # the echo acknowledges the batch a second time
            if await super()._post(session, other, batch):
                self.echoes += 1
            else:
                self._unacked -= 1
        return ok
