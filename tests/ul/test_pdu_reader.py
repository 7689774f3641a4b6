"""Tests for dicomd.ul.reader.PDUReader: feeding patterns, the length guard, errors."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomd.ul.codes import (
    AbortReason,
    AbortSource,
    ContextResult,
    RejectResult,
    RejectSource,
    RemoteProtocolError,
)
from dicomd.ul.items import (
    ImplementationClassUID,
    MaximumLength,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
)
from dicomd.ul.pdu import (
    PDU,
    PDV,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
    encode,
)
from dicomd.ul.reader import PDUReader

LIMIT = 1 << 20
USER_INFO = UserInformation((MaximumLength(16384), ImplementationClassUID("1.2.3.4")))
SAMPLES: list[PDU] = [
    AssociateRQ(
        "ANY-SCP",
        "ECHOSCU",
        "1.2.840.10008.3.1.1.1",
        (PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),),
        USER_INFO,
    ),
    AssociateAC(
        "ANY-SCP",
        "ECHOSCU",
        "1.2.840.10008.3.1.1.1",
        (PresentationContextAC(1, ContextResult.ACCEPTANCE, "1.2.840.10008.1.2"),),
        USER_INFO,
    ),
    AssociateRJ(RejectResult.REJECTED_TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION, 1),
    PDataTF((PDV(1, 0x03, b"\x00" * 70), PDV(3, 0x00, b"payload"))),
    ReleaseRQ(),
    ReleaseRP(),
    Abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED),
]
SAMPLE_IDS = [type(pdu).__name__ for pdu in SAMPLES]


def drain(reader: PDUReader) -> list[PDU]:
    out: list[PDU] = []
    while (pdu := reader.next_pdu()) is not None:
        out.append(pdu)
    return out


@pytest.mark.parametrize("pdu", SAMPLES, ids=SAMPLE_IDS)
def test_fed_whole(pdu: PDU) -> None:
    reader = PDUReader(LIMIT)
    assert reader.next_pdu() is None
    reader.feed(encode(pdu))
    assert reader.next_pdu() == pdu
    assert reader.next_pdu() is None
    assert reader.buffered == 0


@pytest.mark.parametrize("pdu", SAMPLES, ids=SAMPLE_IDS)
def test_fed_one_byte_at_a_time(pdu: PDU) -> None:
    data = encode(pdu)
    reader = PDUReader(LIMIT)
    for i in range(len(data) - 1):
        reader.feed(data[i : i + 1])
        assert reader.next_pdu() is None
        assert reader.buffered == i + 1
    reader.feed(data[-1:])
    assert reader.next_pdu() == pdu
    assert reader.buffered == 0


@pytest.mark.parametrize("pdu", SAMPLES, ids=SAMPLE_IDS)
def test_trailing_bytes_stay_buffered(pdu: PDU) -> None:
    following = encode(ReleaseRQ())
    reader = PDUReader(LIMIT)
    reader.feed(encode(pdu) + following[:3])
    assert reader.next_pdu() == pdu
    assert reader.next_pdu() is None
    assert reader.buffered == 3
    reader.feed(following[3:])
    assert reader.next_pdu() == ReleaseRQ()
    assert reader.buffered == 0


def test_several_pdus_in_one_chunk() -> None:
    reader = PDUReader(LIMIT)
    reader.feed(b"".join(encode(pdu) for pdu in SAMPLES))
    assert drain(reader) == SAMPLES
    assert reader.buffered == 0


def test_all_pdus_one_byte_at_a_time() -> None:
    stream = b"".join(encode(pdu) for pdu in SAMPLES)
    reader = PDUReader(LIMIT)
    out: list[PDU] = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        out.extend(drain(reader))
    assert out == SAMPLES


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=40))
def test_any_chunking_gives_the_same_pdus(cuts: list[int]) -> None:
    stream = b"".join(encode(pdu) for pdu in SAMPLES)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    reader = PDUReader(LIMIT)
    out: list[PDU] = []
    for start, end in itertools.pairwise(bounds):
        reader.feed(stream[start:end])
        out.extend(drain(reader))
    assert out == SAMPLES
    assert reader.buffered == 0


def test_accepts_memoryview_and_bytearray_chunks() -> None:
    data = encode(SAMPLES[3])
    reader = PDUReader(LIMIT)
    reader.feed(bytearray(data[:10]))
    reader.feed(memoryview(data)[10:])
    assert reader.next_pdu() == SAMPLES[3]


def test_pdv_data_does_not_alias_the_buffer() -> None:
    first = PDataTF((PDV(1, 0x00, b"A" * 100),))
    reader = PDUReader(LIMIT)
    reader.feed(encode(first) + encode(ReleaseRQ())[:2])
    pdu = reader.next_pdu()
    assert isinstance(pdu, PDataTF)
    assert type(pdu.pdvs[0].data) is bytes
    reader.feed(encode(ReleaseRQ())[2:] + encode(first))
    assert drain(reader) == [ReleaseRQ(), first]
    assert pdu.pdvs[0].data == b"A" * 100


# --- the length guard --------------------------------------------------------------------------


def test_huge_length_raises_after_the_header_alone() -> None:
    reader = PDUReader(16384)
    reader.feed(b"\x04\x00\xff\xff\xff")
    assert reader.next_pdu() is None  # 5 bytes: the length is not known yet
    reader.feed(b"\xf0")
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.reason == AbortReason.INVALID_PDU_PARAMETER_VALUE
    assert reader.buffered <= 6


def test_huge_length_with_a_chunk_of_body_buffers_no_more() -> None:
    reader = PDUReader(16384)
    reader.feed(b"\x04\x00\xff\xff\xff\xf0" + bytes(4096))
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.reason == AbortReason.INVALID_PDU_PARAMETER_VALUE
    assert reader.buffered <= 6 + 4096
    reader.feed(bytes(1 << 16))  # the peer keeps sending; nothing more is kept
    assert reader.buffered <= 6 + 4096


def test_limit_is_on_the_pdu_length_field() -> None:
    pdu = PDataTF((PDV(1, 0x02, bytes(100)),))
    data = encode(pdu)
    length = len(data) - 6
    exact = PDUReader(length)
    exact.feed(data)
    assert exact.next_pdu() == pdu
    too_small = PDUReader(length - 1)
    too_small.feed(data[:6])
    with pytest.raises(RemoteProtocolError):
        too_small.next_pdu()


def test_limit_can_be_raised_after_construction() -> None:
    big = PDataTF((PDV(1, 0x02, bytes(50_000)),))
    reader = PDUReader(16384)
    reader.max_pdu_length = 65536
    reader.feed(encode(big))
    assert reader.next_pdu() == big


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x42, 0xFF])
def test_unknown_pdu_type_raises_as_soon_as_the_header_is_in(pdu_type: int) -> None:
    reader = PDUReader(LIMIT)
    reader.feed(bytes([pdu_type, 0, 0, 0, 0x10]))
    assert reader.next_pdu() is None
    reader.feed(b"\x00")  # header complete; the 4096-byte body never comes
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.reason == AbortReason.UNRECOGNIZED_PDU


def test_unknown_type_is_judged_before_the_length() -> None:
    reader = PDUReader(16)
    reader.feed(b"\x09\x00\xff\xff\xff\xff")
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.reason == AbortReason.UNRECOGNIZED_PDU


def test_malformed_body_raises_with_its_reason() -> None:
    bad = b"\x04\x00\x00\x00\x00\x07" + b"\x00\x00\x00\x04\x01\x03\x00"  # PDV past its PDU
    reader = PDUReader(LIMIT)
    reader.feed(encode(ReleaseRQ()) + bad + encode(ReleaseRP()))
    assert reader.next_pdu() == ReleaseRQ()
    with pytest.raises(RemoteProtocolError) as info:
        reader.next_pdu()
    assert info.value.reason == AbortReason.INVALID_PDU_PARAMETER_VALUE


def test_first_error_is_final() -> None:
    reader = PDUReader(LIMIT)
    reader.feed(b"\x04\x00\x00\x00\x00\x00")  # P-DATA-TF without PDVs
    with pytest.raises(RemoteProtocolError) as first:
        reader.next_pdu()
    reader.feed(encode(ReleaseRQ()))  # must not raise BufferError or resync
    with pytest.raises(RemoteProtocolError) as second:
        reader.next_pdu()
    assert second.value is first.value
    assert reader.buffered == 0


# --- buffering cost ----------------------------------------------------------------------------


def test_large_pdu_in_small_chunks() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB
    pdu = PDataTF((PDV(1, 0x02, payload),))
    data = encode(pdu)
    reader = PDUReader(4 << 20)
    for start in range(0, len(data), 1000):
        reader.feed(data[start : start + 1000])
        if start + 1000 < len(data):
            assert reader.next_pdu() is None
    assert reader.next_pdu() == pdu
    assert reader.buffered == 0


def test_consumed_bytes_are_released_while_the_stream_never_pauses() -> None:
    # The buffer never empties (each feed carries the start of the next PDU), so memory stays
    # bounded only if consumed bytes are dropped. White-box: looks at the private buffer size.
    unit = encode(PDataTF((PDV(1, 0x00, bytes(4000)),)))
    stream = unit * 400
    reader = PDUReader(LIMIT)
    largest = 0
    count = 0
    for start in range(0, len(stream), 4001):
        reader.feed(stream[start : start + 4001])
        count += len(drain(reader))
        largest = max(largest, len(reader._buffer))
    assert count == 400
    assert largest < 2 * 64 * 1024 + 2 * len(unit)


def test_length_field_is_big_endian() -> None:
    # 00 00 01 00 is 256, not 65536: the guard would pass a little-endian misreading.
    reader = PDUReader(300)
    body = struct.pack(">LBB", 252, 1, 2) + bytes(250)
    reader.feed(b"\x04\x00\x00\x00\x01\x00" + body)
    pdu = reader.next_pdu()
    assert isinstance(pdu, PDataTF)
    assert len(pdu.pdvs[0].data) == 250
