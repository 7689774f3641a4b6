"""Status categories (PS3.7 Annex C) and the named codes (PS3.4 B.2.3, C.4.x).

pynetdicom's status tables are an independent transcription of the same annexes; they are used here
as an oracle only.
"""

from __future__ import annotations

import pytest
from pynetdicom import status as pnd_status

from dicomd.dimse import status
from dicomd.dimse.status import StatusCategory, category

S, W, F, C, P = (
    StatusCategory.SUCCESS,
    StatusCategory.WARNING,
    StatusCategory.FAILURE,
    StatusCategory.CANCEL,
    StatusCategory.PENDING,
)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0x0000, S),
        (0x0001, W),
        (0x0107, W),
        (0x0116, W),
        (0xB000, W),
        (0xB006, W),
        (0xB007, W),
        (0xBFFF, W),
        (0xFE00, C),
        (0xFF00, P),
        (0xFF01, P),
        (0xA700, F),
        (0xA7FF, F),
        (0xA801, F),
        (0xA900, F),
        (0xAFFF, F),
        (0xC000, F),
        (0xC001, F),
        (0xCFFF, F),
        (0x0105, F),
        (0x0110, F),
        (0x0111, F),
        (0x0122, F),
        (0x0124, F),
        (0x0210, F),
        (0x0213, F),
        # unassigned codes are failures: an unknown code must never pass for success
        (0x0002, F),
        (0x5000, F),
        (0xFE01, F),
        (0xFF02, F),
        (0xFFFF, F),
    ],
)
def test_category(code: int, expected: StatusCategory) -> None:
    assert category(code) is expected


def test_category_agrees_with_pynetdicom_for_every_code() -> None:
    oracle = {
        pnd_status.STATUS_SUCCESS: S,
        pnd_status.STATUS_WARNING: W,
        pnd_status.STATUS_FAILURE: F,
        pnd_status.STATUS_CANCEL: C,
        pnd_status.STATUS_PENDING: P,
    }
    unknown = 0
    for code in range(0x10000):
        theirs = pnd_status.code_to_category(code)
        if theirs == pnd_status.STATUS_UNKNOWN:
            unknown += 1
            assert category(code) is F, hex(code)
        else:
            assert category(code) is oracle[theirs], hex(code)
    assert 0 < unknown < 0x10000  # the oracle did classify something, and not everything


@pytest.mark.parametrize("code", [-1, 0x10000, 1 << 20])
def test_category_rejects_non_16_bit(code: int) -> None:
    with pytest.raises(ValueError, match="16-bit"):
        category(code)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SUCCESS", 0x0000),
        ("CANCEL", 0xFE00),
        ("PENDING", 0xFF00),
        ("PENDING_WARNING", 0xFF01),
        ("OUT_OF_RESOURCES", 0xA700),
        ("OUT_OF_RESOURCES_MATCHES", 0xA701),
        ("OUT_OF_RESOURCES_SUBOPS", 0xA702),
        ("MOVE_DESTINATION_UNKNOWN", 0xA801),
        ("DATASET_DOES_NOT_MATCH_SOP_CLASS", 0xA900),
        ("IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS", 0xA900),
        ("CANNOT_UNDERSTAND", 0xC000),
        ("UNABLE_TO_PROCESS", 0xC001),
        ("SUBOPS_WARNING", 0xB000),
        ("COERCION", 0xB000),
        ("ELEMENTS_DISCARDED", 0xB006),
        ("DATASET_MISMATCH_WARNING", 0xB007),
        ("SOP_CLASS_NOT_SUPPORTED", 0x0122),
        ("DUPLICATE_SOP_INSTANCE", 0x0111),
        ("NO_SUCH_SOP_CLASS", 0x0118),
        ("INVALID_ARGUMENT_VALUE", 0x0115),
        ("PROCESSING_FAILURE", 0x0110),
        ("REFUSED_NOT_AUTHORIZED", 0x0124),
        ("DUPLICATE_INVOCATION", 0x0210),
        ("UNRECOGNIZED_OPERATION", 0x0211),
        ("MISTYPED_ARGUMENT", 0x0212),
        ("RESOURCE_LIMITATION", 0x0213),
    ],
)
def test_named_codes(name: str, value: int) -> None:
    assert getattr(status, name) == value


@pytest.mark.parametrize(
    ("code", "table", "meaning"),
    [
        (status.COERCION, "STORAGE_SERVICE_CLASS_STATUS", "Coercion of Data Elements"),
        (status.ELEMENTS_DISCARDED, "STORAGE_SERVICE_CLASS_STATUS", "Element Discarded"),
        (
            status.DATASET_MISMATCH_WARNING,
            "STORAGE_SERVICE_CLASS_STATUS",
            "Data Set Does Not Match SOP Class",
        ),
        (status.OUT_OF_RESOURCES, "STORAGE_SERVICE_CLASS_STATUS", "Refused: Out of Resources"),
        (status.CANNOT_UNDERSTAND, "STORAGE_SERVICE_CLASS_STATUS", "Cannot Understand"),
        (status.MOVE_DESTINATION_UNKNOWN, "QR_MOVE_SERVICE_CLASS_STATUS", "Move destination"),
        (status.OUT_OF_RESOURCES_SUBOPS, "QR_GET_SERVICE_CLASS_STATUS", "sub-operations"),
        (status.UNABLE_TO_PROCESS, "QR_FIND_SERVICE_CLASS_STATUS", "Unable to Process"),
        (status.DUPLICATE_SOP_INSTANCE, "GENERAL_STATUS", "Duplicat"),
        (status.SOP_CLASS_NOT_SUPPORTED, "GENERAL_STATUS", "SOP Class Not Supported"),
    ],
)
def test_named_codes_mean_what_pynetdicom_says(code: int, table: str, meaning: str) -> None:
    _category, text = getattr(pnd_status, table)[code]
    assert meaning.lower() in text.lower()


def test_every_named_code_is_16_bit_and_categorised() -> None:
    names = [n for n in dir(status) if n.isupper() and not n.startswith("_")]
    assert len(names) >= 30
    for name in names:
        value = getattr(status, name)
        assert isinstance(value, int)
        category(value)  # does not raise
