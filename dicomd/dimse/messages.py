"""DIMSE-C messages: one dataclass per command, and the command set codec.

Owns: the command set of every DIMSE-C message (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE,
C-CANCEL) and its encoding as Implicit VR Little Endian group 0000 elements; whether a data set
follows a command.
Must not know: PDUs and fragmentation (fragments.py), the data set itself (only whether one
follows), transfer syntaxes, sockets, services. No pydicom: the command dictionary is twenty
elements, and a parser for peer bytes has to be small enough to be obviously bounded.

References: PS3.7 6.3.1 (the command set is always Implicit VR Little Endian), PS3.7 9.1-9.3
(message parameters, Tables 9.3-1..9.3-14), PS3.7 Annex E Table E.1-1 (command dictionary),
PS3.5 6.2 (padding of UI with NUL, of text with space), PS3.5 7.1.3 (implicit VR elements).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from dicomd.ul.codes import LocalProtocolError, OpenIntEnum

__all__ = [
    "DATASET_PRESENT",
    "MAX_COMMAND_LENGTH",
    "NO_DATASET",
    "CCancelRQ",
    "CEchoRQ",
    "CEchoRSP",
    "CFindRQ",
    "CFindRSP",
    "CGetRQ",
    "CGetRSP",
    "CMoveRQ",
    "CMoveRSP",
    "CStoreRQ",
    "CStoreRSP",
    "CommandField",
    "DIMSEDecodeError",
    "Message",
    "Priority",
    "command_field",
    "decode_command",
    "encode_command",
    "has_dataset",
    "parse_command_elements",
]

# A real command set is a few hundred bytes; the cap bounds what a peer can make us parse.
MAX_COMMAND_LENGTH: Final = 65536

# Command Data Set Type (0000,0800), Table E.1-1: 0101H means "no data set", any other value
# means "present".
NO_DATASET: Final = 0x0101
# What we send when a data set follows: DCMTK (DIMSE_DATASET_PRESENT) and pynetdicom both send
# 0x0001, so it is the value every peer has been tested against.
DATASET_PRESENT: Final = 0x0001


class DIMSEDecodeError(ValueError):
    """A peer's command set is malformed or incomplete."""


class CommandField(OpenIntEnum):
    """Command Field (0000,0100) values, PS3.7 Table E.1-1 and 9.3."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150
    C_CANCEL_RQ = 0x0FFF


class Priority(OpenIntEnum):
    """Priority (0000,0700), PS3.7 Table E.1-1; the numbering is not in order of urgency."""

    MEDIUM = 0x0000
    HIGH = 0x0001
    LOW = 0x0002


# --- Command dictionary, PS3.7 Table E.1-1 (tag = group << 16 | element) -----------------------
COMMAND_GROUP_LENGTH: Final = 0x00000000  # UL
AFFECTED_SOP_CLASS_UID: Final = 0x00000002  # UI
REQUESTED_SOP_CLASS_UID: Final = 0x00000003  # UI (N-services only)
COMMAND_FIELD: Final = 0x00000100  # US
MESSAGE_ID: Final = 0x00000110  # US
MESSAGE_ID_BEING_RESPONDED_TO: Final = 0x00000120  # US
MOVE_DESTINATION: Final = 0x00000600  # AE
PRIORITY: Final = 0x00000700  # US
COMMAND_DATA_SET_TYPE: Final = 0x00000800  # US
STATUS: Final = 0x00000900  # US
OFFENDING_ELEMENT: Final = 0x00000901  # AT, VM 1-n
ERROR_COMMENT: Final = 0x00000902  # LO
ERROR_ID: Final = 0x00000903  # US
AFFECTED_SOP_INSTANCE_UID: Final = 0x00001000  # UI
REQUESTED_SOP_INSTANCE_UID: Final = 0x00001001  # UI (N-services only)
NUMBER_OF_REMAINING_SUBOPERATIONS: Final = 0x00001020  # US
NUMBER_OF_COMPLETED_SUBOPERATIONS: Final = 0x00001021  # US
NUMBER_OF_FAILED_SUBOPERATIONS: Final = 0x00001022  # US
NUMBER_OF_WARNING_SUBOPERATIONS: Final = 0x00001023  # US
MOVE_ORIGINATOR_AE_TITLE: Final = 0x00001030  # AE
MOVE_ORIGINATOR_MESSAGE_ID: Final = 0x00001031  # US

_VR: Final[Mapping[int, str]] = {
    COMMAND_GROUP_LENGTH: "UL",
    AFFECTED_SOP_CLASS_UID: "UI",
    REQUESTED_SOP_CLASS_UID: "UI",
    COMMAND_FIELD: "US",
    MESSAGE_ID: "US",
    MESSAGE_ID_BEING_RESPONDED_TO: "US",
    MOVE_DESTINATION: "AE",
    PRIORITY: "US",
    COMMAND_DATA_SET_TYPE: "US",
    STATUS: "US",
    OFFENDING_ELEMENT: "AT",
    ERROR_COMMENT: "LO",
    ERROR_ID: "US",
    AFFECTED_SOP_INSTANCE_UID: "UI",
    REQUESTED_SOP_INSTANCE_UID: "UI",
    NUMBER_OF_REMAINING_SUBOPERATIONS: "US",
    NUMBER_OF_COMPLETED_SUBOPERATIONS: "US",
    NUMBER_OF_FAILED_SUBOPERATIONS: "US",
    NUMBER_OF_WARNING_SUBOPERATIONS: "US",
    MOVE_ORIGINATOR_AE_TITLE: "AE",
    MOVE_ORIGINATOR_MESSAGE_ID: "US",
}


# --- Messages, PS3.7 9.3 -------------------------------------------------------------------------
# Response UIDs are `str | None`: PS3.7 marks Affected SOP Class/Instance UID in responses as U(=)
# or C, and a response that omits them must still decode. None means "not on the wire".


@dataclass(frozen=True, slots=True)
class CEchoRQ:
    """PS3.7 Table 9.3-12."""

    message_id: int
    affected_sop_class_uid: str


@dataclass(frozen=True, slots=True)
class CEchoRSP:
    """PS3.7 Table 9.3-13."""

    message_id_being_responded_to: int
    affected_sop_class_uid: str | None
    status: int
    error_comment: str | None = None


@dataclass(frozen=True, slots=True)
class CStoreRQ:
    """PS3.7 Table 9.3-1; a data set (the SOP instance) always follows."""

    message_id: int
    affected_sop_class_uid: str
    affected_sop_instance_uid: str
    priority: Priority = Priority.MEDIUM
    move_originator_ae_title: str | None = None
    move_originator_message_id: int | None = None


@dataclass(frozen=True, slots=True)
class CStoreRSP:
    """PS3.7 Table 9.3-2."""

    message_id_being_responded_to: int
    affected_sop_class_uid: str | None
    affected_sop_instance_uid: str | None
    status: int
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None  # tags as group << 16 | element


@dataclass(frozen=True, slots=True)
class CFindRQ:
    """PS3.7 Table 9.3-3; the identifier always follows."""

    message_id: int
    affected_sop_class_uid: str
    priority: Priority = Priority.MEDIUM


@dataclass(frozen=True, slots=True)
class CFindRSP:
    """PS3.7 Table 9.3-4; pending responses carry an identifier."""

    message_id_being_responded_to: int
    affected_sop_class_uid: str | None
    status: int
    has_dataset: bool
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class CGetRQ:
    """PS3.7 Table 9.3-5; the identifier always follows."""

    message_id: int
    affected_sop_class_uid: str
    priority: Priority = Priority.MEDIUM


@dataclass(frozen=True, slots=True)
class CGetRSP:
    """PS3.7 Table 9.3-6; a final failure/warning may carry the Failed SOP Instance UID List."""

    message_id_being_responded_to: int
    affected_sop_class_uid: str | None
    status: int
    has_dataset: bool
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class CMoveRQ:
    """PS3.7 Table 9.3-7; the identifier always follows."""

    message_id: int
    affected_sop_class_uid: str
    move_destination: str
    priority: Priority = Priority.MEDIUM


@dataclass(frozen=True, slots=True)
class CMoveRSP:
    """PS3.7 Table 9.3-8; same parameters as C-GET-RSP."""

    message_id_being_responded_to: int
    affected_sop_class_uid: str | None
    status: int
    has_dataset: bool
    remaining: int | None = None
    completed: int | None = None
    failed: int | None = None
    warning: int | None = None
    error_comment: str | None = None
    offending_element: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class CCancelRQ:
    """PS3.7 Table 9.3-11 (C-FIND/C-GET/C-MOVE-CANCEL); never carries a data set."""

    message_id_being_responded_to: int


Message = (
    CEchoRQ
    | CEchoRSP
    | CStoreRQ
    | CStoreRSP
    | CFindRQ
    | CFindRSP
    | CGetRQ
    | CGetRSP
    | CMoveRQ
    | CMoveRSP
    | CCancelRQ
)

_Value = int | str | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Layout:
    """How one message type maps onto the command dictionary."""

    cls: type[Message]
    command_field: CommandField
    dataset: bool | None  # fixed presence of a data set, or None: the message says (has_dataset)
    fields: tuple[tuple[str, int, bool], ...]  # (attribute, tag, required when decoding)
    defaulted: frozenset[str]  # attributes left to the dataclass default when absent on the wire


def _layout(
    cls: type[Message],
    command_field: CommandField,
    dataset: bool | None,
    *fields: tuple[str, int, bool],
) -> _Layout:
    defaulted = frozenset(
        f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    )
    return _Layout(cls, command_field, dataset, fields, defaulted)


_RQ_ID = ("message_id", MESSAGE_ID, True)
_RSP_ID = ("message_id_being_responded_to", MESSAGE_ID_BEING_RESPONDED_TO, True)
_CLASS_M = ("affected_sop_class_uid", AFFECTED_SOP_CLASS_UID, True)
_CLASS_U = ("affected_sop_class_uid", AFFECTED_SOP_CLASS_UID, False)
_STATUS = ("status", STATUS, True)
# Priority is mandatory in PS3.7, but a peer that omits it loses nothing: MEDIUM is the default.
_PRIORITY = ("priority", PRIORITY, False)
_COMMENT = ("error_comment", ERROR_COMMENT, False)
_OFFENDING = ("offending_element", OFFENDING_ELEMENT, False)
_COUNTS = (
    ("remaining", NUMBER_OF_REMAINING_SUBOPERATIONS, False),
    ("completed", NUMBER_OF_COMPLETED_SUBOPERATIONS, False),
    ("failed", NUMBER_OF_FAILED_SUBOPERATIONS, False),
    ("warning", NUMBER_OF_WARNING_SUBOPERATIONS, False),
)
_STORE_RQ = (
    ("affected_sop_instance_uid", AFFECTED_SOP_INSTANCE_UID, True),
    _PRIORITY,
    ("move_originator_ae_title", MOVE_ORIGINATOR_AE_TITLE, False),
    ("move_originator_message_id", MOVE_ORIGINATOR_MESSAGE_ID, False),
)
_STORE_RSP_INSTANCE = ("affected_sop_instance_uid", AFFECTED_SOP_INSTANCE_UID, False)
_DESTINATION = ("move_destination", MOVE_DESTINATION, True)
_RETRIEVE_RSP = (_RSP_ID, _CLASS_U, _STATUS, *_COUNTS, _COMMENT, _OFFENDING)

_LAYOUTS: Final[Mapping[type, _Layout]] = {
    layout.cls: layout
    for layout in (
        _layout(CEchoRQ, CommandField.C_ECHO_RQ, False, _RQ_ID, _CLASS_M),
        _layout(CEchoRSP, CommandField.C_ECHO_RSP, False, _RSP_ID, _CLASS_U, _STATUS, _COMMENT),
        _layout(CStoreRQ, CommandField.C_STORE_RQ, True, _RQ_ID, _CLASS_M, *_STORE_RQ),
        _layout(
            CStoreRSP,
            CommandField.C_STORE_RSP,
            False,
            *(_RSP_ID, _CLASS_U, _STORE_RSP_INSTANCE, _STATUS, _COMMENT, _OFFENDING),
        ),
        _layout(CFindRQ, CommandField.C_FIND_RQ, True, _RQ_ID, _CLASS_M, _PRIORITY),
        _layout(
            CFindRSP,
            CommandField.C_FIND_RSP,
            None,
            *(_RSP_ID, _CLASS_U, _STATUS, _COMMENT, _OFFENDING),
        ),
        _layout(CGetRQ, CommandField.C_GET_RQ, True, _RQ_ID, _CLASS_M, _PRIORITY),
        _layout(CGetRSP, CommandField.C_GET_RSP, None, *_RETRIEVE_RSP),
        _layout(CMoveRQ, CommandField.C_MOVE_RQ, True, _RQ_ID, _CLASS_M, _DESTINATION, _PRIORITY),
        _layout(CMoveRSP, CommandField.C_MOVE_RSP, None, *_RETRIEVE_RSP),
        _layout(CCancelRQ, CommandField.C_CANCEL_RQ, False, _RSP_ID),
    )
}
_BY_FIELD: Final[Mapping[int, _Layout]] = {int(v.command_field): v for v in _LAYOUTS.values()}


def command_field(msg: Message) -> CommandField:
    """The Command Field (0000,0100) value of a message."""
    return _LAYOUTS[type(msg)].command_field


def is_response(msg: Message) -> bool:
    """Whether `msg` answers a request (its Command Field has bit 15 set, PS3.7 E.1)."""
    return bool(command_field(msg) & 0x8000)


def has_dataset(msg: Message) -> bool:
    """Whether a data set follows the command set on the wire (PS3.7 9.3)."""
    fixed = _LAYOUTS[type(msg)].dataset
    if fixed is None:
        assert isinstance(msg, CFindRSP | CGetRSP | CMoveRSP)
        return msg.has_dataset
    return fixed


# --- Encoding ------------------------------------------------------------------------------------


def _element(tag: int, value: bytes) -> bytes:
    # PS3.5 7.1.3: 0-1 group, 2-3 element, 4-7 value length (uint32 LE), then the value
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _text(value: object, attr: str, codec: str) -> bytes:
    if not isinstance(value, str):
        raise LocalProtocolError(f"{attr} must be a str, not {type(value).__name__}")
    try:
        return value.encode(codec)
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"{attr} {value!r} is not {codec} text") from exc


def _encode_value(tag: int, value: _Value, attr: str) -> bytes:
    vr = _VR[tag]
    if vr == "US":
        if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
            raise LocalProtocolError(f"{attr} {value!r} does not fit US (0..65535)")
        return struct.pack("<H", value)
    if vr == "AT":
        if not isinstance(value, tuple) or not value:
            raise LocalProtocolError(f"{attr} must be a non-empty tuple of tags or None")
        out = bytearray()
        for t in value:
            if not isinstance(t, int) or not 0 <= t <= 0xFFFFFFFF:
                raise LocalProtocolError(f"{attr}: {t!r} is not a tag")
            out += struct.pack("<HH", t >> 16, t & 0xFFFF)  # AT: group then element, PS3.5 6.2
        return bytes(out)
    if vr == "UI":
        raw = _text(value, attr, "ascii")
        return raw + b"\x00" if len(raw) % 2 else raw  # PS3.5 9.1: UIDs are padded with NUL
    if vr == "LO":
        # Error Comment is free text for a human; a character outside the repertoire must not be
        # what makes a response unsendable, so it becomes "?".
        if not isinstance(value, str):
            raise LocalProtocolError(f"{attr} must be a str, not {type(value).__name__}")
        raw = value.encode("latin-1", errors="replace")
    else:
        raw = _text(value, attr, "latin-1")  # AE: an unencodable title is a configuration bug
    # AE and LO are padded with a space (PS3.5 6.2)
    return raw + b" " if len(raw) % 2 else raw


def encode_command(msg: Message) -> bytes:
    """The command set of `msg`, Implicit VR Little Endian, (0000,0000) first and exact.

    Raises LocalProtocolError for values that cannot be encoded (an int out of range, non-text).
    """
    layout = _LAYOUTS.get(type(msg))
    if layout is None:
        raise LocalProtocolError(f"not a DIMSE message: {type(msg).__name__}")
    values: dict[int, bytes] = {COMMAND_FIELD: struct.pack("<H", layout.command_field)}
    for attr, tag, _required in layout.fields:
        value = getattr(msg, attr)
        if value is not None:
            values[tag] = _encode_value(tag, value, attr)
    dataset_type = DATASET_PRESENT if has_dataset(msg) else NO_DATASET
    values[COMMAND_DATA_SET_TYPE] = struct.pack("<H", dataset_type)
    # PS3.5 7.1: elements in ascending tag order; the group length counts every byte after itself.
    body = b"".join(_element(tag, values[tag]) for tag in sorted(values))
    return _element(COMMAND_GROUP_LENGTH, struct.pack("<I", len(body))) + body


# --- Decoding ------------------------------------------------------------------------------------


def parse_command_elements(data: bytes | bytearray | memoryview) -> dict[int, bytes]:
    """Split a command set into {tag: raw value}, checking only structure.

    For callers that need an element this module does not model. Raises DIMSEDecodeError for input
    over MAX_COMMAND_LENGTH, a truncated element header, a value running past the end, an element
    outside group 0000, or a repeated tag.

    Ascending tag order (PS3.5 7.1) is not enforced: no peer we know gets it wrong, and nothing
    here depends on the order, so rejecting it would only turn a harmless quirk into an A-ABORT.
    A repeated tag is rejected, because then two readers may disagree on which value counts.
    """
    size = len(data)
    if size > MAX_COMMAND_LENGTH:
        raise DIMSEDecodeError(f"command set of {size} bytes exceeds {MAX_COMMAND_LENGTH}")
    elements: dict[int, bytes] = {}
    offset = 0
    while offset < size:
        if size - offset < 8:
            raise DIMSEDecodeError(f"truncated element header at offset {offset}")
        group, element, length = struct.unpack_from("<HHI", data, offset)
        tag = group << 16 | element
        if group != 0x0000:
            raise DIMSEDecodeError(f"element ({group:04X},{element:04X}) outside group 0000")
        offset += 8
        if length > size - offset:
            raise DIMSEDecodeError(
                f"value of (0000,{element:04X}) declares {length} bytes, {size - offset} remain"
            )
        if tag in elements:
            raise DIMSEDecodeError(f"element (0000,{element:04X}) repeated")
        elements[tag] = bytes(data[offset : offset + length])
        offset += length
    return elements


def _name(tag: int) -> str:
    """(0000,xxxx) VR, for an error message (made only when one is raised)."""
    return f"(0000,{tag & 0xFFFF:04X}) {_VR[tag]}"


def _decode_value(elements: Mapping[int, bytes], tag: int) -> _Value | None:
    """The typed value of `tag`, or None when it is absent or (numeric and) empty.

    An empty value is how PS3.5 7.4 says "no value", so an empty numeric element counts as absent;
    an empty text element stays "" so that what was sent is what decodes.
    """
    raw = elements.get(tag)
    if raw is None:
        return None
    vr = _VR[tag]
    if vr in ("US", "UL"):
        width = 2 if vr == "US" else 4
        if not raw:
            return None
        if len(raw) != width:
            raise DIMSEDecodeError(f"{_name(tag)} has length {len(raw)}, expected {width}")
        return int.from_bytes(raw, "little")
    if vr == "AT":
        if not raw:
            return None
        if len(raw) % 4:
            raise DIMSEDecodeError(f"{_name(tag)} has length {len(raw)}, not a multiple of 4")
        pairs = struct.iter_unpack("<HH", raw)
        return tuple(group << 16 | element for group, element in pairs)
    if vr == "UI":
        if len(raw) % 2:
            raise DIMSEDecodeError(f"{_name(tag)} has odd length {len(raw)}")
        # A UID is digits and dots (PS3.5 9.1); one that is not even ASCII is garbage that must not
        # reach file meta or the index, and could not be echoed back in a response either.
        try:
            return raw.decode("ascii").rstrip("\x00 ")
        except UnicodeDecodeError:
            raise DIMSEDecodeError(f"{_name(tag)} is not ASCII") from None
    # AE, LO: leading and trailing spaces are not significant; a trailing NUL is common sloppiness.
    # latin-1 maps every byte, so a peer's stray high-bit byte survives instead of failing the
    # whole message.
    return raw.decode("latin-1").rstrip("\x00 ").lstrip(" ")


def _required_us(elements: Mapping[int, bytes], tag: int, what: str) -> int:
    value = _decode_value(elements, tag)
    if value is None:
        raise DIMSEDecodeError(f"missing {what} (0000,{tag & 0xFFFF:04X})")
    assert isinstance(value, int)
    return value


def decode_command(data: bytes | bytearray | memoryview) -> Message:
    """Decode a peer's whole command set; raises DIMSEDecodeError for anything malformed.

    Unknown group 0000 elements (retired ones, N-service ones) are skipped. The Command Group Length
    is checked for form but its value is ignored: the PDV already delimits the command set, and a
    wrong group length from a peer is not worth an A-ABORT.
    """
    elements = parse_command_elements(data)
    _decode_value(elements, COMMAND_GROUP_LENGTH)  # form only
    field = _required_us(elements, COMMAND_FIELD, "Command Field")
    layout = _BY_FIELD.get(field)
    if layout is None:
        kind = "unsupported" if CommandField(field).known else "unknown"
        raise DIMSEDecodeError(f"{kind} Command Field 0x{field:04X}")
    name = layout.command_field.name
    present = _required_us(elements, COMMAND_DATA_SET_TYPE, "Command Data Set Type") != NO_DATASET
    if layout.dataset is not None and present != layout.dataset:
        wording = "announces" if present else "lacks"
        raise DIMSEDecodeError(f"{name} {wording} a data set")
    kwargs: dict[str, Any] = {}
    for attr, tag, required in layout.fields:
        value = _decode_value(elements, tag)
        if value is None:
            if required:
                raise DIMSEDecodeError(f"{name} lacks (0000,{tag & 0xFFFF:04X}) {attr}")
            if attr not in layout.defaulted:
                kwargs[attr] = None
            continue
        kwargs[attr] = Priority(cast(int, value)) if attr == "priority" else value
    if layout.dataset is None:
        kwargs["has_dataset"] = present
    return layout.cls(**kwargs)
