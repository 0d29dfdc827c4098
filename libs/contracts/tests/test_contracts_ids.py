"""`uuid7` and `is_uuid` skip building `uuid.UUID` objects on the hot path: their answers must be
exactly what the `uuid` module's would be."""

from __future__ import annotations

import time
import uuid

import pytest

from aigw_contracts.ids import is_uuid, uuid7


def _reference_is_uuid(value: str) -> bool:  # the check as it was, through `uuid.UUID`
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def test_uuid7_is_a_canonical_version_7_uuid_in_time_order() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value  # the canonical spelling, lower-case with hyphens
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after
    stamps = [uuid.UUID(v).int >> 80 for v in ids]
    assert stamps == sorted(stamps)


@pytest.mark.parametrize(
    "value",
    [
        str(uuid.uuid4()),
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "0189F2A4-7B1C-7DEF-8ABC-0123456789AB",  # upper case: valid, through the full check
        "urn:0189f2a47b1c7def8abc0123456789ab",  # 36 characters `uuid.UUID` accepts
        "{0189f2a47b1c7def8abc0123456789ab}--",
        "0189f2a4-7b1c-7def-8abc-0123456789a",  # one short
        "0189f2a4-7b1c-7def-8abc-0123456789abc",  # one long
        "0189f2a47b1c7def8abc0123456789ab",  # no hyphens: valid UUID, not 36 characters
        "0189f2a4-7b1c-7def-8abc-0123456789ag",
        "0189f2a4_7b1c_7def_8abc_0123456789ab",
        "0189f2a4-7b1c-7def-8abc-0123456789ab\n",
        "٠189f2a4-7b1c-7def-8abc-0123456789ab",  # a non-ASCII digit
        "",
        "demo",
    ],
)
def test_is_uuid_answers_as_uuid_module_does(value: str) -> None:
    assert is_uuid(value) is _reference_is_uuid(value)


def test_is_uuid_on_generated_ids() -> None:
    assert all(is_uuid(uuid7()) for _ in range(200))
