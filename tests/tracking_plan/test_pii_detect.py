"""The unplanned-PII detector: each kind found by its exact check, ordinary values left alone, masks hide them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from maidian.tracking_plan.pii_detect import detect, find_pii, mask_found

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def resident_id(region: int, year: int, month: int, day: int, seq: int) -> str:
    body = f"{region}{year}{month:02d}{day:02d}{seq:03d}"
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, WEIGHTS, strict=True)) % 11]


def luhn(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        n = int(ch) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return body + str((10 - total % 10) % 10)


ids = st.builds(
    resident_id,
    st.integers(110000, 659999),
    st.integers(1900, 2020),
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 999),
)


@given(ids, st.text(alphabet=" ,;:", max_size=3))
def test_a_resident_id_with_its_check_digit_is_found_and_a_wrong_check_digit_is_not(number: str, sep: str) -> None:
    assert ("resident_id", number) in detect(f"id{sep}{number}" if sep else number)
    wrong = number[:17] + ("0" if number[17] != "0" else "1")
    assert all(kind != "resident_id" for kind, _t in detect(wrong))


@given(st.integers(10**14, 10**15 - 1), st.sampled_from("23456"))
def test_a_card_number_passing_luhn_is_found_and_masked(body: int, first: str) -> None:
    number = luhn(first + str(body))
    assert ("bank_card", number) in detect(f"card {number}")
    assert number not in mask_found(f"card {number}")


@given(st.sampled_from("3456789"), st.integers(0, 10**9 - 1))
def test_mobile_numbers_and_email_are_found_inside_text_and_masked(second: str, rest: int) -> None:
    mobile = f"1{second}{rest:09d}"
    text = f"请联系 {mobile} 或 wang.li@example.com.cn"
    assert {k for k, _t in detect(text)} == {"mobile", "email"}
    masked = mask_found({"note": [text]})
    assert mobile not in str(masked)
    assert "wang.li@example.com.cn" not in str(masked)


@given(st.integers(0, 2**128 - 1), st.integers(1_600_000_000_000, 1_800_000_000_000))
def test_ids_and_timestamps_are_not_personal_data(n: int, epoch_ms: int) -> None:
    assert detect(f"{n:032x}") == []
    assert detect(str(epoch_ms)) == []
    assert detect(f"ORD-20261207-{n % 10**6:06d}") == []


def test_declared_names_are_not_searched() -> None:
    props = {"mobile_masked": "13812345678", "remark": "13912345678"}
    assert find_pii(props, declared=frozenset({"mobile_masked"})) == [("/remark", "mobile")]
