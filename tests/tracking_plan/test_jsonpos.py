"""Positions of JSON pointers in JSON text: every member and item is found where it is written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from maidian.tracking_plan._jsonpos import Locator, join_pointer, line_col, locate, split_pointer

keys = st.text(alphabet=st.sampled_from('ab/~"\\ 中'), min_size=0, max_size=4)
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=25
)


def pointers(node: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from pointers(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from pointers(v, (*path, i))


@given(documents, st.sampled_from([None, 2]), st.booleans())
def test_every_pointer_lands_on_its_key_or_value(doc: Any, indent: int | None, ascii_only: bool) -> None:
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only)
    locator = Locator(text)
    for path, value in pointers(doc):
        pointer = join_pointer(path)
        assert split_pointer(pointer) == [str(p) for p in path]
        offset = locator.locate(pointer)
        assert offset is not None
        assert offset == locate(text, pointer)
        assert locator.line_col(offset) == line_col(text, offset)
        decoded, _ = json.JSONDecoder().raw_decode(text, offset)
        if path and isinstance(path[-1], str):
            assert decoded == path[-1]  # an object member: its key
        else:
            assert decoded == value or value != value  # an item or the root: the value itself
    if isinstance(doc, dict) and "zz" not in doc:
        assert locator.locate("/zz") is None


def test_missing_pointers_and_repeated_keys() -> None:
    text = '{"a": {"b": [1, 2]}, "a": 3}'
    assert locate(text, "/a/b/1") == text.index("2")
    assert locate(text, "/a/b/2") is None
    assert locate(text, "/a/c") is None
    assert locate(text, "/a/b/x") is None
    assert locate(text, "") == 0


def test_line_and_column_are_one_based_and_out_of_order_requests_agree() -> None:
    text = '{\n  "a": 1,\n  "b": {\n    "c": 2\n  }\n}'
    locator = Locator(text)
    assert locator.position("/b/c") == (4, 5)
    assert locator.position("/a") == (2, 3)
    assert locator.position("/b") == (3, 3)
