"""PII tags: keyed hashing, masking and dropping, applied to nested paths without touching the input."""

from __future__ import annotations

import copy
import re

from hypothesis import given
from hypothesis import strategies as st

from maidian.tracking_plan.pii import HASH_PATTERN, apply_pii, hash_value, mask_value


def test_hash_is_keyed_and_stable() -> None:
    a = hash_value("13812345678", b"key-1")
    assert re.fullmatch(HASH_PATTERN, a)
    assert a == hash_value("13812345678", b"key-1")
    assert a != hash_value("13812345678", b"key-2")
    assert hash_value(13812345678, b"key-1") == a


def test_mask_keeps_the_ends() -> None:
    assert mask_value("13812345678") == "138****5678"
    assert mask_value("6222021234567890123") == "622************0123"
    assert mask_value("张三丰") == "张**"
    assert mask_value("ab") == "a*"
    assert mask_value("abcdef") == "a***ef"
    assert mask_value("") == ""


@given(st.text(max_size=40))
def test_mask_never_reveals_more_than_seven_characters(value: str) -> None:
    masked = mask_value(value)
    assert len(masked) == len(value)
    assert sum(1 for c in masked if c != "*") <= min(7, max(len(value) - 1, 0))


def test_apply_transforms_nested_paths_and_leaves_the_input_alone() -> None:
    props = {
        "mobile": "13812345678",
        "id_card": "110101199001011234",
        "cards": [{"number": "6222021234567890123", "bank": "ICBC"}, {"number": None}],
        "contacts": ["13900000000", "13911111111"],
        "other": 1,
    }
    before = copy.deepcopy(props)
    paths = {
        ("mobile",): "hash",
        ("id_card",): "drop",
        ("cards", "*", "number"): "mask",
        ("contacts", "*"): "mask",
        ("absent",): "drop",
    }
    out = apply_pii(props, paths, b"k")
    assert props == before
    assert out["mobile"] == hash_value("13812345678", b"k")
    assert "id_card" not in out
    assert out["cards"] == [{"number": "622************0123", "bank": "ICBC"}, {"number": None}]
    assert out["contacts"] == ["139****0000", "139****1111"]
    assert out["other"] == 1


def test_nothing_tagged_present_returns_the_same_object() -> None:
    props = {"a": 1}
    assert apply_pii(props, {("mobile",): "hash"}, b"k") is props
