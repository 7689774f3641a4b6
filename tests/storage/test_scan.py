"""The dataset walker: agrees with pydicom on well-formed data, refuses the rest with ScanError."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.sequence import Sequence

from dicomd.storage.scan import MAX_DEPTH, ScanError, scan
from dicomd.storage.scan import scan_bytes as scan_in_memory

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"

SAMPLES = [
    "CT_small.dcm",  # explicit LE, many private elements
    "MR_small_bigendian.dcm",  # explicit BE
    "MR_small_implicit.dcm",  # implicit LE
    "image_dfl.dcm",  # deflated
    "rtplan.dcm",  # sequences, no pixel data
    "JPEG2000.dcm",  # encapsulated pixel data
    "SC_rgb_rle.dcm",  # RLE
]


def sample(name: str) -> tuple[Path, int, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = get_testdata_file(name)
    assert path is not None, name
    with open(path, "rb") as f:
        read_preamble(f, False)
        meta = _read_file_meta_info(f)
        return Path(path), f.tell(), str(meta.TransferSyntaxUID)


def scan_bytes(data: bytes, ts: str = EXPLICIT) -> object:
    """Both walks, from a file and from memory: they must agree, on the result or the error."""
    try:
        from_file = scan(io.BytesIO(data), 0, len(data), ts)
    except ScanError as error:
        with pytest.raises(ScanError) as caught:
            scan_in_memory(bytearray(data), ts)
        assert str(caught.value) == str(error)
        raise
    assert scan_in_memory(bytearray(data), ts) == from_file
    return from_file


@pytest.mark.parametrize("name", SAMPLES)
def test_agrees_with_pydicom(name: str) -> None:
    path, offset, ts = sample(name)
    full = pydicom.dcmread(path, stop_before_pixels=True)
    with open(path, "rb") as f:
        scanned = scan(f, offset, os.path.getsize(path), ts)
    ds = scanned.dataset()
    assert len(ds) > 10
    for elem in ds:
        assert elem.value == full[elem.tag].value, elem.tag
    # Every short top-level element of the file is kept; bulk and pixel data are not.
    kept = set(ds.keys())
    assert 0x7FE00010 not in kept
    assert {0x00080018, 0x0020000D} <= kept
    assert scanned.has_pixel_data == ("PixelData" in pydicom.dcmread(path))
    # The blob decodes on its own, as C-FIND will decode it.
    blob = pydicom.filereader.read_dataset(
        io.BytesIO(scanned.blob),
        is_implicit_VR=scanned.blob_transfer_syntax == IMPLICIT,
        is_little_endian=scanned.blob_transfer_syntax != "1.2.840.10008.1.2.2",
    )
    assert blob.SOPInstanceUID == full.SOPInstanceUID


def encode(ds: Dataset, *, implicit: bool = False) -> bytes:
    return b"".join(encode_elements(ds, implicit=implicit))


def encode_elements(ds: Dataset, *, implicit: bool = False) -> list[bytes]:
    """The encoded bytes of each top-level element, in order."""
    out = []
    for elem in ds:
        fp = pydicom.filebase.DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = implicit, True
        pydicom.filewriter.write_data_element(fp, elem)
        out.append(fp.getvalue())
    return out


def small_dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Scan^Test"
    ds.PatientID = "42"
    ds.StudyInstanceUID = "1.2.3"
    ds.SOPInstanceUID = "1.2.3.4"
    item = Dataset()
    item.CodeValue = "X"
    ds.ProcedureCodeSequence = Sequence([item])
    ds.PixelData = b"\x00\x01" * 64
    ds["PixelData"].VR = "OW"
    return ds


@pytest.mark.parametrize("implicit", [False, True])
def test_truncation_anywhere_is_refused(implicit: bool) -> None:
    pieces = encode_elements(small_dataset(), implicit=implicit)
    data = b"".join(pieces)
    boundaries = {sum(len(p) for p in pieces[:i]) for i in range(len(pieces) + 1)}
    ts = IMPLICIT if implicit else EXPLICIT
    for cut in range(len(data) + 1):
        if cut in boundaries:
            scan_bytes(data[:cut], ts)  # a shorter dataset, still well-formed
        else:
            with pytest.raises(ScanError):
                scan_bytes(data[:cut], ts)


def test_cut_between_elements_is_well_formed_but_cut_inside_is_not() -> None:
    data = encode(small_dataset())
    with pytest.raises(ScanError):
        scan_bytes(data[:-1])
    with pytest.raises(ScanError):
        scan_bytes(data + b"\x08\x00")  # a trailing half header


def nested(depth: int) -> bytes:
    """`depth` sequences nested in each other, undefined lengths (explicit VR LE)."""
    start = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return start * depth + end * depth


def nested_defined(depth: int) -> bytes:
    """`depth` sequences of defined length nested in each other (explicit VR LE)."""
    inner = b""
    for _ in range(depth):
        item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(inner)) + inner
        inner = b"\x08\x00\x15\x11SQ\x00\x00" + struct.pack("<I", len(item)) + item
    return inner


def test_nesting_bound_holds_for_defined_lengths() -> None:
    scan_bytes(nested_defined(MAX_DEPTH))
    with pytest.raises(ScanError, match="nested"):
        scan_bytes(nested_defined(MAX_DEPTH + 1))
    # A defined-length sequence whose item overruns it is malformed, not skipped.
    bad = b"\x08\x00\x15\x11SQ\x00\x00" + struct.pack("<I", 8) + b"\xfe\xff\x00\xe0\x10\x00\x00\x00"
    with pytest.raises(ScanError):
        scan_bytes(bad)


def test_nesting_bound() -> None:
    scan_bytes(nested(MAX_DEPTH))
    with pytest.raises(ScanError, match="nested"):
        scan_bytes(nested(MAX_DEPTH + 1))
    with pytest.raises(ScanError):
        scan_bytes(nested(250))  # what kills pydicom with RecursionError


def test_deflate_bomb_is_refused_with_bounded_work() -> None:
    # 1 GiB of zeros in a Pixel Data value, deflated: about 1 MB compressed.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = encode(small_dataset())[:-136]  # drop the small pixel data
    parts = [compressor.compress(head + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", 1 << 30))]
    zeros = bytes(1 << 20)
    parts += [compressor.compress(zeros) for _ in range(1024)]
    parts.append(compressor.flush())
    bomb = b"".join(parts)
    assert len(bomb) < 2 << 20
    with pytest.raises(ScanError, match="inflates past"):
        scan_bytes(bomb, DEFLATED)


def test_deflated_round_trip() -> None:
    data = encode(small_dataset())
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = c.compress(data) + c.flush()
    scanned = scan_bytes(deflated, DEFLATED)
    assert scanned.dataset().PatientName == "Scan^Test"  # type: ignore[attr-defined]
    with pytest.raises(ScanError):
        scan_bytes(deflated[:-5], DEFLATED)


@pytest.mark.parametrize(
    "data",
    [
        b"",  # empty is a well-formed (empty) dataset: handled below
        b"\x08\x00\x20\x00ZZ\x02\x00ab",  # invalid VR
        b"\x10\x00\x10\x00PN\x04\x00Ab^C" + b"\x08\x00\x20\x00DA\x00\x00",  # out of order
        b"\xfe\xff\x00\xe0\x00\x00\x00\x00",  # item at top level
        b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\x08\x00\x20\x00DA\x00\x00",  # not an item
        b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x10\x00\x00\x00ab",  # fragment
    ],
)
def test_malformed(data: bytes) -> None:
    if not data:
        assert scan_bytes(data).elements == {}  # type: ignore[attr-defined]
        return
    with pytest.raises(ScanError):
        scan_bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.sampled_from([IMPLICIT, EXPLICIT]),
)
def test_mutations_parse_or_scan_error(mutations: list[tuple[int, int]], ts: str) -> None:
    data = bytearray(encode(small_dataset(), implicit=ts == IMPLICIT))
    for pos, value in mutations:
        data[pos % len(data)] = value
    with contextlib.suppress(ScanError):
        scan_bytes(bytes(data), ts)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512), st.sampled_from([IMPLICIT, EXPLICIT, DEFLATED]))
def test_random_bytes_parse_or_scan_error(data: bytes, ts: str) -> None:
    with contextlib.suppress(ScanError):
        scan_bytes(data, ts)
