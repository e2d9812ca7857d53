"""Event ids as frame heads list them: sequence ranges per SDK source, and opaque ids.

The SDK's ids are `<source>-<seq>` (envelope.py): one instance counts up from
1, so a frame's ids of one source are almost always one range. A head stores
them as `seq` (source -> [first, last, first, last, ...]) and every other id
(server sources, imports) in `oid`; deduplication (pipeline/dedup.py) keeps
the same shape in memory.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import Final

__all__ = ["event_ids_of", "id_ranges", "split_event_id", "split_one_source", "to_ranges"]

_SOURCE_LEN: Final = 32
# Nineteen digits fit in a signed 64-bit integer (envelope's `_SOURCE_RE`).
_MAX_SEQ_DIGITS: Final = 19


def split_event_id(event_id: str) -> tuple[str, int] | None:
    """(source, seq) for an SDK-form id, None for an opaque one.

    Cheaper than `envelope.parse_event_id` (no regular expression on the hot
    path) and still one-to-one: the source is the first 32 characters and the
    sequence is canonical ASCII digits (no leading zero), so a pair maps back
    to exactly one id.
    """
    if len(event_id) < _SOURCE_LEN + 2 or event_id[_SOURCE_LEN] != "-":
        return None
    digits = event_id[_SOURCE_LEN + 1 :]
    if len(digits) > _MAX_SEQ_DIGITS or digits[0] == "0" or not digits.isdigit() or not digits.isascii():
        return None
    return event_id[:_SOURCE_LEN], int(digits)


_PREFIX: Final = itemgetter(slice(0, _SOURCE_LEN + 1))
_DIGITS: Final = itemgetter(slice(_SOURCE_LEN + 1, None))
_FIRST: Final = itemgetter(0)


def split_one_source(event_ids: list[str]) -> tuple[str, list[int]] | None:
    """(source, seqs) when every id is an SDK-form id of one source (an SDK's batch), else None.

    The same answer as `split_event_id` on each id, with the checks done over
    the whole list at once in C (slices, one `isdigit` on the joined digits)
    rather than one Python call per id.
    """
    if not event_ids:
        return None
    first = event_ids[0]
    if len(first) < _SOURCE_LEN + 2 or first[_SOURCE_LEN] != "-":
        return None
    prefix = first[: _SOURCE_LEN + 1]
    if list(map(_PREFIX, event_ids)).count(prefix) != len(event_ids):
        return None
    digits = list(map(_DIGITS, event_ids))
    lengths = list(map(len, digits))
    if min(lengths) < 1 or max(lengths) > _MAX_SEQ_DIGITS:
        return None
    joined = "".join(digits)
    if not joined.isdigit() or not joined.isascii() or "0" in map(_FIRST, digits):
        return None
    return first[:_SOURCE_LEN], list(map(int, digits))


def to_ranges(seqs: dict[str, list[int]]) -> dict[str, list[int]]:
    """Sequence numbers per source as flat [lo, hi, lo, hi, ...] ranges (sorts the lists in place)."""
    ranges: dict[str, list[int]] = {}
    for source, values in seqs.items():
        values.sort()
        lo = hi = values[0]
        if values[-1] - lo == len(values) - 1:  # one run with no gap or repeat: the usual batch
            ranges[source] = [lo, values[-1]]
            continue
        flat: list[int] = []
        for v in values[1:]:
            if v <= hi + 1:
                hi = max(hi, v)
            else:
                flat += (lo, hi)
                lo = hi = v
        flat += (lo, hi)
        ranges[source] = flat
    return ranges


def id_ranges(event_ids: Iterable[str]) -> tuple[dict[str, list[int]], list[str]]:
    """Ids grouped as a frame head stores them: flat [lo, hi, lo, hi, ...] per source, and opaque ids."""
    seqs: dict[str, list[int]] = {}
    opaque: list[str] = []
    for eid in event_ids:
        pair = split_event_id(eid)
        if pair is None:
            opaque.append(eid)
        else:
            seqs.setdefault(pair[0], []).append(pair[1])
    return to_ranges(seqs), opaque


def event_ids_of(ranges: dict[str, list[int]], opaque: Iterable[str]) -> list[str]:
    """The ids a head's `seq` ranges and `oid` list name, the inverse of `id_ranges`."""
    out: list[str] = []
    for source, flat in ranges.items():
        for k in range(0, len(flat) - 1, 2):
            out.extend(f"{source}-{n}" for n in range(int(flat[k]), int(flat[k + 1]) + 1))
    out.extend(str(e) for e in opaque)
    return out
