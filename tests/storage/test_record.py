"""Index record extraction: character sets, multi-values, missing and odd values, DICOM JSON.

The character set cases are built from raw encoded bytes (the PS3.5 Annex H-K examples where there
is one), written as Implicit or Explicit VR Little Endian and parsed back by pydicom's reader, so
the decoding under test is the one a received dataset goes through, not a round trip of str values.
"""

from __future__ import annotations

import struct
import warnings
from io import BytesIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.sequence import Sequence

from dicomd.storage.record import (
    InstanceRecord,
    RecordError,
    record_from_dataset,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
UIDS = [
    (0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.2\x00"),  # SOP Class UID
    (0x00080018, "UI", b"1.2.3.4.5\x00"),  # SOP Instance UID
    (0x0020000D, "UI", b"1.2.3\x00"),  # Study Instance UID
    (0x0020000E, "UI", b"1.2.3.4\x00"),  # Series Instance UID
]
FILE_ARGS = dict(
    transfer_syntax_uid="1.2.840.10008.1.2",
    relpath="objects/ab/cd/x.dcm",
    size=1234,
    sha256="0" * 64,
    received_at="2024-05-01T12:00:00.000000+00:00",
    calling_ae_title="MODALITY",
)

# PS3.5 H.3.1: "Yamada^Tarou=山田^太郎=やまだ^たろう" with Specific Character Set "\ISO 2022 IR 87";
# each ideographic/phonetic run is switched in with ESC $ B (JIS X 0208) and out with ESC ( B.
JAPANESE_H31 = (
    b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
)
# PS3.5 I.2: "Hong^Gildong=洪^吉洞=홍^길동" with "\ISO 2022 IR 149"; ESC $ ) C designates KS X 1001
# to G1, and the characters are GR bytes (high bit set).
KOREAN_I2 = (
    b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf"
)


# Explicit VR elements with a 4-byte length after 2 reserved bytes (PS3.5 Table 7.1-1).
LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def encode_element(tag: int, vr: str, value: bytes, *, implicit: bool) -> bytes:
    """One little endian element (PS3.5 7.1.2 explicit, 7.1.3 implicit), value as given."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<L", len(value)) + value
    if vr in LONG_LENGTH_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack("<L", len(value)) + value
    return head + vr.encode() + struct.pack("<H", len(value)) + value


def raw_dataset(
    elements: list[tuple[int, str, bytes]], *, implicit: bool = True, with_uids: bool = True
) -> Dataset:
    """Encode `elements` byte for byte (even-padded) and parse them with pydicom's reader.

    Encoded by hand rather than with pydicom's writer: given elements whose character set it
    cannot match to an original encoding, write_dataset() decodes and re-encodes the text itself,
    and the bytes under test would be pydicom's, not the standard's.
    """
    data = bytearray()
    for tag, vr, value in sorted((UIDS if with_uids else []) + elements):
        if len(value) % 2:
            value += b"\x00" if vr == "UI" else b" "
        data += encode_element(tag, vr, value, implicit=implicit)
    return read_dataset(BytesIO(bytes(data)), implicit, True)


def record(ds: Dataset) -> InstanceRecord:
    return record_from_dataset(ds, **FILE_ARGS)  # type: ignore[arg-type]


# --- character sets ------------------------------------------------------------------------------


CHARSET_CASES = [
    # (Specific Character Set bytes, PN bytes, expected PN, LO text for Study Description)
    pytest.param(
        b"ISO_IR 100",
        "Müller^Jürgen".encode("latin-1"),
        "Müller^Jürgen",
        "Schädel nativ".encode("latin-1"),
        "Schädel nativ",
        id="ISO_IR 100",
    ),
    pytest.param(
        b"ISO_IR 192",
        "Wang^XiaoDong=王^小东".encode(),
        "Wang^XiaoDong=王^小东",
        "头部平扫".encode(),
        "头部平扫",
        id="ISO_IR 192",
    ),
    pytest.param(
        b"GB18030",
        "Wang^XiaoDong=王^小东".encode("gb18030"),
        "Wang^XiaoDong=王^小东",
        "头部平扫".encode("gb18030"),
        "头部平扫",
        id="GB18030",
    ),
    pytest.param(
        b"\\ISO 2022 IR 87",
        JAPANESE_H31,
        "Yamada^Tarou=山田^太郎=やまだ^たろう",
        b"\x1b$B;3ED\x1b(B",
        "山田",
        id="ISO 2022 IR 87",
    ),
    pytest.param(
        b"\\ISO 2022 IR 149",
        KOREAN_I2,
        "Hong^Gildong=洪^吉洞=홍^길동",
        b"\x1b$)C\xc8\xab",
        "홍",
        id="ISO 2022 IR 149",
    ),
]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "explicit"])
@pytest.mark.parametrize(("charset", "pn", "expected_pn", "lo", "expected_lo"), CHARSET_CASES)
def test_text_is_decoded_with_the_specific_character_set(
    implicit: bool, charset: bytes, pn: bytes, expected_pn: str, lo: bytes, expected_lo: str
) -> None:
    # The value really needs the declared character set (ISO 2022 is 7-bit, with escapes).
    assert not pn.isascii() or b"\x1b" in pn
    ds = raw_dataset(
        [
            (0x00080005, "CS", charset),
            (0x00081030, "LO", lo),  # Study Description
            (0x00100010, "PN", pn),  # Patient's Name
        ],
        implicit=implicit,
    )
    rec = record(ds)
    assert rec.patient_name == expected_pn
    assert rec.study_description == expected_lo
    assert rec.specific_character_set == charset.decode("ascii")


def test_unknown_character_set_falls_back_without_crashing() -> None:
    with pytest.warns(UserWarning, match="Unknown encoding"):
        ds = raw_dataset(
            [
                (0x00080005, "CS", b"ISO_IR 999"),
                (0x00100010, "PN", "Müller^Jürgen".encode("latin-1")),
            ]
        )
        rec = record(ds)
    # pydicom falls back to its default repertoire; what it gives is kept, not dropped.
    assert rec.patient_name.startswith("M") and rec.patient_name.endswith("rgen")
    assert rec.specific_character_set == "ISO_IR 999"


def test_undecodable_bytes_become_replacement_characters() -> None:
    ds = raw_dataset([(0x00080005, "CS", b"ISO_IR 192"), (0x00100010, "PN", b"Bad\xff^Name")])
    with pytest.warns(UserWarning, match="decode"):
        rec = record(ds)
    assert rec.patient_name == "Bad\ufffd^Name"


# --- values --------------------------------------------------------------------------------------


def test_multi_valued_attributes_are_joined_with_backslash() -> None:
    ds = raw_dataset(
        [
            (0x00080008, "CS", b"ORIGINAL\\PRIMARY\\AXIAL"),  # Image Type
            (0x00081060, "PN", b"Reader^One\\Reader^Two"),  # Name of Physician(s) Reading Study
            (0x00101000, "LO", b"ALT1\\ALT2"),  # Other Patient IDs (retired, still sent)
        ]
    )
    rec = record(ds)
    assert rec.image_type == "ORIGINAL\\PRIMARY\\AXIAL"
    assert rec.name_of_physicians_reading_study == "Reader^One\\Reader^Two"
    assert rec.other_patient_ids == "ALT1\\ALT2"
    assert rec.image_type == "ORIGINAL\\PRIMARY\\AXIAL"


def test_other_patient_ids_sequence_and_request_attributes() -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, "1.2.3.4.5"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.OtherPatientIDsSequence = Sequence(
        [Dataset(), Dataset()]  # items filled below; the first has no Patient ID
    )
    ds.OtherPatientIDsSequence[1].PatientID = "OTHER-7"
    first, second = Dataset(), Dataset()
    first.RequestedProcedureID, first.ScheduledProcedureStepID = "RP1", "SPS1"
    second.RequestedProcedureID = "RP2"
    ds.RequestAttributesSequence = Sequence([first, second, Dataset()])
    rec = record(ds)
    assert rec.other_patient_ids == "OTHER-7"
    assert rec.request_attributes == "RP1^SPS1\\RP2^"


def test_missing_values_are_empty_or_none() -> None:
    rec = record(raw_dataset([]))
    assert rec.sop_instance_uid == "1.2.3.4.5"
    assert rec.sop_class_uid == CT_IMAGE
    assert rec.study_instance_uid == "1.2.3"
    assert rec.series_instance_uid == "1.2.3.4"
    assert rec.patient_id == rec.patient_name == rec.study_date == rec.modality == ""
    assert rec.request_attributes == rec.other_patient_ids == rec.specific_character_set == ""
    assert rec.series_number is None and rec.instance_number is None
    assert rec.rows is None and rec.columns is None and rec.number_of_frames is None
    # File fields are passed through unchanged.
    assert (rec.relpath, rec.size, rec.sha256) == ("objects/ab/cd/x.dcm", 1234, "0" * 64)
    assert rec.received_at == FILE_ARGS["received_at"]
    assert rec.calling_ae_title == "MODALITY"


def test_empty_present_values_are_empty() -> None:
    rec = record(
        raw_dataset(
            [(0x00100010, "PN", b""), (0x00200011, "IS", b""), (0x00280010, "US", b"")],
            implicit=False,
        )
    )
    assert rec.patient_name == ""
    assert rec.series_number is None
    assert rec.rows is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"12", 12),
        (b" 7 ", 7),
        (b"+3", 3),
        (b"-2", -2),
        (b"000042", 42),
        (b"5\\6", 5),  # VM > 1 where 1 is expected: the first value
    ],
)
def test_integer_strings(value: bytes, expected: int) -> None:
    rec = record(raw_dataset([(0x00200011, "IS", value)]))  # Series Number
    assert rec.series_number == expected


@pytest.mark.parametrize(
    "value",
    [b"abc", b"1e3", b"2.5", b"2.0", b"0x10", b"1_000", b"99999999999999999999999", b"\xff\xfe"],
)
def test_unparseable_integers_become_none(value: bytes) -> None:
    ds = raw_dataset([(0x00200013, "IS", value), (0x00100020, "LO", b"PID")])  # Instance Number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid IS, which is fine
        rec = record(ds)
    assert rec.instance_number is None
    assert rec.patient_id == "PID"


def test_binary_numbers_and_decimal_strings() -> None:
    rec = record(
        raw_dataset(
            [
                (0x00101020, "DS", b"1.75"),  # Patient's Size, kept as sent
                (0x00101030, "DS", b"72.50"),  # Patient's Weight
                (0x00280008, "IS", b"30"),  # Number of Frames
                (0x00280010, "US", (512).to_bytes(2, "little")),  # Rows
                (0x00280011, "US", (256).to_bytes(2, "little")),  # Columns
            ],
            implicit=False,
        )
    )
    assert (rec.rows, rec.columns, rec.number_of_frames) == (512, 256, 30)
    assert (rec.patient_size, rec.patient_weight) == ("1.75", "72.50")


def test_padding_is_stripped_but_leading_spaces_of_lt_are_kept() -> None:
    rec = record(
        raw_dataset(
            [
                (0x00100020, "LO", b"  PID42  "),  # Patient ID
                (0x00104000, "LT", b"  indented comment  "),  # Patient Comments
            ]
        )
    )
    assert rec.patient_id == "PID42"
    assert rec.patient_comments == "  indented comment"


# --- required keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", [tag for tag, _, _ in UIDS])
@pytest.mark.parametrize("empty", [True, False], ids=["empty", "absent"])
def test_missing_key_uid_is_a_record_error(tag: int, empty: bool) -> None:
    elements = [(t, vr, b"" if (t == tag and empty) else v) for t, vr, v in UIDS]
    if not empty:
        elements = [e for e in elements if e[0] != tag]
    ds = raw_dataset(elements, with_uids=False)
    with pytest.raises(RecordError):
        record(ds)
    assert issubclass(RecordError, ValueError)


# --- never crash ---------------------------------------------------------------------------------

CHARSETS = [
    b"",
    b"ISO_IR 100",
    b"ISO_IR 192",
    b"GB18030",
    b"\\ISO 2022 IR 87",
    b"ISO_IR 999",
    b"\xff",
]
FIELDS = [
    (0x00100010, "PN"),  # Patient's Name
    (0x00100020, "LO"),  # Patient ID
    (0x00080020, "DA"),  # Study Date
    (0x00200011, "IS"),  # Series Number
    (0x00280010, "US"),  # Rows
    (0x00080008, "CS"),  # Image Type
    (0x00101020, "DS"),  # Patient's Size
    (0x00104000, "LT"),  # Patient Comments
    (0x00400275, "SQ"),  # Request Attributes Sequence, with garbage for items
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    charset=st.sampled_from(CHARSETS),
    values=st.lists(st.binary(max_size=40), min_size=len(FIELDS), max_size=len(FIELDS)),
    implicit=st.booleans(),
)
def test_arbitrary_values_never_crash(charset: bytes, values: list[bytes], implicit: bool) -> None:
    elements = [(0x00080005, "CS", charset)] + [
        (tag, vr, value) for (tag, vr), value in zip(FIELDS, values, strict=True)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about most of these values; fine
        try:
            ds = raw_dataset(elements, implicit=implicit)
        except Exception:
            return  # pydicom's reader refused the bytes: the header reader's business, not ours
        rec = record(ds)
    assert rec.sop_instance_uid == "1.2.3.4.5"
    assert rec.series_number is None or isinstance(rec.series_number, int)
    assert rec.rows is None or 0 <= rec.rows < 65536


# --- the raw fast path agrees with pydicom -------------------------------------------------------

_FAST_FIELDS = [
    ("PatientName", st.sampled_from(["Doe^John", "Müller^Jürgen", "王^小东", "O'Neil^Ann  ", ""])),
    ("PatientID", st.sampled_from(["P1", " 42 ", "ID\\ALT", ""])),
    ("StudyDate", st.sampled_from(["20260101", "", "2026"])),
    ("SeriesNumber", st.sampled_from(["1", " 7 ", "", "1\\2"])),
    ("ImageType", st.sampled_from(["ORIGINAL\\PRIMARY\\AXIAL", "DERIVED ", ""])),
    ("PatientComments", st.sampled_from(["  leading spaces kept", "plain", "Ünïcode"])),
    ("StudyDescription", st.sampled_from(["Chest", "胸部", ""])),
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.tuples(*(strategy for _name, strategy in _FAST_FIELDS)),
    charset=st.sampled_from(["ISO_IR 192", "ISO_IR 100", "GB18030", ""]),
    encoding=st.sampled_from(["implicit", "explicit", "big"]),
    rows=st.integers(0, 65535),
)
def test_raw_fast_path_equals_pydicom(
    values: tuple[str, ...], charset: str, encoding: str, rows: int
) -> None:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from dicomd.storage.scan import scan

    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    for (keyword, _strategy), value in zip(_FAST_FIELDS, values, strict=True):
        setattr(ds, keyword, value)
    ds.Rows = rows
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.SOPInstanceUID, ds.SOPClassUID = "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.2"
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = encoding == "implicit", encoding != "big"
    ts = {"implicit": "1.2.840.10008.1.2", "explicit": "1.2.840.10008.1.2.1"}.get(
        encoding, "1.2.840.10008.1.2.2"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            write_dataset(fp, ds)
        except (UnicodeEncodeError, ValueError):
            return  # a value the charset cannot represent: nothing to compare
        data = fp.getvalue()
        scanned = scan(BytesIO(data), 0, len(data), ts)
        slow = record_from_dataset(scanned.dataset(), **FILE_ARGS)  # type: ignore[arg-type]
        fast = record_from_dataset(
            scanned.dataset(),
            **FILE_ARGS,  # type: ignore[arg-type]
            raw=scanned.elements,
            little_endian=encoding != "big",
        )
    assert fast == slow
