"""Fragmentation under the maximum PDU length; reassembly with the PS3.7/PS3.8 ordering rules."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from dicomd.dimse.fragments import (
    UNLIMITED_CHUNK,
    CommandReceived,
    DatasetFragment,
    MessageAssembler,
    data_set_framer,
    encoded_fragments,
    encoded_message,
    fragment,
)
from dicomd.dimse.messages import (
    CCancelRQ,
    CEchoRQ,
    CFindRSP,
    CMoveRQ,
    CStoreRQ,
    CStoreRSP,
    Message,
    encode_command,
    has_dataset,
)
from dicomd.ul.codes import AbortReason, LocalProtocolError, RemoteProtocolError
from dicomd.ul.pdu import PDV, PDataTF, decode, encode

ECHO = CEchoRQ(1, "1.2.840.10008.1.1")
STORE = CStoreRQ(2, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", move_originator_ae_title="MOVER")
FIND_PENDING = CFindRSP(3, "1.2.840.10008.5.1.4.1.2.2.1", 0xFF00, has_dataset=True)

COMMAND, DATASET, LAST = 0x01, 0x00, 0x02


def pdu_length_field(pdu: PDataTF) -> int:
    raw = encode(pdu)
    length: int = struct.unpack_from(">I", raw, 2)[0]  # PS3.8 9.3.5: bytes 3-6, PDU-length
    assert length == len(raw) - 6
    return length


def chunk_for(max_pdu_length: int) -> int:
    return UNLIMITED_CHUNK if max_pdu_length == 0 else max_pdu_length - 6


# --- fragment() ----------------------------------------------------------------------------------

MAX_LENGTHS = [16384, 8192 + 7, 4096, 0]


def lengths_for(max_pdu_length: int) -> list[int]:
    chunk = chunk_for(max_pdu_length)
    return [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk + 17]


@pytest.mark.parametrize(
    ("max_pdu_length", "size"),
    [(m, n) for m in MAX_LENGTHS for n in lengths_for(m)],
)
@pytest.mark.parametrize("is_command", [True, False])
def test_fragment_fits_and_reassembles(max_pdu_length: int, size: int, is_command: bool) -> None:
    data = bytes(i % 251 for i in range(size))
    pdus = list(fragment(5, data, is_command=is_command, max_pdu_length=max_pdu_length))
    chunk = chunk_for(max_pdu_length)
    assert len(pdus) == max(1, -(-size // chunk))
    limit = max_pdu_length or UNLIMITED_CHUNK + 6
    for pdu in pdus:
        assert len(pdu.pdvs) == 1
        assert pdu_length_field(pdu) <= limit
        assert decode(encode(pdu)) == pdu
    pdvs = [pdu.pdvs[0] for pdu in pdus]
    assert b"".join(p.data for p in pdvs) == data
    assert [p.is_last for p in pdvs] == [False] * (len(pdvs) - 1) + [True]
    assert all(p.is_command is is_command for p in pdvs)
    assert all(p.context_id == 5 for p in pdvs)
    assert all(type(p.data) is bytes for p in pdvs)
    assert pdvs[-1].message_control_header == (COMMAND if is_command else DATASET) | LAST
    # every PDU but the last is filled to the limit: no wasted round trips
    assert all(pdu_length_field(pdu) == chunk + 6 for pdu in pdus[:-1])


def test_empty_data_yields_one_last_pdv() -> None:
    (pdu,) = fragment(1, b"", is_command=False, max_pdu_length=4096)
    assert pdu.pdvs == (PDV(1, LAST, b""),)


def test_smallest_usable_max_pdu_length() -> None:
    pdus = list(fragment(1, b"abc", is_command=True, max_pdu_length=7))
    assert [p.pdvs[0].data for p in pdus] == [b"a", b"b", b"c"]
    assert all(pdu_length_field(p) == 7 for p in pdus)


def test_fragment_is_lazy_and_slices_the_callers_buffer() -> None:
    buffer = bytearray(b"a" * 100)
    pdus = fragment(1, memoryview(buffer), is_command=False, max_pdu_length=56)
    assert isinstance(pdus, Iterator)
    assert next(pdus).pdvs[0].data == b"a" * 50
    buffer[50:] = b"b" * 50  # not copied up front: the next PDV sees the change
    assert next(pdus).pdvs[0].data == b"b" * 50
    with pytest.raises(StopIteration):
        next(pdus)


def test_fragment_accepts_any_contiguous_buffer() -> None:
    words = array("H", [0x0102, 0x0304, 0x0506])
    pdus = list(fragment(1, memoryview(words), is_command=False, max_pdu_length=10))
    assert b"".join(p.pdvs[0].data for p in pdus) == words.tobytes()
    assert [len(p.pdvs[0].data) for p in pdus] == [4, 2]
    assert b"".join(
        p.pdvs[0].data for p in fragment(1, bytearray(b"xyz"), is_command=True, max_pdu_length=8)
    ) == (b"xyz")


@pytest.mark.parametrize(
    ("context_id", "max_pdu_length", "match"),
    [
        (0, 4096, "context id"),
        (256, 4096, "context id"),
        (1, 6, "cannot carry"),
        (1, 1, "cannot carry"),
        (1, -5, "cannot carry"),
    ],
)
def test_fragment_checks_arguments_at_the_call(
    context_id: int, max_pdu_length: int, match: str
) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        fragment(context_id, b"x", is_command=True, max_pdu_length=max_pdu_length)  # no next()


@given(
    st.sampled_from([0, 7, 8, 100, 16384]),
    st.integers(0, 40_000),
    st.booleans(),
    st.booleans(),
    st.integers(1, 255),
)
# Whole multiples of the PDV data size (94 under 100) and one byte either side.
@example(100, 93, False, True, 1)
@example(100, 94, False, True, 1)
@example(100, 95, False, False, 1)
@example(100, 188, True, True, 7)
@example(100, 188, False, False, 7)
@example(100, 0, False, True, 1)
def test_encoded_fragments_are_the_bytes_of_fragment(
    max_pdu_length: int, size: int, is_command: bool, last: bool, context_id: int
) -> None:
    data = bytes(i % 251 for i in range(size))
    expected = b"".join(
        encode(pdu)
        for pdu in fragment(
            context_id, data, is_command=is_command, max_pdu_length=max_pdu_length, last=last
        )
    )
    pieces = encoded_fragments(
        context_id, data, is_command=is_command, max_pdu_length=max_pdu_length, last=last
    )
    assert b"".join(pieces) == expected


@given(
    st.sampled_from([0, 7, 8, 100, 16384]),
    st.integers(0, 20_000),
    st.booleans(),
    st.integers(1, 255),
)
def test_an_encoded_message_is_the_bytes_of_fragment(
    max_pdu_length: int, size: int, is_command: bool, context_id: int
) -> None:
    data = bytes(i % 251 for i in range(size))
    expected = [
        encode(pdu)
        for pdu in fragment(context_id, data, is_command=is_command, max_pdu_length=max_pdu_length)
    ]
    pieces = encoded_message(context_id, data, max_pdu_length, is_command=is_command)
    assert b"".join(pieces) == b"".join(expected)
    if len(expected) == 1 and data:
        assert pieces == expected  # one PDU: one piece
    if not is_command:
        assert data_set_framer(context_id, max_pdu_length)(data) == b"".join(expected)


@pytest.mark.parametrize(("context_id", "max_pdu_length"), [(0, 100), (256, 100), (1, 6)])
def test_encoded_fragments_check_arguments(context_id: int, max_pdu_length: int) -> None:
    with pytest.raises(LocalProtocolError):
        encoded_fragments(context_id, b"x", is_command=False, max_pdu_length=max_pdu_length)
    with pytest.raises(LocalProtocolError):
        encoded_message(context_id, b"x", max_pdu_length, is_command=False)
    with pytest.raises(LocalProtocolError):
        data_set_framer(context_id, max_pdu_length)


# --- MessageAssembler: well-formed traffic -------------------------------------------------------


def command_pdus(context_id: int, msg: Message, max_pdu_length: int = 0) -> list[PDataTF]:
    return list(
        fragment(context_id, encode_command(msg), is_command=True, max_pdu_length=max_pdu_length)
    )


def dataset_pdus(context_id: int, data: bytes, max_pdu_length: int = 0) -> list[PDataTF]:
    return list(fragment(context_id, data, is_command=False, max_pdu_length=max_pdu_length))


def feed_all(assembler: MessageAssembler, pdus: list[PDataTF]) -> list[object]:
    events: list[object] = []
    for pdu in pdus:
        events.extend(assembler.feed(pdu))
    return events


def test_command_in_one_pdv() -> None:
    assembler = MessageAssembler()
    assert assembler.feed(PDataTF((PDV(1, COMMAND | LAST, encode_command(ECHO)),))) == [
        CommandReceived(1, ECHO)
    ]
    assert not assembler.expecting_dataset


def test_command_byte_by_byte() -> None:
    assembler = MessageAssembler()
    pdus = command_pdus(3, STORE, max_pdu_length=7)
    assert len(pdus) == len(encode_command(STORE))
    for pdu in pdus[:-1]:
        assert assembler.feed(pdu) == []
        assert not assembler.expecting_dataset
    assert assembler.feed(pdus[-1]) == [CommandReceived(3, STORE)]
    assert assembler.expecting_dataset


def test_command_then_dataset_in_many_fragments() -> None:
    dataset = bytes(range(256)) * 40
    assembler = MessageAssembler()
    events = feed_all(assembler, command_pdus(7, STORE, 64))
    assert events == [CommandReceived(7, STORE)]
    received = []
    for pdu in dataset_pdus(7, dataset, 1000):
        assert assembler.expecting_dataset
        received.extend(assembler.feed(pdu))
    assert not assembler.expecting_dataset
    assert all(isinstance(e, DatasetFragment) and e.context_id == 7 for e in received)
    fragments = [e for e in received if isinstance(e, DatasetFragment)]
    assert b"".join(f.data for f in fragments) == dataset
    assert [f.is_last for f in fragments] == [False] * (len(fragments) - 1) + [True]


def test_dataset_fragments_are_passed_through_not_copied() -> None:
    assembler = MessageAssembler()
    feed_all(assembler, command_pdus(1, STORE))
    pdv = PDV(1, DATASET, b"x" * 1000)
    (event,) = assembler.feed(PDataTF((pdv,)))
    assert isinstance(event, DatasetFragment)
    assert event.data is pdv.data


def test_several_pdvs_in_one_pdu_keep_their_order() -> None:
    command = encode_command(FIND_PENDING)
    pdu = PDataTF(
        (
            PDV(9, COMMAND, command[:10]),
            PDV(9, COMMAND | LAST, command[10:]),
            PDV(9, DATASET, b"ab"),
            PDV(9, DATASET | LAST, b"cd"),
            PDV(9, COMMAND | LAST, encode_command(ECHO)),
        )
    )
    assert MessageAssembler().feed(pdu) == [
        CommandReceived(9, FIND_PENDING),
        DatasetFragment(9, b"ab", False),
        DatasetFragment(9, b"cd", True),
        CommandReceived(9, ECHO),
    ]


def test_messages_without_dataset_back_to_back_on_different_contexts() -> None:
    assembler = MessageAssembler()
    rsp = CStoreRSP(2, None, "1.2.3.4", 0)
    assert feed_all(
        assembler, command_pdus(1, ECHO) + command_pdus(3, rsp) + command_pdus(5, CCancelRQ(2))
    ) == [
        CommandReceived(1, ECHO),
        CommandReceived(3, rsp),
        CommandReceived(5, CCancelRQ(2)),
    ]
    assert not assembler.expecting_dataset


def test_empty_dataset_ends_the_message() -> None:
    assembler = MessageAssembler()
    feed_all(assembler, command_pdus(1, STORE))
    assert assembler.feed(PDataTF((PDV(1, DATASET | LAST, b""),))) == [
        DatasetFragment(1, b"", True)
    ]
    assert not assembler.expecting_dataset
    assert feed_all(assembler, command_pdus(1, ECHO)) == [CommandReceived(1, ECHO)]


MOVE = CMoveRQ(4, "1.2.840.10008.5.1.4.1.2.2.2", "DEST")
ROUND_TRIP_MESSAGES: list[Message] = [ECHO, STORE, FIND_PENDING, MOVE, CCancelRQ(4)]


@given(
    st.lists(
        st.tuples(st.sampled_from(ROUND_TRIP_MESSAGES), st.binary(max_size=300)),
        min_size=1,
        max_size=4,
    ),
    st.integers(7, 120),
    st.integers(1, 5),
)
def test_fragment_then_assemble_round_trip(
    messages: list[tuple[Message, bytes]], max_pdu_length: int, pdvs_per_pdu: int
) -> None:
    # Fragment several messages, then regroup the PDVs several to a P-DATA-TF (as peers may).
    expected: list[object] = []
    pdvs: list[PDV] = []
    for n, (msg, dataset) in enumerate(messages):
        context_id = 2 * n + 1
        pdvs += [p.pdvs[0] for p in command_pdus(context_id, msg, max_pdu_length)]
        expected.append(CommandReceived(context_id, msg))
        if has_dataset(msg):
            pdvs += [p.pdvs[0] for p in dataset_pdus(context_id, dataset, max_pdu_length)]
            expected.append(dataset)
    assembler = MessageAssembler()
    events = []
    for start in range(0, len(pdvs), pdvs_per_pdu):
        events += assembler.feed(PDataTF(tuple(pdvs[start : start + pdvs_per_pdu])))
    assert not assembler.expecting_dataset
    # merge consecutive data set fragments so the comparison is independent of the cut
    merged: list[object] = []
    for event in events:
        if isinstance(event, DatasetFragment):
            if merged and isinstance(merged[-1], bytearray):
                merged[-1] += event.data
            else:
                merged.append(bytearray(event.data))
        else:
            merged.append(event)
    assert merged == expected


# --- MessageAssembler: violations ----------------------------------------------------------------


def assert_violation(
    assembler: MessageAssembler, pdus: list[PDataTF], reason: AbortReason, match: str
) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        feed_all(assembler, pdus)
    assert info.value.reason is reason
    return info.value


def test_dataset_before_any_command() -> None:
    assert_violation(
        MessageAssembler(),
        dataset_pdus(1, b"data"),
        AbortReason.UNEXPECTED_PDU_PARAMETER,
        "without a command",
    )


def test_dataset_before_the_last_command_fragment() -> None:
    command = encode_command(STORE)
    assert_violation(
        MessageAssembler(),
        [PDataTF((PDV(1, COMMAND, command[:20]),)), PDataTF((PDV(1, DATASET, b"x"),))],
        AbortReason.UNEXPECTED_PDU_PARAMETER,
        "before the last fragment of its command",
    )


def test_command_while_dataset_expected() -> None:
    assembler = MessageAssembler()
    feed_all(assembler, [*command_pdus(1, STORE), PDataTF((PDV(1, DATASET, b"part"),))])
    assert assembler.expecting_dataset
    assert_violation(
        assembler,
        command_pdus(1, ECHO),
        AbortReason.UNEXPECTED_PDU_PARAMETER,
        "data set is still expected",
    )


def test_command_while_dataset_expected_before_any_fragment() -> None:
    assembler = MessageAssembler()
    feed_all(assembler, command_pdus(1, STORE))
    assert_violation(
        assembler, command_pdus(1, STORE), AbortReason.UNEXPECTED_PDU_PARAMETER, "still expected"
    )


def test_context_id_changing_inside_command() -> None:
    command = encode_command(ECHO)
    assert_violation(
        MessageAssembler(),
        [PDataTF((PDV(1, COMMAND, command[:8]),)), PDataTF((PDV(3, COMMAND | LAST, command[8:]),))],
        AbortReason.UNEXPECTED_PDU_PARAMETER,
        "changed from 1 to 3",
    )


def test_context_id_changing_between_command_and_dataset() -> None:
    assembler = MessageAssembler()
    feed_all(assembler, command_pdus(1, STORE))
    assert_violation(
        assembler, dataset_pdus(3, b"x"), AbortReason.UNEXPECTED_PDU_PARAMETER, "came on 1"
    )


def test_context_id_changing_inside_dataset() -> None:
    assembler = MessageAssembler()
    feed_all(assembler, [*command_pdus(1, STORE), PDataTF((PDV(1, DATASET, b"a"),))])
    assert_violation(
        assembler, dataset_pdus(5, b"b"), AbortReason.UNEXPECTED_PDU_PARAMETER, "context 5"
    )


@pytest.mark.parametrize("msg", [ECHO, CStoreRSP(1, None, None, 0), CCancelRQ(1)])
def test_dataset_for_a_command_without_one(msg: Message) -> None:
    assembler = MessageAssembler()
    feed_all(assembler, command_pdus(1, msg))
    assert_violation(
        assembler,
        dataset_pdus(1, b"x"),
        AbortReason.UNEXPECTED_PDU_PARAMETER,
        "without a command announcing",
    )


def test_dataset_after_the_last_dataset_fragment() -> None:
    assembler = MessageAssembler()
    feed_all(assembler, command_pdus(1, STORE) + dataset_pdus(1, b"whole"))
    assert_violation(
        assembler, dataset_pdus(1, b"extra"), AbortReason.UNEXPECTED_PDU_PARAMETER, "without"
    )


def test_command_exactly_at_the_cap_is_accepted() -> None:
    command = encode_command(ECHO)
    assembler = MessageAssembler(max_command_length=len(command))
    assert feed_all(assembler, command_pdus(1, ECHO, 7 + 10)) == [CommandReceived(1, ECHO)]


def test_command_longer_than_the_cap_raises_before_buffering_past_it() -> None:
    assembler = MessageAssembler(max_command_length=100)
    assert assembler.feed(PDataTF((PDV(1, COMMAND, b"\x00" * 60),))) == []
    assert_violation(
        assembler,
        [PDataTF((PDV(1, COMMAND, b"\x00" * 41),))],
        AbortReason.INVALID_PDU_PARAMETER_VALUE,
        "longer than 100",
    )
    assert len(assembler._command) <= 100  # white-box: the 41 bytes were never appended


def test_one_huge_command_pdv_is_refused_whole() -> None:
    assembler = MessageAssembler()
    assert_violation(
        assembler,
        [PDataTF((PDV(1, COMMAND, b"\x00" * (65536 + 1)),))],
        AbortReason.INVALID_PDU_PARAMETER_VALUE,
        "longer than 65536",
    )
    assert len(assembler._command) == 0  # white-box: nothing was buffered


def test_many_small_command_pdvs_hit_the_cap() -> None:
    assembler = MessageAssembler(max_command_length=1000)
    pdus = [PDataTF((PDV(1, COMMAND, b"\x00" * 10),))] * 101
    assert_violation(assembler, pdus, AbortReason.INVALID_PDU_PARAMETER_VALUE, "longer than")
    assert len(assembler._command) == 1000


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"\x00\x00\x00", "truncated element header"),
        (encode_command(ECHO)[:-1], "declares"),
        (b"", "Command Field"),
    ],
)
def test_undecodable_command(raw: bytes, match: str) -> None:
    error = assert_violation(
        MessageAssembler(),
        [PDataTF((PDV(1, COMMAND | LAST, raw),))],
        AbortReason.INVALID_PDU_PARAMETER_VALUE,
        "bad command set: .*" + match,
    )
    assert isinstance(error.__cause__, ValueError)


def test_pieces_of_one_message_carry_the_last_bit_only_at_the_end() -> None:
    pieces = [b"a" * 10_000, b"", b"b" * 5, b"c" * 20_000]
    pdus = [
        pdu
        for i, piece in enumerate(pieces)
        for pdu in fragment(
            1, piece, is_command=False, max_pdu_length=4096, last=i == len(pieces) - 1
        )
    ]
    pdvs = [pdu.pdvs[0] for pdu in pdus]
    assert [p.is_last for p in pdvs] == [False] * (len(pdvs) - 1) + [True]
    assert b"".join(p.data for p in pdvs) == b"".join(pieces)
    assert all(len(p.data) + 6 <= 4096 for p in pdvs)
