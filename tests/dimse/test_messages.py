"""Command set codec (PS3.7 9.3, Annex E): golden bytes, oracles, every decoder error, fuzzing.

Oracles: pydicom's reader (an independent Implicit VR Little Endian parser with its own dictionary)
and pynetdicom's DIMSE message classes (an independent implementation of PS3.7 9.3). Neither is
imported by dicomd/.
"""

from __future__ import annotations

import dataclasses
import struct
from io import BytesIO
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pynetdicom import dimse_messages as pnd_messages
from pynetdicom import dimse_primitives as pnd_primitives
from pynetdicom.dsutils import encode as pnd_encode
from pynetdicom.pdu_primitives import P_DATA

from dicomd.dimse.messages import (
    DATASET_PRESENT,
    MAX_COMMAND_LENGTH,
    NO_DATASET,
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CFindRQ,
    CFindRSP,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CommandField,
    CStoreRQ,
    CStoreRSP,
    DIMSEDecodeError,
    Message,
    Priority,
    command_field,
    decode_command,
    encode_command,
    has_dataset,
    parse_command_elements,
)
from dicomd.ul.codes import LocalProtocolError

VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"


def element(tag: int, value: bytes) -> bytes:
    """One Implicit VR LE element, written by hand (no padding added)."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def command(*elements: bytes, group_length: int | None = None) -> bytes:
    body = b"".join(elements)
    length = len(body) if group_length is None else group_length
    return element(0x0000_0000, struct.pack("<I", length)) + body


# --- Golden bytes --------------------------------------------------------------------------------

# C-ECHO-RQ exactly as DCMTK's echoscu sends it (first message of an association: Message ID 1).
ECHO_RQ_DCMTK = bytes.fromhex(
    "0000 0000 04000000 38000000"  # (0000,0000) UL, length 4: group length 56
    "0000 0200 12000000"  # (0000,0002) UI, length 18: Affected SOP Class UID
    "312e322e3834302e31303030382e312e3100"  # "1.2.840.10008.1.1" + NUL pad to even
    "0000 0001 02000000 3000"  # (0000,0100) US: Command Field 0x0030 C-ECHO-RQ
    "0000 1001 02000000 0100"  # (0000,0110) US: Message ID 1
    "0000 0008 02000000 0101"  # (0000,0800) US: Command Data Set Type 0x0101, no data set
)
ECHO_RQ = CEchoRQ(message_id=1, affected_sop_class_uid=VERIFICATION)

ECHO_RSP_GOLDEN = bytes.fromhex(
    "0000 0000 04000000 42000000"  # (0000,0000) UL: group length 66
    "0000 0200 12000000 312e322e3834302e31303030382e312e3100"  # (0000,0002) UI Verification
    "0000 0001 02000000 3080"  # (0000,0100) US: 0x8030 C-ECHO-RSP
    "0000 2001 02000000 0100"  # (0000,0120) US: Message ID Being Responded To 1
    "0000 0008 02000000 0101"  # (0000,0800) US: no data set
    "0000 0009 02000000 0000"  # (0000,0900) US: Status 0x0000 Success
)
ECHO_RSP = CEchoRSP(1, VERIFICATION, 0x0000)

STORE_RQ_GOLDEN = bytes.fromhex(
    "0000 0000 04000000 76000000"  # (0000,0000) UL: group length 118
    "0000 0200 1a000000"  # (0000,0002) UI, 26 bytes: CT Image Storage (25 chars + NUL)
    "312e322e3834302e31303030382e352e312e342e312e312e3200"
    "0000 0001 02000000 0100"  # (0000,0100) US: 0x0001 C-STORE-RQ
    "0000 1001 02000000 0700"  # (0000,0110) US: Message ID 7
    "0000 0007 02000000 0100"  # (0000,0700) US: Priority HIGH
    "0000 0008 02000000 0100"  # (0000,0800) US: 0x0001, a data set follows
    "0000 0010 0a000000 312e322e332e342e3500"  # (0000,1000) UI "1.2.3.4.5" + NUL
    "0000 3010 08000000 4d4f564553435520"  # (0000,1030) AE "MOVESCU" + space
    "0000 3110 02000000 0300"  # (0000,1031) US: Move Originator Message ID 3
)
STORE_RQ = CStoreRQ(7, CT_IMAGE, "1.2.3.4.5", Priority.HIGH, "MOVESCU", 3)

FIND_RSP_PENDING_GOLDEN = bytes.fromhex(
    "0000 0000 04000000 4c000000"  # (0000,0000) UL: group length 76
    "0000 0200 1c000000"  # (0000,0002) UI, 28 bytes: Study Root FIND (27 chars + NUL)
    "312e322e3834302e31303030382e352e312e342e312e322e322e3100"
    "0000 0001 02000000 2080"  # (0000,0100) US: 0x8020 C-FIND-RSP
    "0000 2001 02000000 0300"  # (0000,0120) US: responding to Message ID 3
    "0000 0008 02000000 0100"  # (0000,0800) US: 0x0001, the matching identifier follows
    "0000 0009 02000000 00ff"  # (0000,0900) US: Status 0xFF00 Pending
)
FIND_RSP_PENDING = CFindRSP(3, STUDY_FIND, 0xFF00, has_dataset=True)

MOVE_RSP_COUNTS_GOLDEN = bytes.fromhex(
    "0000 0000 04000000 74000000"  # (0000,0000) UL: group length 116
    "0000 0200 1c000000"  # (0000,0002) UI, 28 bytes: Study Root MOVE
    "312e322e3834302e31303030382e352e312e342e312e322e322e3200"
    "0000 0001 02000000 2180"  # (0000,0100) US: 0x8021 C-MOVE-RSP
    "0000 2001 02000000 0500"  # (0000,0120) US: responding to Message ID 5
    "0000 0008 02000000 0101"  # (0000,0800) US: no data set
    "0000 0009 02000000 00ff"  # (0000,0900) US: Status 0xFF00 Pending
    "0000 2010 02000000 0300"  # (0000,1020) US: 3 remaining
    "0000 2110 02000000 0200"  # (0000,1021) US: 2 completed
    "0000 2210 02000000 0100"  # (0000,1022) US: 1 failed
    "0000 2310 02000000 0000"  # (0000,1023) US: 0 warning
)
MOVE_RSP_COUNTS = CMoveRSP(
    5, STUDY_MOVE, 0xFF00, False, remaining=3, completed=2, failed=1, warning=0
)

GOLDEN: list[tuple[Message, bytes]] = [
    (ECHO_RQ, ECHO_RQ_DCMTK),
    (ECHO_RSP, ECHO_RSP_GOLDEN),
    (STORE_RQ, STORE_RQ_GOLDEN),
    (FIND_RSP_PENDING, FIND_RSP_PENDING_GOLDEN),
    (MOVE_RSP_COUNTS, MOVE_RSP_COUNTS_GOLDEN),
]


@pytest.mark.parametrize(("msg", "golden"), GOLDEN)
def test_golden_encode(msg: Message, golden: bytes) -> None:
    assert encode_command(msg) == golden


@pytest.mark.parametrize(("msg", "golden"), GOLDEN)
def test_golden_decode(msg: Message, golden: bytes) -> None:
    assert decode_command(golden) == msg
    assert decode_command(memoryview(golden)) == msg
    assert decode_command(bytearray(golden)) == msg


@pytest.mark.parametrize(("msg", "golden"), GOLDEN)
def test_golden_group_length_is_exact(msg: Message, golden: bytes) -> None:
    (length,) = struct.unpack_from("<I", golden, 8)
    assert length == len(golden) - 12


# --- Samples covering every message type and every optional field --------------------------------

SAMPLES: list[Message] = [
    ECHO_RQ,
    CEchoRQ(65535, VERIFICATION),
    ECHO_RSP,
    CEchoRSP(2, VERIFICATION, 0x0122, error_comment="SOP class not supported"),
    CEchoRSP(3, None, 0x0000),
    STORE_RQ,
    CStoreRQ(1, CT_IMAGE, "1.2.3"),
    CStoreRQ(2, CT_IMAGE, "1.2.3.44", Priority.LOW),
    CStoreRSP(7, CT_IMAGE, "1.2.3.4.5", 0x0000),
    CStoreRSP(8, None, None, 0xA700, error_comment="disk full"),
    CStoreRSP(9, CT_IMAGE, "1.2.3", 0xB000, "coerced", (0x00100010, 0x00100020)),
    CFindRQ(3, STUDY_FIND),
    CFindRQ(4, STUDY_FIND, Priority.HIGH),
    FIND_RSP_PENDING,
    CFindRSP(3, STUDY_FIND, 0x0000, has_dataset=False),
    CFindRSP(3, STUDY_FIND, 0xA900, False, "bad identifier", (0x00080052,)),
    CGetRQ(10, STUDY_GET),
    CGetRQ(11, STUDY_GET, Priority.LOW),
    CGetRSP(10, STUDY_GET, 0xFF00, False, 4, 1, 0, 0),
    CGetRSP(10, STUDY_GET, 0xB000, True, None, 3, 2, 0, "some failed"),
    CGetRSP(10, None, 0xA702, False, error_comment="no resources"),
    CMoveRQ(12, STUDY_MOVE, "STORESCP"),
    CMoveRQ(13, STUDY_MOVE, "ODD", Priority.HIGH),
    MOVE_RSP_COUNTS,
    CMoveRSP(12, STUDY_MOVE, 0xA801, False, error_comment="unknown destination"),
    CMoveRSP(12, STUDY_MOVE, 0x0000, False, 0, 5, 0, 0),
    CMoveRSP(12, STUDY_MOVE, 0xA900, False, offending_element=(0x00080052, 0x0020000D)),
    CCancelRQ(3),
]


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == {
        CEchoRQ,
        CEchoRSP,
        CStoreRQ,
        CStoreRSP,
        CFindRQ,
        CFindRSP,
        CGetRQ,
        CGetRSP,
        CMoveRQ,
        CMoveRSP,
        CCancelRQ,
    }


@pytest.mark.parametrize("msg", SAMPLES)
def test_sample_round_trip(msg: Message) -> None:
    assert decode_command(encode_command(msg)) == msg


# --- Oracle 1: pydicom reads what we write -------------------------------------------------------

KEYWORDS = {
    "message_id": "MessageID",
    "message_id_being_responded_to": "MessageIDBeingRespondedTo",
    "affected_sop_class_uid": "AffectedSOPClassUID",
    "affected_sop_instance_uid": "AffectedSOPInstanceUID",
    "priority": "Priority",
    "move_originator_ae_title": "MoveOriginatorApplicationEntityTitle",
    "move_originator_message_id": "MoveOriginatorMessageID",
    "status": "Status",
    "error_comment": "ErrorComment",
    "offending_element": "OffendingElement",
    "remaining": "NumberOfRemainingSuboperations",
    "completed": "NumberOfCompletedSuboperations",
    "failed": "NumberOfFailedSuboperations",
    "warning": "NumberOfWarningSuboperations",
    "move_destination": "MoveDestination",
}


def fields_of(msg: Message) -> dict[str, Any]:
    return {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}


@pytest.mark.parametrize("msg", SAMPLES)
def test_pydicom_reads_our_encoding(msg: Message) -> None:
    data = encode_command(msg)
    ds = read_dataset(BytesIO(data), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(data) - 12
    assert ds.CommandField == command_field(msg)
    assert (ds.CommandDataSetType != NO_DATASET) == has_dataset(msg)
    for attr, value in fields_of(msg).items():
        if attr == "has_dataset":
            continue
        keyword = KEYWORDS[attr]
        if value is None:
            assert keyword not in ds, keyword
        elif attr == "offending_element":
            got = ds[keyword].value
            got = list(got) if ds[keyword].VM > 1 else [got]
            assert [int(t) for t in got] == list(value)
        else:
            assert ds[keyword].value == value, keyword
    # our element order is ascending on the wire (pydicom sorts on read, so check the bytes)
    tags = list(parse_command_elements(data))
    assert tags == sorted(tags)
    # every value has even length (PS3.5 7.1.1)
    assert all(len(v) % 2 == 0 for v in parse_command_elements(data).values())


# --- Oracle 2: pynetdicom, both directions -------------------------------------------------------

PND_MESSAGE = {
    CEchoRQ: pnd_messages.C_ECHO_RQ,
    CEchoRSP: pnd_messages.C_ECHO_RSP,
    CStoreRQ: pnd_messages.C_STORE_RQ,
    CStoreRSP: pnd_messages.C_STORE_RSP,
    CFindRQ: pnd_messages.C_FIND_RQ,
    CFindRSP: pnd_messages.C_FIND_RSP,
    CGetRQ: pnd_messages.C_GET_RQ,
    CGetRSP: pnd_messages.C_GET_RSP,
    CMoveRQ: pnd_messages.C_MOVE_RQ,
    CMoveRSP: pnd_messages.C_MOVE_RSP,
    CCancelRQ: pnd_messages.C_CANCEL_RQ,
}
PND_PRIMITIVE = {
    CEchoRQ: pnd_primitives.C_ECHO,
    CEchoRSP: pnd_primitives.C_ECHO,
    CStoreRQ: pnd_primitives.C_STORE,
    CStoreRSP: pnd_primitives.C_STORE,
    CFindRQ: pnd_primitives.C_FIND,
    CFindRSP: pnd_primitives.C_FIND,
    CGetRQ: pnd_primitives.C_GET,
    CGetRSP: pnd_primitives.C_GET,
    CMoveRQ: pnd_primitives.C_MOVE,
    CMoveRSP: pnd_primitives.C_MOVE,
    CCancelRQ: pnd_primitives.C_CANCEL,
}
PND_DATASET_ATTR: dict[type, str] = {CStoreRQ: "DataSet"}


def pynetdicom_encode(msg: Message) -> bytes:
    primitive: Any = PND_PRIMITIVE[type(msg)]()
    for attr, value in fields_of(msg).items():
        if attr == "has_dataset":
            continue
        if value is not None:
            setattr(primitive, KEYWORDS[attr], list(value) if isinstance(value, tuple) else value)
    if has_dataset(msg):
        setattr(primitive, PND_DATASET_ATTR.get(type(msg), "Identifier"), BytesIO(b"\x00\x00"))
    message = PND_MESSAGE[type(msg)]()
    message.primitive_to_message(primitive)
    data = pnd_encode(message.command_set, True, True)
    assert data is not None
    return data


def pynetdicom_decode(data: bytes) -> Any:
    p_data: Any = P_DATA()
    p_data.presentation_data_value_list = [[1, b"\x03" + data]]  # last command fragment
    message = pnd_messages.DIMSEMessage()
    message.decode_msg(p_data)
    return message, message.message_to_primitive()


@pytest.mark.parametrize("msg", SAMPLES)
def test_pynetdicom_decodes_our_encoding(msg: Message) -> None:
    message, primitive = pynetdicom_decode(encode_command(msg))
    assert type(message) is PND_MESSAGE[type(msg)]
    assert (message.command_set.CommandDataSetType != 0x0101) == has_dataset(msg)
    for attr, value in fields_of(msg).items():
        if attr == "has_dataset":
            continue
        got = getattr(primitive, KEYWORDS[attr])
        if attr == "offending_element" and got is not None:
            got = tuple(int(t) for t in ([got] if isinstance(got, int) else got))
        assert got == value, attr


@pytest.mark.parametrize("msg", SAMPLES)
def test_we_decode_pynetdicom_encoding(msg: Message) -> None:
    assert decode_command(pynetdicom_encode(msg)) == msg


@pytest.mark.parametrize("msg", SAMPLES)
def test_byte_identical_to_pynetdicom(msg: Message) -> None:
    # Same element set, same order, same padding, same Command Data Set Type values.
    assert encode_command(msg) == pynetdicom_encode(msg)


def test_dataset_present_value_matches_dcmtk_and_pynetdicom() -> None:
    assert DATASET_PRESENT == 0x0001
    assert NO_DATASET == 0x0101


# --- Decoder tolerance ---------------------------------------------------------------------------

ECHO_CLASS = element(0x0000_0002, b"1.2.840.10008.1.1\x00")


def echo_rq(
    *extra: bytes, dataset_type: int = NO_DATASET, group_length: int | None = None
) -> bytes:
    return command(
        ECHO_CLASS,
        element(0x0000_0100, us(0x0030)),
        element(0x0000_0110, us(1)),
        element(0x0000_0800, us(dataset_type)),
        *extra,
        group_length=group_length,
    )


def store_rq(*, drop: int = -1, dataset_type: int = 0x0001) -> bytes:
    parts = {
        0x0000_0002: element(0x0000_0002, b"1.2.840.10008.5.1.4.1.1.2\x00"),
        0x0000_0100: element(0x0000_0100, us(0x0001)),
        0x0000_0110: element(0x0000_0110, us(9)),
        0x0000_0800: element(0x0000_0800, us(dataset_type)),
        0x0000_1000: element(0x0000_1000, b"1.2.3.4\x00"),
    }
    parts.pop(drop, None)
    return command(*parts.values())


@pytest.mark.parametrize("group_length", [0, 1, 56 + 100, 0xFFFFFFFF])
def test_wrong_group_length_is_ignored(group_length: int) -> None:
    assert decode_command(echo_rq(group_length=group_length)) == ECHO_RQ


def test_missing_group_length_is_tolerated() -> None:
    assert decode_command(echo_rq()[12:]) == ECHO_RQ


def test_priority_absent_means_medium() -> None:
    msg = decode_command(store_rq())
    assert isinstance(msg, CStoreRQ)
    assert msg.priority is Priority.MEDIUM
    assert msg == CStoreRQ(9, CT_IMAGE, "1.2.3.4")


def test_unknown_priority_value_is_kept() -> None:
    data = encode_command(CFindRQ(1, STUDY_FIND, Priority(7)))
    msg = decode_command(data)
    assert isinstance(msg, CFindRQ)
    assert msg.priority == 7
    assert not msg.priority.known


@pytest.mark.parametrize("value", [0x0000, 0x0001, 0x0102, 0xFFFE])
def test_any_dataset_type_but_0101_means_present(value: int) -> None:
    msg = decode_command(store_rq(dataset_type=value))
    assert has_dataset(msg)


def test_unknown_and_retired_elements_are_skipped() -> None:
    data = echo_rq(
        element(0x0000_0001, struct.pack("<I", 1234)),  # retired Command Length to End
        element(0x0000_4000, b"RETIRED "),  # retired Command Recognition Code
        element(0x0000_5010, b"xyz"),  # retired Message Set ID, odd length, unknown to us
        element(0x0000_0901, b"\x01\x02\x03"),  # known tag, malformed, but not part of C-ECHO-RQ
    )
    assert decode_command(data) == ECHO_RQ


def test_non_ascending_order_is_tolerated() -> None:
    data = command(
        element(0x0000_0800, us(NO_DATASET)),
        element(0x0000_0110, us(1)),
        element(0x0000_0100, us(0x0030)),
        ECHO_CLASS,
    )
    assert decode_command(data) == ECHO_RQ


def test_string_padding_is_stripped() -> None:
    data = command(
        element(0x0000_0002, b"1.2.840.10008.5.1.4.1.2.2.2 "),  # space-padded UID (sloppy peer)
        element(0x0000_0100, us(0x0021)),
        element(0x0000_0110, us(4)),
        element(0x0000_0600, b"  DEST\x00\x00"),  # leading spaces and NUL padding on an AE
        element(0x0000_0800, us(1)),
    )
    assert decode_command(data) == CMoveRQ(4, STUDY_MOVE, "DEST")


def test_empty_optional_numbers_are_absent_and_high_bytes_survive() -> None:
    data = command(
        element(0x0000_0100, us(0x8021)),
        element(0x0000_0120, us(4)),
        element(0x0000_0800, us(NO_DATASET)),
        element(0x0000_0900, us(0)),
        element(0x0000_0902, "caf\xe9".encode("latin-1")),
        element(0x0000_1020, b""),
    )
    assert decode_command(data) == CMoveRSP(4, None, 0, False, error_comment="caf\xe9")


# --- Every decoder error -------------------------------------------------------------------------


def assert_rejected(data: bytes, match: str) -> None:
    with pytest.raises(DIMSEDecodeError, match=match):
        decode_command(data)


def test_error_is_a_value_error() -> None:
    assert issubclass(DIMSEDecodeError, ValueError)


@pytest.mark.parametrize("extra", [b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x01\x00\x00\x00"])
def test_truncated_element_header(extra: bytes) -> None:
    assert_rejected(ECHO_RQ_DCMTK + extra, "truncated element header")


@pytest.mark.parametrize("cut", [1, 2, 9, 17])
def test_truncated_value(cut: int) -> None:
    assert_rejected(STORE_RQ_GOLDEN[:-cut], "declares|truncated")


def test_value_length_past_the_end() -> None:
    assert_rejected(ECHO_RQ_DCMTK + struct.pack("<HHI", 0, 0x0902, 4) + b"ab", "declares 4 bytes")
    assert_rejected(ECHO_RQ_DCMTK + struct.pack("<HHI", 0, 0x0902, 0xFFFFFFFF), "declares")


def test_odd_ui_length() -> None:
    data = command(
        element(0x0000_0002, b"1.2.840.10008.1.1"),  # 17 bytes, unpadded
        element(0x0000_0100, us(0x0030)),
        element(0x0000_0110, us(1)),
        element(0x0000_0800, us(NO_DATASET)),
    )
    assert_rejected(data, "odd length 17")


@pytest.mark.parametrize("group", [0x0002, 0x0008, 0xFFFE])
def test_element_outside_group_0000(group: int) -> None:
    assert_rejected(ECHO_RQ_DCMTK + element(group << 16 | 0x0010, b"ab"), "outside group 0000")


def test_too_long() -> None:
    filler = element(0x0000_4242, b"\x00" * (MAX_COMMAND_LENGTH - len(ECHO_RQ_DCMTK) - 8))
    exactly = ECHO_RQ_DCMTK + filler
    assert len(exactly) == MAX_COMMAND_LENGTH
    assert decode_command(exactly) == ECHO_RQ
    assert_rejected(exactly + b"\x00\x00", "exceeds")
    assert_rejected(b"\x00" * (MAX_COMMAND_LENGTH * 4), "exceeds")


@pytest.mark.parametrize(
    ("drop", "what"),
    [
        (0x0000_0002, "0002"),
        (0x0000_0100, "Command Field"),
        (0x0000_0110, "0110"),
        (0x0000_0800, "Command Data Set Type"),
        (0x0000_1000, "1000"),
    ],
)
def test_missing_required_element_of_store_rq(drop: int, what: str) -> None:
    assert_rejected(store_rq(drop=drop), what)


@pytest.mark.parametrize(
    ("msg", "tag"),
    [
        (CMoveRQ(1, STUDY_MOVE, "DEST"), 0x0000_0600),
        (CStoreRSP(1, CT_IMAGE, "1.2", 0), 0x0000_0900),
        (CStoreRSP(1, CT_IMAGE, "1.2", 0), 0x0000_0120),
        (CCancelRQ(1), 0x0000_0120),
        (CFindRQ(1, STUDY_FIND), 0x0000_0002),
    ],
)
def test_missing_required_element(msg: Message, tag: int) -> None:
    elements = parse_command_elements(encode_command(msg))
    del elements[tag]
    assert_rejected(b"".join(element(t, v) for t, v in elements.items()), f"{tag & 0xFFFF:04X}")


def test_empty_input_lacks_command_field() -> None:
    assert_rejected(b"", "Command Field")


@pytest.mark.parametrize("field", [0x0000, 0x0002, 0x1234, 0x8000, 0xFFFF])
def test_unknown_command_field(field: int) -> None:
    data = command(element(0x0000_0100, us(field)), element(0x0000_0800, us(NO_DATASET)))
    assert_rejected(data, f"unknown Command Field 0x{field:04X}")


@pytest.mark.parametrize("field", [CommandField.N_GET_RQ, CommandField.N_ACTION_RSP])
def test_n_service_command_field_is_unsupported(field: CommandField) -> None:
    data = command(element(0x0000_0100, us(field)), element(0x0000_0800, us(NO_DATASET)))
    assert_rejected(data, "unsupported Command Field")


@pytest.mark.parametrize(
    ("tag", "value", "match"),
    [
        (0x0000_0120, b"\x01\x00\x00", "length 3, expected 2"),  # US Message ID Being R.T.
        (0x0000_0900, b"\x01\x00\x00\x00", "length 4, expected 2"),  # US Status with VM 2
        (0x0000_0000, b"\x38\x00", "length 2, expected 4"),  # UL group length
        (0x0000_0901, b"\x10\x00\x10\x00\x20\x00", "not a multiple of 4"),  # AT
    ],
)
def test_wrong_value_length(tag: int, value: bytes, match: str) -> None:
    elements = parse_command_elements(encode_command(CStoreRSP(1, CT_IMAGE, "1.2", 0xB000)))
    elements[tag] = value
    assert_rejected(b"".join(element(t, v) for t, v in elements.items()), match)


def test_non_ascii_uid() -> None:
    data = command(
        element(0x0000_0002, b"1.2.840.\x80\x00"),
        element(0x0000_0100, us(0x0030)),
        element(0x0000_0110, us(1)),
        element(0x0000_0800, us(NO_DATASET)),
    )
    assert_rejected(data, "not ASCII")


def test_repeated_element() -> None:
    assert_rejected(ECHO_RQ_DCMTK + element(0x0000_0110, us(2)), "repeated")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (echo_rq(dataset_type=0x0001), "C_ECHO_RQ announces a data set"),
        (store_rq(dataset_type=NO_DATASET), "C_STORE_RQ lacks a data set"),
    ],
)
def test_dataset_type_contradicting_the_message(data: bytes, match: str) -> None:
    assert_rejected(data, match)


# --- Encoder misuse ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (CEchoRQ(65536, VERIFICATION), "message_id"),
        (CEchoRQ(-1, VERIFICATION), "message_id"),
        (CEchoRSP(1, VERIFICATION, 0x10000), "status"),
        (CEchoRQ(1, "1.2.\u00e9"), "ascii"),
        (CStoreRQ(1, CT_IMAGE, "1.2", move_originator_ae_title="\u20ac"), "latin-1"),
        (CStoreRSP(1, None, None, 0, offending_element=()), "non-empty"),
        (CStoreRSP(1, None, None, 0, offending_element=(1 << 32,)), "not a tag"),
        (CMoveRQ(1, STUDY_MOVE, 42), "must be a str"),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_unencodable_values(msg: Message, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        encode_command(msg)


def test_unencodable_error_comment_is_replaced_not_fatal() -> None:
    data = encode_command(CEchoRSP(1, None, 0x0110, error_comment="50\u20ac caf\u00e9"))
    msg = decode_command(data)
    assert isinstance(msg, CEchoRSP)
    assert msg.error_comment == "50? caf\u00e9"


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(LocalProtocolError, match="not a DIMSE message"):
        encode_command(object())  # type: ignore[arg-type]


def test_has_dataset_and_command_field() -> None:
    assert not has_dataset(ECHO_RQ)
    assert has_dataset(STORE_RQ)
    assert has_dataset(CFindRQ(1, STUDY_FIND))
    assert has_dataset(CGetRQ(1, STUDY_GET))
    assert has_dataset(CMoveRQ(1, STUDY_MOVE, "X"))
    assert not has_dataset(CCancelRQ(1))
    assert not has_dataset(CStoreRSP(1, None, None, 0))
    assert has_dataset(FIND_RSP_PENDING)
    assert not has_dataset(MOVE_RSP_COUNTS)
    assert command_field(CCancelRQ(1)) is CommandField.C_CANCEL_RQ
    assert command_field(MOVE_RSP_COUNTS) == 0x8021


# --- Hypothesis ----------------------------------------------------------------------------------

uid = st.text(alphabet="0123456789.", min_size=1, max_size=64)
opt_uid = st.none() | uid
u16 = st.integers(0, 0xFFFF)
opt_u16 = st.none() | u16
# Decoding strips leading/trailing spaces, so generated text has none; bytes 0x21-0xFF inside.
_text_chars = st.characters(min_codepoint=0x20, max_codepoint=0xFF)
ae = st.text(_text_chars, max_size=16).map(str.strip)
lo = st.text(_text_chars, max_size=64).map(str.strip)
opt_lo = st.none() | lo
priority = st.sampled_from(list(Priority)) | st.integers(3, 0xFFFF).map(Priority)
tags = st.none() | st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=4).map(tuple)
counts = {"remaining": opt_u16, "completed": opt_u16, "failed": opt_u16, "warning": opt_u16}
retrieve_rsp = {
    "message_id_being_responded_to": u16,
    "affected_sop_class_uid": opt_uid,
    "status": u16,
    "has_dataset": st.booleans(),
    **counts,
    "error_comment": opt_lo,
    "offending_element": tags,
}

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(CEchoRQ, u16, uid),
    st.builds(CEchoRSP, u16, opt_uid, u16, opt_lo),
    st.builds(CStoreRQ, u16, uid, uid, priority, st.none() | ae, opt_u16),
    st.builds(CStoreRSP, u16, opt_uid, opt_uid, u16, opt_lo, tags),
    st.builds(CFindRQ, u16, uid, priority),
    st.builds(CFindRSP, u16, opt_uid, u16, st.booleans(), opt_lo, tags),
    st.builds(CGetRQ, u16, uid, priority),
    st.builds(CGetRSP, **retrieve_rsp),
    st.builds(CMoveRQ, u16, uid, ae, priority),
    st.builds(CMoveRSP, **retrieve_rsp),
    st.builds(CCancelRQ, u16),
)


@given(messages)
def test_round_trip_every_message_type(msg: Message) -> None:
    data = encode_command(msg)
    assert decode_command(data) == msg
    (length,) = struct.unpack_from("<I", data, 8)
    assert length == len(data) - 12


def decode_or_reject(data: bytes) -> None:
    try:
        msg = decode_command(data)
    except DIMSEDecodeError:
        return
    # Whatever decodes must re-encode and decode to the same message.
    assert decode_command(encode_command(msg)) == msg


@given(st.binary(max_size=600))
def test_random_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    decode_or_reject(data)


known_tags = st.sampled_from(
    [
        *(0x0000, 0x0002, 0x0100, 0x0110, 0x0120, 0x0600, 0x0700, 0x0800, 0x0900, 0x0901),
        *(0x0902, 0x1000, 0x1020, 0x1021, 0x1022, 0x1023, 0x1030, 0x1031, 0x4242),
    ]
)
field_values = st.sampled_from([int(f) for f in CommandField] + [0x1234])
raw_element = st.one_of(
    st.builds(lambda t, v: element(t, v), known_tags, st.binary(max_size=12)),
    st.builds(lambda v: element(0x0100, us(v)), field_values),
    st.builds(lambda v: element(0x0800, us(v)), st.sampled_from([0x0001, 0x0101])),
    st.builds(lambda t, v: element(t, us(v)), known_tags, u16),
)


@given(st.lists(raw_element, max_size=14))
def test_structured_random_commands_decode_or_raise_decode_error(parts: list[bytes]) -> None:
    decode_or_reject(b"".join(parts))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([g for _m, g in GOLDEN]),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 400),
    st.binary(max_size=8),
)
def test_mutated_goldens_decode_or_raise_decode_error(
    golden: bytes, flips: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    data = bytearray(golden)
    for position, value in flips:
        data[position % len(data)] = value
    decode_or_reject(bytes(data[: len(data) - cut % len(data)]) + tail)


def test_pydicom_tag_helper_agrees_with_our_tag_numbers() -> None:
    # the tag constants used in the hand-written bytes above are the dictionary's
    assert Tag("MoveOriginatorApplicationEntityTitle") == 0x0000_1030
    assert Tag("OffendingElement") == 0x0000_0901
    assert Tag("NumberOfWarningSuboperations") == 0x0000_1023
