"""One match -> its C-FIND response identifier: the requested keys, in a character set that fits.

Owns: the values of the response (PS3.4 C.4.1.1.3.2: exactly the keys of the request, plus the
Query/Retrieve Level and our Retrieve AE Title, plus Specific Character Set when the values need
one), sequence items filtered by the query item (C.2.2.2.6), the character set choice, and the
encoding in the presentation context's transfer syntax.
Must not know: SQL, the network.

Character set: the query's, when it can represent every value of the response (then the SCU reads
the answer in the repertoire it asked in); otherwise ISO_IR 192 (UTF-8), which can represent all of
them. A response whose values are all ASCII carries the query's Specific Character Set if the query
had one, and none otherwise.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, Final, NamedTuple

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, default_encoding, encode_string, python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from dicomd.query.identifier import (
    QUERY_RETRIEVE_LEVEL,
    RETRIEVE_AE_TITLE,
    SPECIFIC_CHARACTER_SET,
    Query,
    RequestedKey,
    element_text,
    tags,
)
from dicomd.query.matching import is_universal, python_match
from dicomd.query.plan import Output, Plan, Source
from dicomd.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    IMPLICIT_VR_LE,
    deflate,
)

__all__ = ["UTF8", "choose_charsets", "response_identifier"]

UTF8: Final = "ISO_IR 192"
# The default repertoire is ASCII; pydicom maps it to Latin-1 for decoding's sake.
_DEFAULT_REPERTOIRE: Final = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
_IGNORE: Final = pydicom_config.IGNORE
# PS3.5 7.1.2: explicit VRs with a reserved field and a 4-byte length.
_LONG_VRS: Final = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
)
_BINARY: Final = {
    "US": "H",
    "UL": "I",
    "SS": "h",
    "SL": "i",
    "FL": "f",
    "FD": "d",
    "SV": "q",
    "UV": "Q",
}
# The VRs whose values may use a character set other than the default repertoire (PS3.5 6.1.2.3).
_CHARSET_VRS: Final = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_SINGLE_VALUED: Final = frozenset({"ST", "LT", "UT", "UR"})  # a backslash is text there


class _Simple(NamedTuple):
    """One response element whose value we hold as Python data: encoded here, without pydicom."""

    tag: int
    vr: str
    value: str | int | float | None  # multi-valued text joined with "\\"


_Part = _Simple | DataElement


def response_identifier(
    query: Query,
    plan: Plan,
    row: tuple[Any, ...],
    *,
    ae_title: str,
    pn_case_insensitive: bool,
    transfer_syntax: str,
) -> bytes:
    """The response identifier of one matching row, encoded in `transfer_syntax`.

    The values from the index (columns, counts, constants) are encoded directly, a few microseconds
    each; only what comes from the kept attributes (sequences, attributes without a column) goes
    through pydicom, which costs a hundred times more per element.
    """
    kept: list[Dataset | None] = []  # decoded once per row, when some key needs it
    parts: list[_Part] = [
        _answer(output, row, plan, kept, pn_case_insensitive) for output in plan.outputs
    ]
    parts.append(_Simple(QUERY_RETRIEVE_LEVEL, "CS", query.level.name))
    parts.append(_Simple(RETRIEVE_AE_TITLE, "AE", ae_title))
    charsets = choose_charsets(query.charsets, _part_texts(parts))
    if charsets:
        parts.append(_Simple(SPECIFIC_CHARACTER_SET, "CS", "\\".join(charsets)))
    parts.sort(key=lambda p: p.tag)
    implicit = transfer_syntax == IMPLICIT_VR_LE
    little = transfer_syntax != EXPLICIT_VR_BE
    encodings = convert_encodings(list(charsets)) if charsets else [default_encoding]
    out = bytearray()
    for part in parts:
        if isinstance(part, _Simple):
            out += _encode_simple(part, implicit, little, encodings)
        else:
            out += _encode_element(part, implicit, little, encodings)
    data = bytes(out)
    return deflate(data) if transfer_syntax == DEFLATED_EXPLICIT_VR_LE else data


def _answer(
    output: Output,
    row: tuple[Any, ...],
    plan: Plan,
    kept: list[Dataset | None],
    pn_case_insensitive: bool,
) -> _Part:
    key = output.key
    match output.source:
        case Source.ROW:
            return _Simple(key.tag, key.vr, row[output.index])
        case Source.CONSTANT:
            return _Simple(key.tag, key.vr, output.constant)
        case Source.EMPTY:
            return _Simple(key.tag, key.vr, None)
    if not kept:
        assert plan.attributes_index is not None
        blob, transfer_syntax = row[plan.attributes_index], row[plan.attributes_index + 1]
        kept.append(_read_kept(blob, transfer_syntax))
    attributes = kept[0]
    stored = _stored(attributes, key.tag)
    if stored is None:
        return _Simple(key.tag, key.vr, None)
    if stored.VR == "SQ" or key.vr == "SQ":
        items = stored.value if isinstance(stored.value, Sequence) else []
        return DataElement(key.tag, "SQ", _items(items, key, pn_case_insensitive))
    return _copy(stored)


def _read_kept(blob: object, transfer_syntax: object) -> Dataset | None:
    if not isinstance(blob, bytes) or not blob or not isinstance(transfer_syntax, str):
        return None
    try:
        return read_dataset(
            io.BytesIO(blob), transfer_syntax == IMPLICIT_VR_LE, transfer_syntax != EXPLICIT_VR_BE
        )
    except Exception:
        return None


def _stored(attributes: Dataset | None, tag: int) -> DataElement | None:
    if attributes is None or tag not in attributes:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            element = attributes[tag]
            element.value  # noqa: B018 - converts (decodes text with the instance's charset) now
    except Exception:
        return None
    return element if isinstance(element, DataElement) else None


def _empty(tag: int, vr: str) -> DataElement:
    return DataElement(tag, vr, [] if vr == "SQ" else None, validation_mode=_IGNORE)


def _copy(element: DataElement) -> DataElement:
    """A converted copy: nothing raw (in another character set) may reach the response."""
    vr = str(element.VR)
    if vr == "SQ":
        items = element.value if isinstance(element.value, Sequence) else []
        return DataElement(element.tag, "SQ", [_copy_item(item) for item in items])
    if " or " in vr:  # an ambiguous dictionary VR that pydicom could not settle: answer empty
        return DataElement(element.tag, "UN", None, validation_mode=_IGNORE)
    return DataElement(element.tag, vr, element.value, validation_mode=_IGNORE)


def _copy_item(item: Dataset) -> Dataset:
    out = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag in tags(item):
            try:
                out.add(_copy(item[tag]))
            except Exception:
                continue
    return out


def _items(items: Iterable[Any], key: RequestedKey, pn_case_insensitive: bool) -> list[Dataset]:
    """The stored items that match the query item, each with the query item's keys only; all
    items, whole, when the query item is absent or empty (universal sequence matching)."""
    query_item = key.item
    if query_item is None or len(query_item) == 0:
        return [_copy_item(item) for item in items if isinstance(item, Dataset)]
    wanted: list[tuple[int, str, str]] = []  # (tag, vr, matching value)
    for tag in tags(query_item):
        try:
            element = query_item[tag]
            text = "" if element.VR == "SQ" else element_text(element)
            wanted.append((tag, str(element.VR), text))
        except Exception:
            continue
    out = []
    for item in items:
        if not isinstance(item, Dataset):
            continue
        if not all(
            python_match(_text(item, tag), text, vr, pn_case_insensitive=pn_case_insensitive)
            for tag, vr, text in wanted
            if not is_universal(text)
        ):
            continue
        answer = Dataset()
        for tag, vr, _text_value in wanted:
            stored = _stored(item, tag)
            answer.add(_copy(stored) if stored is not None else _empty(tag, vr))
        out.append(answer)
    return out


def _text(item: Dataset, tag: int) -> str:
    stored = _stored(item, tag)
    if stored is None or stored.VR == "SQ":
        return ""
    try:
        return element_text(stored)
    except Exception:
        return ""


# --- character sets ------------------------------------------------------------------------------


def _part_texts(parts: list[_Part]) -> Iterator[str]:
    for part in parts:
        if isinstance(part, _Simple):
            if isinstance(part.value, str):
                yield part.value
        else:
            yield from _element_texts(part)


def _element_texts(element: DataElement) -> Iterator[str]:
    value = element.value
    if isinstance(value, Sequence):
        for item in value:
            for child in item:
                yield from _element_texts(child)
        return
    for v in value if isinstance(value, MultiValue | list) else [value]:
        if isinstance(v, str | PersonName):
            yield str(v)


def _representable(text: str, codecs: list[str]) -> bool:
    for codec in codecs:
        try:
            text.encode(codec)
            return True
        except (UnicodeError, LookupError):
            continue
    for ch in text:  # with code extensions, each character may come from another repertoire
        for codec in codecs:
            try:
                ch.encode(codec)
                break
            except (UnicodeError, LookupError):
                continue
        else:
            return False
    return True


def choose_charsets(query_charsets: tuple[str, ...], texts: Iterator[str]) -> tuple[str, ...]:
    """The Specific Character Set values of the response; () for the default repertoire."""
    values = list(texts)
    known = all(cs in python_encoding for cs in query_charsets)
    if all(v.isascii() for v in values):
        return query_charsets if known else ()
    if query_charsets and known:
        codecs = [
            "ascii" if cs in _DEFAULT_REPERTOIRE else python_encoding[cs] for cs in query_charsets
        ]
        if all(v.isascii() or _representable(v, codecs) for v in values):
            return query_charsets
    return (UTF8,)


# --- encoding ------------------------------------------------------------------------------------


_IMPLICIT_HEADER: Final = {True: struct.Struct("<HHI"), False: struct.Struct(">HHI")}
_SHORT_HEADER: Final = {True: struct.Struct("<HH2sH"), False: struct.Struct(">HH2sH")}
_LONG_HEADER: Final = {True: struct.Struct("<HH2s2xI"), False: struct.Struct(">HH2s2xI")}


def _header(tag: int, vr: str, length: int, implicit: bool, little: bool) -> bytes:
    if implicit:
        return _IMPLICIT_HEADER[little].pack(tag >> 16, tag & 0xFFFF, length)
    if vr in _LONG_VRS:
        return _LONG_HEADER[little].pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)
    if length > 0xFFFF:  # cannot happen for values from the index; never write a wrong length
        raise ValueError(f"value of {length} bytes does not fit VR {vr}")
    return _SHORT_HEADER[little].pack(tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _text_bytes(vr: str, text: str, encodings: list[str]) -> bytes:
    if text.isascii() or vr not in _CHARSET_VRS:
        return text.encode("ascii", errors="replace")
    values = [text] if vr in _SINGLE_VALUED else text.split("\\")
    if vr == "PN":
        return b"\\".join(PersonName(v).encode(encodings) for v in values)
    return b"\\".join(encode_string(v, encodings) for v in values)


def _encode_simple(part: _Simple, implicit: bool, little: bool, encodings: list[str]) -> bytes:
    value, vr = part.value, part.vr
    data = b""
    if value is not None and value != "":
        if vr in _BINARY:
            try:
                numbers = [
                    float(v) if vr in ("FL", "FD") else int(v)
                    for v in (value.split("\\") if isinstance(value, str) else [value])
                ]
                fmt = f"{'<' if little else '>'}{len(numbers)}{_BINARY[vr]}"
                data = struct.pack(fmt, *numbers)
            except (ValueError, struct.error):
                data = b""  # a stored value that does not fit the VR: answer it empty
        else:
            data = _text_bytes(vr, str(value), encodings)
    if len(data) % 2:
        data += b"\x00" if vr == "UI" else b" "
    return _header(part.tag, vr, len(data), implicit, little) + data


def _encode_element(
    element: DataElement, implicit: bool, little: bool, encodings: list[str]
) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_data_element(fp, element, encodings)
    return fp.getvalue()
