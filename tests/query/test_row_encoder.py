"""The compiled response encoder (query/row_encoder.py) against the general builder
(query/response.py): the same bytes for every row, query character set and transfer syntax."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset

from dicomd.query.identifier import Query, parse_identifier
from dicomd.query.model import MODELS
from dicomd.query.plan import Plan, Source, build_plan
from dicomd.query.response import response_identifier
from dicomd.query.row_encoder import _PAGE_MIN, ResponseEncoder, text_row
from tests.query.data import PATIENT_ROOT, STUDY_ROOT

SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
)
CHARSETS = (
    (),
    ("ISO_IR 192",),
    ("ISO_IR 100",),
    ("ISO_IR 144",),
    ("GB18030",),
    ("GBK",),
    ("ISO_IR 6",),
    ("ISO_IR 13",),
    ("ISO 2022 IR 100",),
    ("", "ISO 2022 IR 87"),
    ("ISO 2022 IR 6", "ISO 2022 IR 149"),
    ("NOT A CHARSET",),
)


def _identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


# Identifiers whose plans cover every output source but the kept attributes: columns of each
# VR (text, PN, UI, DA/TM, IS/DS, US), computed counts and lists, a constant, keys below the level.
IDENTIFIERS = (
    (
        STUDY_ROOT,
        _identifier(
            "STUDY",
            PatientName="",
            PatientID="",
            PatientBirthDate="",
            PatientSex="",
            OtherPatientIDs="",
            PatientComments="",
            StudyDate="",
            StudyTime="",
            AccessionNumber="",
            ReferringPhysicianName="",
            NameOfPhysiciansReadingStudy="",
            StudyDescription="",
            StudyInstanceUID="",
            StudyID="",
            PatientAge="",
            PatientWeight="",
            ModalitiesInStudy="",
            SOPClassesInStudy="",
            NumberOfStudyRelatedSeries="",
            NumberOfStudyRelatedInstances="",
            InstanceAvailability="",
            SeriesDescription="",  # below the level: answered empty
            Modality="CT",  # below the level, with a value
        ),
    ),
    (
        PATIENT_ROOT,
        _identifier(
            "IMAGE",
            PatientID="P1",
            StudyInstanceUID="1.2.3",
            SeriesInstanceUID="1.2.3.4",
            SOPInstanceUID="",
            SOPClassUID="",
            InstanceNumber="",
            Rows=None,
            Columns=None,
            ImageType="",
            NumberOfFrames="",
            ContentDate="",
            AvailableTransferSyntaxUID="",
        ),
    ),
)

_TEXT = st.text(
    alphabet=st.sampled_from(
        [*"AZaz09 ^=\\.-*?_%", "é", "Ü", "ß", "Ж", "λ", "王", "芳", "山", "€", "\x00"]
    ),
    max_size=12,
)
_VALUE = st.one_of(
    st.none(),
    st.just(""),
    _TEXT,
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
)


def _plans() -> list[tuple[Query, Plan]]:
    out = []
    for model, ds in IDENTIFIERS:
        query = parse_identifier(ds, MODELS[model], relational=False, combined_datetime=False)
        out.append((query, build_plan(query, pn_case_insensitive=True)))
    return out


PLANS = _plans()


def _as_read(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row as the index gives it to the encoder: text as UTF-8 bytes (text_as_bytes)."""
    return tuple(v.encode() if isinstance(v, str) else v for v in row)


def _plan_in(which: int, charsets: tuple[str, ...]) -> tuple[Query, Plan, int]:
    """PLANS[which], its query in `charsets`, and the number of columns of its rows."""
    query, plan = PLANS[which]
    width = 1 + max(o.index for o in plan.outputs if o.source is Source.ROW)
    return replace(query, charsets=charsets), plan, width


def _encoder(query: Query, plan: Plan, syntax: str) -> ResponseEncoder:
    return ResponseEncoder(
        query, plan, ae_title="DICOMD", pn_case_insensitive=True, transfer_syntax=syntax
    )


def _general(query: Query, plan: Plan, row: tuple[Any, ...], syntax: str) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return response_identifier(
            query, plan, row, ae_title="DICOMD", pn_case_insensitive=True, transfer_syntax=syntax
        )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(PLANS) - 1),
    charsets=st.sampled_from(CHARSETS),
    syntax=st.sampled_from(SYNTAXES),
    data=st.data(),
)
def test_same_bytes_as_the_general_builder(
    which: int, charsets: tuple[str, ...], syntax: str, data: st.DataObject
) -> None:
    query, plan, width = _plan_in(which, charsets)
    row = tuple(data.draw(st.lists(_VALUE, min_size=width, max_size=width)))
    encoder = _encoder(query, plan, syntax)
    assert encoder.fast and encoder.text_as_bytes
    assert encoder(_as_read(row)) == _general(query, plan, row, syntax)
    assert text_row(_as_read(row)) == row


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.integers(0, len(PLANS) - 1),
    charsets=st.sampled_from(CHARSETS),
    syntax=st.sampled_from(SYNTAXES),
    ascii_only=st.booleans(),
    data=st.data(),
)
def test_a_page_is_the_same_bytes_as_its_rows(
    which: int, charsets: tuple[str, ...], syntax: str, ascii_only: bool, data: st.DataObject
) -> None:
    """page(), column by column, against the general builder row by row: pages of every size
    around the row-path threshold, values of every kind (None, numbers, non-ASCII, long), and
    pages whose values are all ASCII, the common case that the column path takes whole."""
    query, plan, width = _plan_in(which, charsets)
    value = _VALUE.filter(lambda v: not isinstance(v, str) or v.isascii()) if ascii_only else _VALUE
    row = st.lists(value, min_size=width, max_size=width).map(tuple)
    rows = data.draw(st.lists(row, min_size=0, max_size=24))
    encoder = _encoder(query, plan, syntax)
    assert encoder.page([_as_read(r) for r in rows]) == [
        _general(query, plan, r, syntax) for r in rows
    ]


def test_a_page_with_long_values_and_numbers() -> None:
    """Values past the header tables' first size and past their limit, and numbers, in one page;
    and a page in UTF-8 with names the column path rewrites (trailing "=" of a PN)."""
    for charsets in ((), ("ISO_IR 192",)):
        q, plan, width = _plan_in(0, charsets)
        for length in (3, 63, 64, 65, 200, 4095, 4096, 5000):
            rows = [
                tuple(("A" * length if i % 2 else i * 7) for i in range(width)),
                *[tuple(f"X{n}^Y=王^=" if i == 1 else n for i in range(width)) for n in range(9)],
            ]
            encoder = _encoder(q, plan, SYNTAXES[0])
            read = [_as_read(r) for r in rows]
            assert encoder.page(read) == [_general(q, plan, r, SYNTAXES[0]) for r in rows]
            # Column by column, unless a value is past the tables or not ASCII outside UTF-8.
            columns = charsets == ("ISO_IR 192",) and length < 4096
            assert (encoder._columns(read) is not None) == columns


@pytest.mark.parametrize(
    ("names", "columns"),
    [
        # Single values of at most three groups, none ending in "=": taken as read.
        (["WANG^FANG=王^芳", "LI^NA", "Wang^X=王^小=わん^"], True),
        # A non-ASCII name with a trailing "=" loses it; an ASCII one keeps it (as the rows do).
        (["WANG^FANG=王^芳=", "LI^NA=", "A==王"], True),
        # An ASCII value with four groups does not stop the column path.
        (["A=B=C=D", "WANG=王"], True),
        # Several values in one: each is rewritten.
        (["A^B=王^芳=\\C=山=", "D"], True),
        # A non-ASCII name of four groups: the row path (pydicom decides).
        (["A=B=C=王", "D"], False),
        (["A\\B=C=D=王"], False),
    ],
)
def test_a_page_of_names_in_utf8(names: list[str], columns: bool) -> None:
    """The PN column of a UTF-8 response, rewritten by passes over the column where it can be:
    the same bytes as the general builder, row by row."""
    q, plan, width = _plan_in(0, ("ISO_IR 192",))
    rows = [tuple(names[n % len(names)] for _ in range(width)) for n in range(_PAGE_MIN + 1)]
    encoder = _encoder(q, plan, SYNTAXES[0])
    read = [_as_read(r) for r in rows]
    assert encoder.page(read) == [_general(q, plan, r, SYNTAXES[0]) for r in rows]
    assert (encoder._columns(read) is not None) == columns


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("charsets", CHARSETS)
def test_fast_path_taken_for_ascii_and_single_charset_rows(
    syntax: str, charsets: tuple[str, ...]
) -> None:
    """The rows the benchmark streams (ASCII, or non-ASCII in the query's one character set or
    in UTF-8) do not fall back to the general builder."""
    query, plan, width = _plan_in(0, charsets)
    encoder = _encoder(query, plan, syntax)
    ascii_row = tuple(f"V{i}" if i % 3 else i for i in range(width))
    assert encoder._encode(_as_read(ascii_row)) == _general(query, plan, ascii_row, syntax)
    for name in ("WANG^FANG=王^芳", "WANG^FANG=王^芳=", "A^B=王^芳\\C=山=", "A=B=C=王"):
        names = tuple(name for _ in range(width))
        multi_extension = len(charsets) > 1 or charsets in (("ISO_IR 13",), ("ISO 2022 IR 100",))
        fast = encoder._encode(_as_read(names))
        four_groups = any(v.count("=") > 2 for v in name.split("\\"))  # pydicom decides
        assert (fast is None) == (multi_extension or four_groups)
        assert encoder(_as_read(names)) == _general(query, plan, names, syntax)


def test_kept_attributes_take_the_general_builder() -> None:
    ds = _identifier("STUDY", StudyInstanceUID="", InstitutionName="")  # no column
    query = parse_identifier(ds, MODELS[STUDY_ROOT], relational=False, combined_datetime=False)
    plan = build_plan(query, pn_case_insensitive=True)
    assert not _encoder(query, plan, SYNTAXES[1]).fast


def test_non_ascii_ae_title_takes_the_general_builder() -> None:
    query, plan = PLANS[0]
    encoder = ResponseEncoder(
        query, plan, ae_title="DICOMDÉ", pn_case_insensitive=True, transfer_syntax=SYNTAXES[1]
    )
    assert not encoder.fast
