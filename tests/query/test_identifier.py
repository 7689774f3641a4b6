"""The request identifier (decoding, bounds, levels, placement) and the response identifier
(character set choice, transfer syntaxes)."""

from __future__ import annotations

import io
import zlib

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from dicomd.dimse import status
from dicomd.query.identifier import Placement, QueryError, parse_identifier, read_identifier
from dicomd.query.model import MODELS, Level
from dicomd.query.plan import build_plan
from dicomd.query.response import choose_charsets, response_identifier
from tests.query.data import PATIENT_ROOT, STUDY_ROOT

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"


def encode(ds: Dataset, ts: str = EXPLICIT) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = ts == IMPLICIT
    fp.is_little_endian = ts != BIG
    write_dataset(fp, ds)
    data = fp.getvalue()
    if ts == DEFLATED:
        c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = c.compress(data) + c.flush()
    return data


def decode(data: bytes, ts: str = EXPLICIT) -> Dataset:
    if ts == DEFLATED:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    return read_dataset(io.BytesIO(data), ts == IMPLICIT, ts != BIG)


def query_ds(charset: str | None = None, **keys: object) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = "STUDY"
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize("ts", [IMPLICIT, EXPLICIT, BIG, DEFLATED])
@pytest.mark.parametrize(
    ("charset", "name"),
    [
        ("GB18030", "王^小东"),
        ("ISO_IR 192", "王^小东"),
        ("ISO_IR 100", "Müller^Hans"),
        (None, "Doe^Jane"),
    ],
)
def test_identifier_decoded_with_its_character_set(ts: str, charset: str | None, name: str) -> None:
    data = encode(query_ds(charset, PatientName=name, StudyInstanceUID=""), ts)
    ds = read_identifier(data, ts)
    query = parse_identifier(ds, MODELS[STUDY_ROOT], relational=False, combined_datetime=False)
    key = query.key(0x00100010)
    assert key is not None and key.value == name
    assert query.charsets == ((charset,) if charset else ())


@pytest.mark.parametrize(
    "data",
    [
        b"\x08\x00\x52\x00\x43\x53\x06\x00STU",  # truncated value
        b"\x08\x00\x52\x00\x43\x53\xff\xff",  # length past the end
        b"\xfe\xff\x00\xe0\x00\x00\x00\x00",  # a delimiter at the top level
        b"\x10\x00\x10\x00PN\x02\x00ab\x08\x00\x52\x00CS\x06\x00STUDY ",  # out of order
        # sequences nested 100 deep: refused by the bounded walk before pydicom recurses
        b"".join(
            b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
            for _ in range(100)
        ),
    ],
)
def test_malformed_identifiers_are_unable_to_process(data: bytes) -> None:
    with pytest.raises(QueryError) as info:
        read_identifier(data, EXPLICIT)
    assert info.value.code == status.UNABLE_TO_PROCESS


def test_deflate_bomb_is_refused() -> None:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = c.compress(b"\x00" * (64 * 1024 * 1024)) + c.flush()
    with pytest.raises(QueryError) as info:
        read_identifier(bomb, DEFLATED)
    assert info.value.code == status.UNABLE_TO_PROCESS
    with pytest.raises(QueryError):
        read_identifier(b"not deflate at all", DEFLATED)


def test_placement_depends_on_model_and_level() -> None:
    ds = query_ds(PatientName="", StudyInstanceUID="", SeriesInstanceUID="", PatientID="PA")
    study_root = parse_identifier(ds, MODELS[STUDY_ROOT], relational=False, combined_datetime=False)
    patient_root = parse_identifier(
        ds, MODELS[PATIENT_ROOT], relational=False, combined_datetime=False
    )
    assert study_root.level is Level.STUDY
    for q in (study_root, patient_root):
        placement = {k.keyword: k.placement for k in q.keys}
        assert placement["PatientName"] is Placement.ANSWERED
        assert placement["SeriesInstanceUID"] is Placement.BELOW


def test_private_and_command_elements_are_not_keys() -> None:
    ds = query_ds(StudyInstanceUID="")
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091001, "LO", "secret")
    ds.add_new(0x00080054, "AE", "OTHER")  # Retrieve AE Title: answered with ours
    query = parse_identifier(ds, MODELS[STUDY_ROOT], relational=True, combined_datetime=False)
    assert [k.tag for k in query.keys] == [0x0020000D]
    assert query.retrieve_ae_title_requested


# --- response character sets -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "values", "expected"),
    [
        ((), ["Doe^Jane"], ()),
        (("ISO_IR 100",), ["Doe^Jane"], ("ISO_IR 100",)),
        (("ISO_IR 100",), ["Müller^Hans"], ("ISO_IR 100",)),
        (("ISO_IR 100",), ["王^小东"], ("ISO_IR 192",)),
        (("GB18030",), ["王^小东", "Müller"], ("GB18030",)),  # GB18030 covers all of Unicode
        ((), ["Müller^Hans"], ("ISO_IR 192",)),
        (("ISO 2022 IR 6", "ISO 2022 IR 87"), ["山田^太郎"], ("ISO 2022 IR 6", "ISO 2022 IR 87")),
        (("ISO 2022 IR 6", "ISO 2022 IR 87"), ["Müller"], ("ISO_IR 192",)),
        (("NOT A CHARSET",), ["Doe"], ()),
        (("NOT A CHARSET",), ["Dö"], ("ISO_IR 192",)),
    ],
)
def test_choose_charsets(
    query: tuple[str, ...], values: list[str], expected: tuple[str, ...]
) -> None:
    assert choose_charsets(query, iter(values)) == expected


@pytest.mark.parametrize("ts", [IMPLICIT, EXPLICIT, BIG, DEFLATED])
@pytest.mark.parametrize(
    ("charset", "stored", "answered_in"),
    [
        ("GB18030", "Wang^XiaoDong=王^小东", ("GB18030",)),
        ("ISO_IR 192", "Wang^XiaoDong=王^小东", ("ISO_IR 192",)),
        ("ISO_IR 100", "Wang^XiaoDong=王^小东", ("ISO_IR 192",)),
        ("ISO_IR 100", "Müller^Hans", ("ISO_IR 100",)),
        (None, "Müller^Hans", ("ISO_IR 192",)),
    ],
)
def test_response_round_trip(
    ts: str, charset: str | None, stored: str, answered_in: tuple[str, ...]
) -> None:
    ds = query_ds(charset, PatientName="", StudyInstanceUID="")
    query = parse_identifier(ds, MODELS[STUDY_ROOT], relational=True, combined_datetime=False)
    plan = build_plan(query, pn_case_insensitive=True)
    row: list[str | None] = [None] * 8
    by_tag = {o.key.tag: o.index for o in plan.outputs}
    row[by_tag[0x00100010]] = stored
    row[by_tag[0x0020000D]] = "1.2.3"
    data = response_identifier(
        query, plan, tuple(row), ae_title="DICOMD", pn_case_insensitive=True, transfer_syntax=ts
    )
    back = decode(data, ts)
    assert (
        tuple(
            back.SpecificCharacterSet
            if isinstance(back.SpecificCharacterSet, list)
            else [back.SpecificCharacterSet]
        )
        == answered_in
    )
    assert str(back.PatientName) == stored
    assert back.StudyInstanceUID == "1.2.3" and back.QueryRetrieveLevel == "STUDY"
    assert back.RetrieveAETitle == "DICOMD"


@pytest.mark.parametrize("ts", [IMPLICIT, EXPLICIT, BIG, DEFLATED])
@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "GB18030", "ISO_IR 192"])
def test_response_encoding_is_what_pydicom_writes(ts: str, charset: str | None) -> None:
    """The direct encoder (values from the index) against pydicom's writer, byte for byte."""
    keys = dict(
        PatientName="",
        PatientID="",
        StudyDescription="",
        ModalitiesInStudy="",
        NumberOfStudyRelatedInstances="",
        StudyInstanceUID="",
        PatientWeight="",
        NameOfPhysiciansReadingStudy="",
    )
    ds = query_ds(charset, **keys)
    query = parse_identifier(ds, MODELS[STUDY_ROOT], relational=True, combined_datetime=False)
    plan = build_plan(query, pn_case_insensitive=True)
    name = (
        "Doe^Jane"
        if charset is None
        else "Müller^Hans"
        if charset == "ISO_IR 100"
        else "Wang^XiaoDong=王^小东"
    )
    description = (
        "Head" if charset is None else "Thorax pré-op" if charset == "ISO_IR 100" else "头部"
    )
    values = {
        "PatientName": name,
        "PatientID": "P1",
        "StudyDescription": description,
        "ModalitiesInStudy": "CT\\MR",
        "NumberOfStudyRelatedInstances": 120,
        "StudyInstanceUID": "1.2.345",  # odd length: NUL padded
        "PatientWeight": "",
        "NameOfPhysiciansReadingStudy": f"{name}\\Other^Doc",
    }
    row: list[object] = [None] * 16
    for output in plan.outputs:
        row[output.index] = values[output.key.keyword]
    data = response_identifier(
        query, plan, tuple(row), ae_title="DICOMD", pn_case_insensitive=True, transfer_syntax=ts
    )
    expected = Dataset()
    if charset:
        expected.SpecificCharacterSet = charset
    for keyword, value in values.items():
        setattr(expected, keyword, value if value != "" else None)
    expected.QueryRetrieveLevel = "STUDY"
    expected.RetrieveAETitle = "DICOMD"
    if ts == DEFLATED:
        assert zlib.decompress(data, -zlib.MAX_WBITS) == zlib.decompress(
            encode(expected, ts), -zlib.MAX_WBITS
        )
    else:
        assert data == encode(expected, ts)
    back = decode(data, ts)
    assert str(back.PatientName) == name and back.StudyDescription == description
    assert (
        list(back.ModalitiesInStudy) == ["CT", "MR"] and back.NumberOfStudyRelatedInstances == 120
    )
