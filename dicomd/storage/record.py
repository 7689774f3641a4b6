"""The index record of one stored SOP Instance, extracted from its parsed header.

Owns: `InstanceRecord` (one flat row of what the index keeps about an instance: the Patient,
Study, Series and Instance level keys of PS3.4 C.6.1.1.2-C.6.1.1.5, the stored file, and the
top-level attributes as received) and `record_from_dataset()`, which builds it.
Must not know: SQL, files on disk, the network. It runs in a worker thread on a dataset parsed from
peer bytes, so it must be total: an odd value becomes "" (text) or None (numbers), an element that
cannot be read is left out, and the only exception is RecordError for a dataset
without the four UIDs the index is keyed on.

Text is decoded by pydicom with the dataset's Specific Character Set (PS3.5 6.1, Annex H-K: ISO_IR
100, ISO_IR 192, GB18030, ISO 2022 IR 87/149 with code extensions ...) when an element is first
accessed; an unknown charset or an undecodable byte makes pydicom warn and fall back (default
repertoire, replacement characters), and we keep what it gives. A PN is kept as str(value), its
component groups joined with "=" (PS3.5 6.2.1.1). A multi-valued attribute is joined with "\\",
its value delimiter (PS3.5 6.4). Values are stripped of padding; ST/LT/UT keep leading spaces,
which are significant there (PS3.5 Table 6.2-1).

The other top-level attributes are kept as the raw bytes `storage/scan.py` collected (`attributes`,
with the transfer syntax they are encoded in): C-FIND decodes from them, on demand, any attribute the
index has no column for. That replaced a DICOM JSON copy, which cost several milliseconds per
instance to build on the C-STORE path (pydicom's value conversion, element by element).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Protocol, cast

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

__all__ = ["InstanceRecord", "RecordError", "record_from_dataset"]

_NUMBER_VRS: Final = frozenset({"FD", "FL", "SL", "SS", "SV", "UL", "US", "UV"})
_PN_GROUPS: Final = ("Alphabetic", "Ideographic", "Phonetic")
# Text VRs whose leading spaces are significant (PS3.5 Table 6.2-1).
_LEADING_SPACE_VRS: Final = frozenset({"LT", "ST", "UT"})
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_REQUIRED_UIDS: Final = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class RecordError(ValueError):
    """The dataset lacks an attribute the index is keyed on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRecord:
    """One stored instance as the index keeps it; field names are the index's column names."""

    # Patient (PS3.4 C.6.1.1.2, C.6.2.1.2)
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_birth_time: str
    patient_sex: str
    other_patient_ids: str
    ethnic_group: str
    patient_comments: str
    # Study (C.6.1.1.3)
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician_name: str
    name_of_physicians_reading_study: str
    admitting_diagnoses_description: str
    patient_age: str
    patient_size: str
    patient_weight: str
    # Series (C.6.1.1.4)
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    series_date: str
    series_time: str
    body_part_examined: str
    performing_physician_name: str
    protocol_name: str
    operators_name: str
    laterality: str
    # Request Attributes Sequence (0040,0275): one "RequestedProcedureID^ScheduledProcedureStepID"
    # per item, items joined with "\\"; the whole sequence is in `attributes`.
    request_attributes: str
    # Instance (C.6.1.1.5)
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    content_date: str
    content_time: str
    acquisition_date: str
    acquisition_time: str
    number_of_frames: int | None
    rows: int | None
    columns: int | None
    image_type: str
    # File
    transfer_syntax_uid: str
    relpath: str
    size: int
    sha256: str
    received_at: str  # ISO 8601 UTC
    calling_ae_title: str
    specific_character_set: str  # as received, multi-valued joined by "\\"
    # The top-level non-bulk elements as received (see storage/scan.py), encoded in
    # `attributes_transfer_syntax`: C-FIND decodes from here any attribute it has no column for.
    attributes: bytes = b""
    attributes_transfer_syntax: str = ""


def record_from_dataset(
    dataset: Dataset | Callable[[], Dataset],
    *,
    transfer_syntax_uid: str,
    relpath: str,
    size: int,
    sha256: str,
    received_at: str,
    calling_ae_title: str,
    attributes: bytes = b"",
    attributes_transfer_syntax: str = "",
    raw: Mapping[int, RawValue] | None = None,
    little_endian: bool = True,
) -> InstanceRecord:
    """Extract the index record; raises RecordError when one of the four key UIDs is missing.

    `raw`, when given, holds the same top-level elements undecoded (tag -> VR and value bytes, as
    `storage/scan.py` collects them): plain ASCII text and binary integers are then read from there
    directly, a fraction of pydicom's cost per value, and everything else falls back to the
    dataset, which may then be passed as a function that makes it: it is made only if needed.
    """
    ds: Dataset = dataset if isinstance(dataset, Dataset) else cast(Dataset, _LazyDataset(dataset))
    charset = raw.get(0x00080005) if raw is not None else None
    if raw is None or (charset is not None and b"ISO_IR 13" in charset.value):
        # ISO_IR 13 (JIS X 0201) is the one character set whose G0 is not ASCII (0x5C is a yen sign).
        text = partial(_text, ds)
        integer = partial(_integer, ds)
    else:
        text = partial(_fast_text, ds, raw)
        integer = partial(_fast_integer, ds, raw, "<" if little_endian else ">")
    missing = [keyword for keyword in _REQUIRED_UIDS if not text(keyword)]
    if missing:
        raise RecordError(f"missing {', '.join(missing)}")
    # Specific Character Set first: it is read without a charset of its own, and reading it
    # before anything else keeps pydicom's decoding of the other elements consistent.
    specific_character_set = text("SpecificCharacterSet")
    return InstanceRecord(
        patient_id=text("PatientID"),
        issuer_of_patient_id=text("IssuerOfPatientID"),
        patient_name=text("PatientName"),
        patient_birth_date=text("PatientBirthDate"),
        patient_birth_time=text("PatientBirthTime"),
        patient_sex=text("PatientSex"),
        other_patient_ids=_other_patient_ids(ds, text, raw),
        ethnic_group=text("EthnicGroup"),
        patient_comments=text("PatientComments"),
        study_instance_uid=text("StudyInstanceUID"),
        study_date=text("StudyDate"),
        study_time=text("StudyTime"),
        accession_number=text("AccessionNumber"),
        study_id=text("StudyID"),
        study_description=text("StudyDescription"),
        referring_physician_name=text("ReferringPhysicianName"),
        name_of_physicians_reading_study=text("NameOfPhysiciansReadingStudy"),
        admitting_diagnoses_description=text("AdmittingDiagnosesDescription"),
        patient_age=text("PatientAge"),
        patient_size=text("PatientSize"),
        patient_weight=text("PatientWeight"),
        series_instance_uid=text("SeriesInstanceUID"),
        modality=text("Modality"),
        series_number=integer("SeriesNumber"),
        series_description=text("SeriesDescription"),
        series_date=text("SeriesDate"),
        series_time=text("SeriesTime"),
        body_part_examined=text("BodyPartExamined"),
        performing_physician_name=text("PerformingPhysicianName"),
        protocol_name=text("ProtocolName"),
        operators_name=text("OperatorsName"),
        laterality=text("Laterality"),
        request_attributes=_request_attributes(ds, raw),
        sop_instance_uid=text("SOPInstanceUID"),
        sop_class_uid=text("SOPClassUID"),
        instance_number=integer("InstanceNumber"),
        content_date=text("ContentDate"),
        content_time=text("ContentTime"),
        acquisition_date=text("AcquisitionDate"),
        acquisition_time=text("AcquisitionTime"),
        number_of_frames=integer("NumberOfFrames"),
        rows=integer("Rows"),
        columns=integer("Columns"),
        image_type=text("ImageType"),
        transfer_syntax_uid=transfer_syntax_uid,
        relpath=relpath,
        size=size,
        sha256=sha256,
        received_at=received_at,
        calling_ae_title=calling_ae_title,
        specific_character_set=specific_character_set,
        attributes=attributes,
        attributes_transfer_syntax=attributes_transfer_syntax,
    )


# --- the raw fast path ---------------------------------------------------------------------------

_OTHER_PATIENT_IDS_SEQUENCE: Final = 0x00101002
_REQUEST_ATTRIBUTES_SEQUENCE: Final = 0x00400275


class _LazyDataset:
    """Stands for the Dataset a function makes, made on first use (the fast path rarely needs
    it: a non-ASCII value, a sequence)."""

    def __init__(self, make: Callable[[], Dataset]) -> None:
        self._make = make
        self._dataset: Dataset | None = None

    def __getattr__(self, name: str) -> Any:
        if self._dataset is None:
            self._dataset = self._make()
        return getattr(self._dataset, name)

    def __getitem__(self, key: Any) -> Any:
        return self.__getattr__("__getitem__")(key)

    def __contains__(self, key: Any) -> bool:
        return bool(self.__getattr__("__contains__")(key))


class RawValue(Protocol):
    """One undecoded element (storage.scan.Element has this shape)."""

    @property
    def vr(self) -> str: ...

    @property
    def value(self) -> bytes: ...


# Text VRs whose ASCII bytes are their value (PS3.5 6.2): pydicom would decode them to the same str.
_ASCII_TEXT_VRS: Final = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT"}
)
_BINARY_INTEGERS: Final = {"US": "H", "UL": "I", "SS": "h", "SL": "i"}
_TAGS: dict[str, int] = {}


def _tag(keyword: str) -> int | None:
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = tag_for_keyword(keyword)
        if tag is not None:
            _TAGS[keyword] = tag
    return tag


def _fast_text(ds: Dataset, raw: Mapping[int, RawValue], keyword: str) -> str:
    tag = _tag(keyword)
    element = raw.get(tag) if tag is not None else None
    if element is None:
        return ""
    value = element.value
    if element.vr in _ASCII_TEXT_VRS and value.isascii() and b"\x1b" not in value:
        text = value.decode("ascii")
        if element.vr in _LEADING_SPACE_VRS:
            return text.rstrip(" \x00")
        return "\\".join(part.strip(" \x00") for part in text.split("\\"))
    return _text(ds, keyword)


def _fast_integer(
    ds: Dataset, raw: Mapping[int, RawValue], endian: str, keyword: str
) -> int | None:
    tag = _tag(keyword)
    element = raw.get(tag) if tag is not None else None
    if element is None:
        return None
    code = _BINARY_INTEGERS.get(element.vr)
    if code is not None:
        size = struct.calcsize(code)
        if len(element.value) < size:
            return None
        return int(struct.unpack_from(endian + code, element.value)[0])
    if element.vr == "IS" and element.value.isascii():
        first = element.value.decode("ascii").split("\\")[0]
        return _to_int(first)
    return _integer(ds, keyword)


# --- single values -------------------------------------------------------------------------------


def _element(ds: Dataset, keyword: str) -> DataElement | None:
    """The converted element, or None when absent, deferred (bulk) or unreadable."""
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    return _element_at(ds, tag)


def _element_at(ds: Dataset, tag: int) -> DataElement | None:
    try:
        raw = ds.get_item(tag, keep_deferred=True)
        if raw is None or isinstance(raw, Dataset):
            return None
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length != 0:
            return None  # deferred: larger than the reader's defer size, i.e. bulk
        element = ds[tag]  # converts: decodes text with the dataset's character set
    except Exception:
        # pydicom raises on values its converters reject (and the warnings become errors under
        # -W error); an attribute we cannot read is an attribute we do not have.
        return None
    return element if isinstance(element, DataElement) else None


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return list(value)
    return [value]


def _scalar_text(value: Any, vr: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        # A text attribute that arrived with a binary VR; show what is printable of it.
        text = value.decode("ascii", errors="replace")
    elif isinstance(value, PersonName | str):
        text = str(value)
    elif isinstance(value, int | float):
        # IS/DS keep the string they were read from; str() returns it.
        text = str(value)
    else:
        text = str(value)
    if vr in _LEADING_SPACE_VRS:
        return text.rstrip(" \x00")
    return text.strip(" \x00")


def _element_text(element: DataElement) -> str:
    if element.VR == "SQ":
        return ""
    try:
        return "\\".join(_scalar_text(v, str(element.VR)) for v in _values(element.value))
    except Exception:
        return ""


def _text(ds: Dataset, keyword: str) -> str:
    element = _element(ds, keyword)
    return "" if element is None else _element_text(element)


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    number: int
    original = getattr(value, "original_string", None)
    if isinstance(original, str):
        # An IS read from the wire: judge the text as sent (PS3.5 Table 6.2-1: an optional sign
        # and digits), not pydicom's lenient reading of it ("1e3", "2.0", "1_000").
        value = original
    if isinstance(value, int):
        number = int(value)
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        number = int(value)
    elif isinstance(value, str):
        text = value.strip(" \x00")
        if _INTEGER.fullmatch(text) is None:
            return None
        number = int(text)
    else:
        return None
    # SQLite integers are 64-bit; anything larger is not a count or a number we can index.
    return number if _INT64_MIN <= number <= _INT64_MAX else None


def _integer(ds: Dataset, keyword: str) -> int | None:
    element = _element(ds, keyword)
    if element is None or element.VR == "SQ":
        return None
    try:
        values = _values(element.value)
        return _to_int(values[0]) if values else None
    except Exception:
        return None


def _items(ds: Dataset, keyword: str) -> Iterator[Dataset]:
    element = _element(ds, keyword)
    if element is None or not isinstance(element.value, Sequence):
        return
    yield from (item for item in element.value if isinstance(item, Dataset))


def _other_patient_ids(
    ds: Dataset, text: Callable[[str], str], raw: Mapping[int, RawValue] | None
) -> str:
    # Other Patient IDs (0010,1000) is retired in favour of Other Patient IDs Sequence (0010,1002);
    # both are still sent.
    ids = text("OtherPatientIDs")
    if ids or (raw is not None and _OTHER_PATIENT_IDS_SEQUENCE not in raw):
        return ids  # the sequence is looked at only when the dataset has it
    return "\\".join(
        filter(None, (_text(item, "PatientID") for item in _items(ds, "OtherPatientIDsSequence")))
    )


def _request_attributes(ds: Dataset, raw: Mapping[int, RawValue] | None) -> str:
    if raw is not None and _REQUEST_ATTRIBUTES_SEQUENCE not in raw:
        return ""  # no sequence to look into (and no Dataset to make for it)
    parts = []
    for item in _items(ds, "RequestAttributesSequence"):
        requested = _text(item, "RequestedProcedureID")
        scheduled = _text(item, "ScheduledProcedureStepID")
        if requested or scheduled:
            parts.append(f"{requested}^{scheduled}")
    return "\\".join(parts)
