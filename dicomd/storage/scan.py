"""A bounded walk over a stored dataset's elements: structure checked to the last byte, header kept.

Owns: deciding whether a received dataset is well-formed (PS3.5 7.1-7.5: element headers, defined and
undefined lengths, sequences, items, encapsulated pixel data) without decoding values, and collecting
the top-level elements the index needs. It never reads a bulk value (pixel data, waveforms,
encapsulated documents): they are skipped by their length, so the work is proportional to the number
of elements, not to the size of the instance.

Why not pydicom here: parsing a CT header with pydicom costs ~1.6 ms and serialising it to DICOM
JSON ~4 ms on this class of machine, which alone would cap a single core at ~170 instances/s. The walk
below costs a fraction of that. pydicom still decodes the values we keep (text with the Specific
Character Set, person names), element by element, in `record.py`.

Bounds: sequence nesting deeper than `MAX_DEPTH` (pydicom dies of RecursionError near 199 levels),
more than `MAX_ELEMENTS` elements, and a Deflated dataset that inflates past `MAX_INFLATED` or more
than `MAX_INFLATE_RATIO` times its size (a deflate bomb) are all refused as unparseable.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from dicomd.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
)

MAX_DEPTH = 64
MAX_ELEMENTS = 1_000_000
# A Deflated dataset (rare: SRs, small images) inflates to at most this, held in memory to walk it.
MAX_INFLATED = 64 * 1024 * 1024
MAX_INFLATE_RATIO = 100
# Top-level values up to this size are kept for the index and C-FIND; longer ones are bulk.
MAX_KEPT_VALUE = 8192
MAX_KEPT_SEQUENCE = 64 * 1024
UNDEFINED = 0xFFFFFFFF

# PS3.5 7.1.2: explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV"}
)
# PS3.5 Table 6.2-1: every VR. An explicit-VR element whose VR bytes are none of these is malformed.
_VRS = {
    vr.encode(): vr
    for vr in (
        *("AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD"),
        *("OF", "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI"),
        *("UL", "UN", "UR", "US", "UT", "UV"),
    )
}
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010

_WINDOW = 64 * 1024


class ScanError(Exception):
    """The dataset is not well-formed (or exceeds a bound): answer with a C000-class status."""


@dataclass(frozen=True, slots=True)
class Element:
    vr: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Scanned:
    """What the index keeps of a dataset."""

    # Top-level elements with values short enough to keep, by tag (group << 16 | element).
    elements: dict[int, Element]
    # The same elements' bytes, encoded as in `blob_transfer_syntax`, for C-FIND to decode on demand.
    blob: bytes
    blob_transfer_syntax: str
    has_pixel_data: bool

    def dataset(self) -> Dataset:
        """The kept elements as a pydicom Dataset whose values are decoded on first access only
        (with the dataset's Specific Character Set, as pydicom does for a file it reads)."""
        implicit = self.blob_transfer_syntax == IMPLICIT_VR_LE
        little = self.blob_transfer_syntax != EXPLICIT_VR_BE
        raw: dict[BaseTag, DataElement | RawDataElement] = {
            BaseTag(tag): RawDataElement(
                BaseTag(tag),
                None if implicit else e.vr,
                len(e.value),
                e.value,
                0,
                implicit,
                little,
                True,
                False,
            )
            for tag, e in self.elements.items()
        }
        return Dataset(raw)


class _Source:
    """Random access to [start, end) of a file through a small read-ahead window."""

    def __init__(self, f: BinaryIO, start: int, end: int) -> None:
        self._f = f
        self.start = start
        self.end = end
        self._buf = b""
        self._buf_at = 0

    def window(self, pos: int, n: int) -> tuple[bytes, int]:
        """A buffer holding f[pos:pos+n], and pos's offset in it."""
        rel = pos - self._buf_at
        if rel >= 0 and rel + n <= len(self._buf) and pos + n <= self.end:
            return self._buf, rel
        if pos < self.start or pos + n > self.end:
            raise ScanError(f"element runs past the end of the dataset (offset {pos - self.start})")
        self._f.seek(pos)
        self._buf = self._f.read(max(n, _WINDOW))
        self._buf_at = pos
        if len(self._buf) < n:
            raise ScanError("file shorter than its dataset")
        return self._buf, 0

    def read(self, pos: int, n: int) -> bytes:
        buf, rel = self.window(pos, n)
        return buf[rel : rel + n]

    @classmethod
    def holding(cls, data: bytes) -> _Source:
        """All of `data`, already in memory: the window is the whole of it, nothing is read."""
        source = cls(io.BytesIO(data), 0, len(data))
        source._buf = data
        return source


class _Walker:
    def __init__(self, src: _Source, *, implicit: bool, little: bool) -> None:
        self.src = src
        self.implicit = implicit
        e = "<" if little else ">"
        self.tag = struct.Struct(e + "HH")
        self.u16 = struct.Struct(e + "H")
        self.u32 = struct.Struct(e + "I")
        self.count = 0

    def header(self, pos: int) -> tuple[int, str, int, int]:
        """(tag, VR, value length, header length) of the element at pos."""
        buf, rel = self.src.window(pos, 12 if pos + 12 <= self.src.end else 8)
        group, elem = self.tag.unpack_from(buf, rel)
        tag = group << 16 | elem
        self.count += 1
        if self.count > MAX_ELEMENTS:
            raise ScanError("too many elements")
        if group == 0xFFFE:  # items and delimiters have no VR in any syntax (PS3.5 7.5)
            return tag, "", self.u32.unpack_from(buf, rel + 4)[0], 8
        if self.implicit:
            return tag, _implicit_vr(tag), self.u32.unpack_from(buf, rel + 4)[0], 8
        vr = _VRS.get(buf[rel + 4 : rel + 6])
        if vr is None:
            raise ScanError(f"invalid VR {buf[rel + 4 : rel + 6]!r} in ({group:04X},{elem:04X})")
        if vr in _LONG_VRS:
            buf, rel = self.src.window(pos, 12)
            return tag, vr, self.u32.unpack_from(buf, rel + 8)[0], 12
        return tag, vr, self.u16.unpack_from(buf, rel + 6)[0], 8

    def skip_value(self, pos: int, tag: int, vr: str, length: int, depth: int) -> int:
        """The position after the value starting at pos."""
        if length != UNDEFINED:
            end = pos + length
            if end > self.src.end:
                raise ScanError(f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end")
            if vr == "SQ":
                # Walked, not stepped over: the depth bound must hold for sequences of defined
                # length too, or a deep one slips through here and kills a later decoder.
                self.defined_sequence(pos, end, depth + 1)
            return end
        if vr in ("OB", "OW") or tag == PIXEL_DATA:
            return self.fragments(pos)
        # Undefined length: a sequence (SQ, or UN / implicit-VR private that PS3.5 6.2.2 treats as one).
        return self.sequence(pos, depth + 1)

    def sequence(self, pos: int, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ScanError(f"sequences nested deeper than {MAX_DEPTH}")
        while True:
            tag, _vr, length, hlen = self.header(pos)
            pos += hlen
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise ScanError(
                    f"expected an item in a sequence, found ({tag >> 16:04X},{tag & 0xFFFF:04X})"
                )
            if length == UNDEFINED:
                pos = self.item(pos, depth)
            else:
                end = pos + length
                if end > self.src.end:
                    raise ScanError("item runs past the end of the dataset")
                self.elements_until(pos, end, depth)
                pos = end

    def defined_sequence(self, pos: int, end: int, depth: int) -> None:
        """A sequence of defined length: items (of defined or undefined length) up to `end`."""
        if depth > MAX_DEPTH:
            raise ScanError(f"sequences nested deeper than {MAX_DEPTH}")
        while pos < end:
            tag, _vr, length, hlen = self.header(pos)
            pos += hlen
            if tag != _ITEM:
                raise ScanError(
                    f"expected an item in a sequence, found ({tag >> 16:04X},{tag & 0xFFFF:04X})"
                )
            if length == UNDEFINED:
                pos = self.item(pos, depth)
            else:
                item_end = pos + length
                if item_end > end:
                    raise ScanError("item runs past the end of its sequence")
                self.elements_until(pos, item_end, depth)
                pos = item_end
        if pos != end:
            raise ScanError("item runs past the end of its sequence")

    def item(self, pos: int, depth: int) -> int:
        while True:
            tag, vr, length, hlen = self.header(pos)
            if tag == _ITEM_END:
                return pos + hlen
            if tag in (_ITEM, _SEQ_END):
                raise ScanError("item not closed by an item delimiter")
            pos = self.skip_value(pos + hlen, tag, vr, length, depth)

    def elements_until(self, pos: int, end: int, depth: int) -> None:
        while pos < end:
            tag, vr, length, hlen = self.header(pos)
            if tag >> 16 == 0xFFFE:
                raise ScanError("delimiter outside a sequence")
            pos = self.skip_value(pos + hlen, tag, vr, length, depth)
        if pos != end:
            raise ScanError("element runs past the end of its item")

    def fragments(self, pos: int) -> int:
        """Encapsulated pixel data (PS3.5 A.4): items of fragments up to a sequence delimiter."""
        while True:
            tag, _vr, length, hlen = self.header(pos)
            pos += hlen
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM or length == UNDEFINED:
                raise ScanError("malformed encapsulated pixel data")
            pos += length
            if pos > self.src.end:
                raise ScanError("pixel data fragment runs past the end")


def _implicit_vr(tag: int) -> str:
    element = tag & 0xFFFF
    if element == 0:
        return "UL"  # group length
    if (tag >> 16) & 1 and element < 0x100:
        return "LO"  # private creator (PS3.5 7.8.1)
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    # Ambiguous dictionary VRs ("US or SS", "OB or OW") are never the index's keys.
    return vr if len(vr) == 2 else "OB"


def scan(f: BinaryIO, start: int, end: int, transfer_syntax_uid: str) -> Scanned:
    """Walk the dataset in f[start:end], encoded in `transfer_syntax_uid`."""
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE:
        return scan_bytes(_inflate(f, start, end), EXPLICIT_VR_LE)
    return _walk(_Source(f, start, end), start, end, transfer_syntax_uid)


def scan_bytes(data: bytes | bytearray, transfer_syntax_uid: str) -> Scanned:
    """Walk a dataset held in memory, encoded in `transfer_syntax_uid` (same result as scan())."""
    if transfer_syntax_uid == DEFLATED_EXPLICIT_VR_LE:
        return scan(io.BytesIO(data), 0, len(data), transfer_syntax_uid)
    return _walk(_Source.holding(bytes(data)), 0, len(data), transfer_syntax_uid)


def _walk(src: _Source, start: int, end: int, ts: str) -> Scanned:
    implicit = ts == IMPLICIT_VR_LE
    little = ts != EXPLICIT_VR_BE
    walker = _Walker(src, implicit=implicit, little=little)
    elements: dict[int, Element] = {}
    blob: list[bytes] = []
    pos = start
    has_pixels = False
    previous = -1
    try:
        while pos < end:
            tag, vr, length, hlen = walker.header(pos)
            if tag >> 16 == 0xFFFE:
                raise ScanError("delimiter at the top level of the dataset")
            if tag <= previous:
                raise ScanError(f"elements out of order at ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            previous = tag
            has_pixels = has_pixels or tag == PIXEL_DATA
            value_end = walker.skip_value(pos + hlen, tag, vr, length, 0)
            if _keep(tag, vr, value_end - pos):
                whole = src.read(pos, value_end - pos)
                elements[tag] = Element(vr, whole[hlen:])
                blob.append(whole)
            pos = value_end
    except (struct.error, UnicodeDecodeError) as e:
        raise ScanError(f"malformed element: {e}") from e
    except RecursionError as e:  # pragma: no cover - MAX_DEPTH keeps us far from the limit
        raise ScanError("sequences nested too deeply") from e
    if pos != end:
        raise ScanError("last element runs past the end of the dataset")
    return Scanned(elements, b"".join(blob), ts, has_pixels)


def _keep(tag: int, vr: str, size: int) -> bool:
    """Whether a top-level element of `size` bytes (header included) is kept: bulk is not."""
    if tag >> 16 >= 0x7FE0 or tag & 0xFFFF == 0:  # pixel data and what follows; group lengths
        return False
    return size <= (MAX_KEPT_SEQUENCE if vr in ("SQ", "UN") else MAX_KEPT_VALUE)


def _inflate(f: BinaryIO, start: int, end: int) -> bytes:
    """A Deflated dataset (PS3.5 A.5), inflated with bounds on size and ratio."""
    f.seek(start)
    compressed_size = end - start
    limit = min(MAX_INFLATED, max(64 * 1024 * 1024, MAX_INFLATE_RATIO * compressed_size))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    remaining = compressed_size
    try:
        while remaining > 0:
            chunk = f.read(min(remaining, 1 << 20))
            if not chunk:
                raise ScanError("file shorter than its deflated dataset")
            remaining -= len(chunk)
            out += inflater.decompress(chunk, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise ScanError(f"deflated dataset inflates past {limit} bytes")
        out += inflater.flush()
    except zlib.error as e:
        raise ScanError(f"invalid deflate stream: {e}") from e
    if len(out) > limit:
        raise ScanError(f"deflated dataset inflates past {limit} bytes")
    return bytes(out)
