"""Items of the A-ASSOCIATE-RQ/AC variable field and the user information sub-items.

Owns: the Application Context, Presentation Context (with its Abstract/Transfer Syntax sub-items)
and User Information items (PS3.8 9.3.2-9.3.3), every User Information sub-item (PS3.8 Annex D.1,
PS3.7 Annex D.3.3), their dataclasses, encoders and decoders.
Must not know: PDU headers (pdu.py), buffering (reader.py), negotiation policy, I/O.

Every item starts with a 4-byte header (PS3.8 Table 9-12 and following):
    # 1    Item-type
    # 2    Reserved, sent as 00H, not tested
    # 3-4  Item-length, big endian, counts the bytes after this field
Decoding is strict on structure: a length that disagrees with what it encloses raises
RemoteProtocolError(INVALID_PDU_PARAMETER_VALUE); a known item in the wrong place or repeated raises
UNEXPECTED_PDU_PARAMETER. It is tolerant on content: unknown user sub-items are kept as
UnknownUserItem, unknown codes become OpenIntEnum pseudo-members, text is never rejected.

Text fields map bytes to str one to one (latin-1), so anything a peer sends survives a decode and
re-encode (the AC must echo the RQ's AE titles); the standard restricts them to ISO 646 and leaves
judging them to negotiation. UIDs are sent unpadded (PS3.8 9.3.2.2, PS3.5 9.1); real peers pad
them to even length with NUL or space, so decoders strip trailing NULs and spaces.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from struct import Struct
from typing import TypeAlias

from dicomd.ul.codes import (
    AbortReason,
    ContextResult,
    ItemType,
    LocalProtocolError,
    RemoteProtocolError,
    UserIdentityType,
)

Buffer: TypeAlias = bytes | bytearray | memoryview

ITEM_HEADER = Struct(">BxH")  # 1 Item-type, 2 reserved, 3-4 Item-length
_U16 = Struct(">H")
_U32 = Struct(">L")
_U16_PAIR = Struct(">HH")
# Presentation context (Tables 9-14 and 9-18): 5 context ID, 6 reserved, 7 Result/Reason (reserved
# in the RQ), 8 reserved.
_CONTEXT_HEAD = Struct(">BxBx")
# User identity RQ (PS3.7 Table D.3-14): 5 User-Identity-Type, 6 Positive-response-requested.
_IDENTITY_HEAD = Struct(">BB")

_KNOWN_ITEM_TYPES = frozenset(int(t) for t in ItemType)
_USER_ITEM_TYPES = frozenset(range(ItemType.MAXIMUM_LENGTH, ItemType.USER_IDENTITY_AC + 1))
# PS3.7 D.3.3: "only one ... Sub-Item shall be present" for these; role selection and both
# extended negotiations may repeat (one per SOP class, which is content for negotiation to judge).
_SINGLE_USER_ITEMS = frozenset(
    {
        ItemType.MAXIMUM_LENGTH,
        ItemType.IMPLEMENTATION_CLASS_UID,
        ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW,
        ItemType.IMPLEMENTATION_VERSION_NAME,
        ItemType.USER_IDENTITY_RQ,
        ItemType.USER_IDENTITY_AC,
    }
)


# --- dataclasses -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApplicationContextItem:
    """PS3.8 9.3.2.1, item 10H: the application context name, a UID."""

    name: str


@dataclass(frozen=True, slots=True)
class PresentationContextRQ:
    """PS3.8 9.3.2.2, item 20H with one Abstract Syntax (30H) and Transfer Syntax (40H) items."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PresentationContextAC:
    """PS3.8 9.3.3.2, item 21H. Unless accepted, `transfer_syntax` is not significant."""

    context_id: int
    result: ContextResult
    transfer_syntax: str


@dataclass(frozen=True, slots=True)
class MaximumLength:
    """PS3.8 D.1, sub-item 51H: largest P-DATA-TF PDU-length the sender accepts; 0 = no limit."""

    max_length: int


@dataclass(frozen=True, slots=True)
class ImplementationClassUID:
    """PS3.7 D.3.3.2.1, sub-item 52H."""

    uid: str


@dataclass(frozen=True, slots=True)
class ImplementationVersionName:
    """PS3.7 D.3.3.2.3, sub-item 55H: 1 to 16 characters."""

    name: str


@dataclass(frozen=True, slots=True)
class AsynchronousOperationsWindow:
    """PS3.7 D.3.3.3, sub-item 53H: maximum operations invoked / performed; 0 = unlimited."""

    invoked: int
    performed: int


@dataclass(frozen=True, slots=True)
class RoleSelection:
    """PS3.7 D.3.3.4, sub-item 54H."""

    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(frozen=True, slots=True)
class SOPClassExtendedNegotiation:
    """PS3.7 D.3.3.5, sub-item 56H: `info` is the service-class-application-information."""

    sop_class_uid: str
    info: bytes


@dataclass(frozen=True, slots=True)
class SOPClassCommonExtendedNegotiation:
    """PS3.7 D.3.3.6, sub-item 57H (RQ only)."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UserIdentityRQ:
    """PS3.7 D.3.3.7.1, sub-item 58H. `secondary_field` is the passcode of type 2."""

    identity_type: UserIdentityType
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes

    def __repr__(self) -> str:
        # Credentials must not end up in logs through a repr.
        return (
            f"UserIdentityRQ(identity_type={self.identity_type!r}, positive_response_requested="
            f"{self.positive_response_requested}, primary_field=<{len(self.primary_field)} bytes>, "
            f"secondary_field=<{len(self.secondary_field)} bytes>)"
        )


@dataclass(frozen=True, slots=True)
class UserIdentityAC:
    """PS3.7 D.3.3.7.2, sub-item 59H."""

    server_response: bytes


@dataclass(frozen=True, slots=True)
class UnknownUserItem:
    """A user information sub-item this codec does not know; kept and re-encoded as received.

    PS3.8 D.2 note 2: acceptors shall ignore unrecognized user information sub-items and not
    reject an association because of them.
    """

    item_type: int
    data: bytes


UserItem: TypeAlias = (
    MaximumLength
    | ImplementationClassUID
    | ImplementationVersionName
    | AsynchronousOperationsWindow
    | RoleSelection
    | SOPClassExtendedNegotiation
    | SOPClassCommonExtendedNegotiation
    | UserIdentityRQ
    | UserIdentityAC
    | UnknownUserItem
)


@dataclass(frozen=True, slots=True)
class UserInformation:
    """PS3.8 9.3.2.3, item 50H. Sub-items keep their order, which has no significance."""

    items: tuple[UserItem, ...]

    @property
    def max_length(self) -> int | None:
        for item in self.items:
            if isinstance(item, MaximumLength):
                return item.max_length
        return None

    @property
    def implementation_class_uid(self) -> str | None:
        for item in self.items:
            if isinstance(item, ImplementationClassUID):
                return item.uid
        return None

    @property
    def implementation_version_name(self) -> str | None:
        for item in self.items:
            if isinstance(item, ImplementationVersionName):
                return item.name
        return None

    @property
    def async_window(self) -> AsynchronousOperationsWindow | None:
        for item in self.items:
            if isinstance(item, AsynchronousOperationsWindow):
                return item
        return None

    @property
    def role_selections(self) -> tuple[RoleSelection, ...]:
        return tuple(item for item in self.items if isinstance(item, RoleSelection))

    @property
    def extended_negotiations(self) -> tuple[SOPClassExtendedNegotiation, ...]:
        return tuple(item for item in self.items if isinstance(item, SOPClassExtendedNegotiation))

    @property
    def common_extended_negotiations(self) -> tuple[SOPClassCommonExtendedNegotiation, ...]:
        return tuple(
            item for item in self.items if isinstance(item, SOPClassCommonExtendedNegotiation)
        )

    @property
    def user_identity_rq(self) -> UserIdentityRQ | None:
        for item in self.items:
            if isinstance(item, UserIdentityRQ):
                return item
        return None

    @property
    def user_identity_ac(self) -> UserIdentityAC | None:
        for item in self.items:
            if isinstance(item, UserIdentityAC):
                return item
        return None


Item: TypeAlias = (
    ApplicationContextItem | PresentationContextRQ | PresentationContextAC | UserInformation
)


# --- decoding ----------------------------------------------------------------------------------


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, AbortReason.INVALID_PDU_PARAMETER_VALUE)


def _unexpected(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, AbortReason.UNEXPECTED_PDU_PARAMETER)


def _uid(data: memoryview) -> str:
    return str(data, "latin-1").rstrip("\x00 ")


def _field(view: memoryview, offset: int, what: str) -> tuple[memoryview, int]:
    """Read a 2-byte length and the bytes it counts; return them and the offset after them."""
    if len(view) - offset < 2:
        raise _invalid(f"{what}: length field truncated")
    (length,) = _U16.unpack_from(view, offset)
    start = offset + 2
    end = start + length
    if end > len(view):
        raise _invalid(f"{what}: length {length} runs past its sub-item")
    return view[start:end], end


def split_items(data: Buffer) -> list[tuple[int, memoryview]]:
    """Split a run of items (4-byte header each) into (item type, body) pairs, without copying."""
    view = memoryview(data)
    items: list[tuple[int, memoryview]] = []
    offset, end = 0, len(view)
    while offset < end:
        if end - offset < ITEM_HEADER.size:
            raise _invalid(f"truncated item header at offset {offset}")
        item_type, length = ITEM_HEADER.unpack_from(view, offset)
        start = offset + ITEM_HEADER.size
        offset = start + length
        if offset > end:
            raise _invalid(f"item {item_type:#04x} of length {length} runs past its container")
        items.append((item_type, view[start:offset]))
    return items


def decode_presentation_context_rq(body: Buffer) -> PresentationContextRQ:
    """Body of a 20H item (PS3.8 Table 9-14): one 30H sub-item, then 40H sub-items."""
    view = memoryview(body)
    if len(view) < _CONTEXT_HEAD.size:
        raise _invalid("presentation context item shorter than 4 bytes")
    context_id, _ = _CONTEXT_HEAD.unpack_from(view)
    abstract_syntax: str | None = None
    transfer_syntaxes: list[str] = []
    for sub_type, sub in split_items(view[_CONTEXT_HEAD.size :]):
        if sub_type == ItemType.ABSTRACT_SYNTAX:
            if abstract_syntax is not None or transfer_syntaxes:
                raise _unexpected(f"context {context_id}: misplaced abstract syntax sub-item")
            abstract_syntax = _uid(sub)
        elif sub_type == ItemType.TRANSFER_SYNTAX:
            if abstract_syntax is None:
                raise _unexpected(f"context {context_id}: transfer syntax before abstract syntax")
            transfer_syntaxes.append(_uid(sub))
        elif sub_type in _KNOWN_ITEM_TYPES:
            raise _unexpected(f"context {context_id}: item {sub_type:#04x} not allowed here")
        # Anything else: PS3.8 9.3, "Items of unrecognized types shall be ignored and skipped."
    if abstract_syntax is None:
        raise _invalid(f"context {context_id}: no abstract syntax sub-item")
    # An empty transfer syntax list is structurally sound; negotiation rejects the context.
    return PresentationContextRQ(context_id, abstract_syntax, tuple(transfer_syntaxes))


def decode_presentation_context_ac(body: Buffer) -> PresentationContextAC:
    """Body of a 21H item (PS3.8 Table 9-18): result, then one 40H sub-item."""
    view = memoryview(body)
    if len(view) < _CONTEXT_HEAD.size:
        raise _invalid("presentation context item shorter than 4 bytes")
    context_id, result_code = _CONTEXT_HEAD.unpack_from(view)
    result = ContextResult(result_code)
    transfer_syntax: str | None = None
    for sub_type, sub in split_items(view[_CONTEXT_HEAD.size :]):
        if sub_type == ItemType.TRANSFER_SYNTAX:
            if transfer_syntax is not None:
                raise _unexpected(f"context {context_id}: second transfer syntax sub-item")
            transfer_syntax = _uid(sub)
        elif sub_type in _KNOWN_ITEM_TYPES:
            raise _unexpected(f"context {context_id}: item {sub_type:#04x} not allowed here")
        # Anything else: PS3.8 9.3, "Items of unrecognized types shall be ignored and skipped."
    if transfer_syntax is None:
        if result == ContextResult.ACCEPTANCE:
            raise _invalid(f"context {context_id}: accepted without a transfer syntax sub-item")
        # Table 9-18: not significant unless accepted, so peers may leave it out.
        transfer_syntax = ""
    return PresentationContextAC(context_id, result, transfer_syntax)


def _decode_maximum_length(view: memoryview) -> MaximumLength:
    # PS3.8 Table D.1-1: 5-8 Maximum-length-received.
    if len(view) != _U32.size:
        raise _invalid(f"maximum length sub-item of length {len(view)}, not 4")
    return MaximumLength(_U32.unpack_from(view)[0])


def _decode_async_window(view: memoryview) -> AsynchronousOperationsWindow:
    # PS3.7 Table D.3-7: 5-6 Maximum-number-operations-invoked, 7-8 ...-performed.
    if len(view) != _U16_PAIR.size:
        raise _invalid(f"asynchronous operations window sub-item of length {len(view)}, not 4")
    invoked, performed = _U16_PAIR.unpack_from(view)
    return AsynchronousOperationsWindow(invoked, performed)


def _decode_role_selection(view: memoryview) -> RoleSelection:
    # PS3.7 Table D.3-9: 5-6 UID-length, 7-xxx SOP-class-uid, then SCU-role and SCP-role bytes.
    uid, offset = _field(view, 0, "role selection SOP class UID")
    if len(view) - offset != 2:
        raise _invalid("role selection sub-item: not exactly two role bytes after the UID")
    # Values other than 0/1 are out of range; reading non-zero as "supported" is the lenient
    # choice and negotiation only ever answers with 0 or 1.
    return RoleSelection(_uid(uid), view[offset] != 0, view[offset + 1] != 0)


def _decode_extended(view: memoryview) -> SOPClassExtendedNegotiation:
    # PS3.7 Table D.3-11: 5-6 SOP-class-uid-length, SOP-class-uid, then the application info.
    uid, offset = _field(view, 0, "extended negotiation SOP class UID")
    return SOPClassExtendedNegotiation(_uid(uid), bytes(view[offset:]))


def _decode_common_extended(view: memoryview) -> SOPClassCommonExtendedNegotiation:
    # PS3.7 Table D.3-12 (byte 2 is the Sub-Item-version, 00H, not tested): 5-6 SOP-class-uid-
    # length, SOP-class-uid, Service-class-uid-length (2), Service-class-uid, Related-general-sop-
    # class-identification-length (2), then (2-byte length, UID) pairs filling exactly that length.
    sop_class, offset = _field(view, 0, "common extended negotiation SOP class UID")
    service_class, offset = _field(view, offset, "common extended negotiation service class UID")
    related_block, offset = _field(view, offset, "related general SOP class identification")
    if offset != len(view):
        raise _invalid("common extended negotiation sub-item: trailing bytes")
    related: list[str] = []
    inner = 0
    while inner < len(related_block):
        uid, inner = _field(related_block, inner, "related general SOP class UID")
        related.append(_uid(uid))
    return SOPClassCommonExtendedNegotiation(_uid(sop_class), _uid(service_class), tuple(related))


def _decode_identity_rq(view: memoryview) -> UserIdentityRQ:
    # PS3.7 Table D.3-14: 5 User-Identity-Type, 6 Positive-response-requested, 7-8 Primary-field-
    # length, Primary-field, Secondary-field-length (2, always present, 0 unless type 2), Secondary.
    if len(view) < _IDENTITY_HEAD.size:
        raise _invalid("user identity sub-item shorter than its fixed fields")
    identity_type, positive = _IDENTITY_HEAD.unpack_from(view)
    primary, offset = _field(view, _IDENTITY_HEAD.size, "user identity primary field")
    secondary, offset = _field(view, offset, "user identity secondary field")
    if offset != len(view):
        raise _invalid("user identity sub-item: trailing bytes")
    return UserIdentityRQ(
        UserIdentityType(identity_type), positive != 0, bytes(primary), bytes(secondary)
    )


def _decode_identity_ac(view: memoryview) -> UserIdentityAC:
    # PS3.7 Table D.3-15: 5-6 Server-response-length, 7-n Server-response.
    response, offset = _field(view, 0, "user identity server response")
    if offset != len(view):
        raise _invalid("user identity response sub-item: trailing bytes")
    return UserIdentityAC(bytes(response))


_USER_DECODERS: dict[int, Callable[[memoryview], UserItem]] = {
    ItemType.MAXIMUM_LENGTH: _decode_maximum_length,
    ItemType.IMPLEMENTATION_CLASS_UID: lambda view: ImplementationClassUID(_uid(view)),
    ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW: _decode_async_window,
    ItemType.ROLE_SELECTION: _decode_role_selection,
    ItemType.IMPLEMENTATION_VERSION_NAME: lambda view: ImplementationVersionName(_uid(view)),
    ItemType.SOP_CLASS_EXTENDED_NEGOTIATION: _decode_extended,
    ItemType.SOP_CLASS_COMMON_EXTENDED_NEGOTIATION: _decode_common_extended,
    ItemType.USER_IDENTITY_RQ: _decode_identity_rq,
    ItemType.USER_IDENTITY_AC: _decode_identity_ac,
}


def decode_user_item(item_type: int, body: Buffer) -> UserItem:
    """One user information sub-item from its type and body; unknown types -> UnknownUserItem."""
    decoder = _USER_DECODERS.get(item_type)
    if decoder is None:
        return UnknownUserItem(item_type, bytes(body))
    return decoder(memoryview(body))


def decode_user_information(body: Buffer) -> UserInformation:
    """Body of a 50H item: sub-items in any order; single-instance ones must not repeat."""
    seen: set[int] = set()
    items: list[UserItem] = []
    for item_type, sub in split_items(body):
        if item_type in _SINGLE_USER_ITEMS:
            if item_type in seen:
                raise _unexpected(f"user information sub-item {item_type:#04x} repeated")
            seen.add(item_type)
        items.append(decode_user_item(item_type, sub))
    return UserInformation(tuple(items))


def decode_item(data: Buffer) -> Item | UserItem:
    """Exactly one whole item, header included, decoded by its type alone.

    For items that can stand on their own: 10H, 20H, 21H, 50H and the user sub-items 51H-59H.
    Abstract/transfer syntax sub-items only exist inside a presentation context.
    """
    view = memoryview(data)
    if len(view) < ITEM_HEADER.size:
        raise _invalid("truncated item header")
    item_type, length = ITEM_HEADER.unpack_from(view)
    if length != len(view) - ITEM_HEADER.size:
        raise _invalid(f"item length {length} but {len(view) - ITEM_HEADER.size} bytes follow")
    body = view[ITEM_HEADER.size :]
    if item_type == ItemType.APPLICATION_CONTEXT:
        return ApplicationContextItem(_uid(body))
    if item_type == ItemType.PRESENTATION_CONTEXT_RQ:
        return decode_presentation_context_rq(body)
    if item_type == ItemType.PRESENTATION_CONTEXT_AC:
        return decode_presentation_context_ac(body)
    if item_type == ItemType.USER_INFORMATION:
        return decode_user_information(body)
    if item_type in _USER_ITEM_TYPES:
        return decode_user_item(item_type, body)
    if item_type in _KNOWN_ITEM_TYPES:
        raise _unexpected(f"item {item_type:#04x} only exists inside a presentation context")
    raise RemoteProtocolError(
        f"unrecognized item type {item_type:#04x}", AbortReason.UNRECOGNIZED_PDU_PARAMETER
    )


# --- encoding ----------------------------------------------------------------------------------


def _text(value: str) -> bytes:
    return value.encode("latin-1")


def _len16(data: bytes) -> bytes:
    return _U16.pack(len(data)) + data


def _wrap(item_type: int, *parts: bytes) -> bytes:
    body = b"".join(parts)
    return ITEM_HEADER.pack(item_type, len(body)) + body


def _encode(item: Item | UserItem) -> bytes:
    match item:
        case ApplicationContextItem():
            return _wrap(ItemType.APPLICATION_CONTEXT, _text(item.name))
        case PresentationContextRQ():
            return _wrap(
                ItemType.PRESENTATION_CONTEXT_RQ,
                _CONTEXT_HEAD.pack(item.context_id, 0),
                _wrap(ItemType.ABSTRACT_SYNTAX, _text(item.abstract_syntax)),
                *(_wrap(ItemType.TRANSFER_SYNTAX, _text(ts)) for ts in item.transfer_syntaxes),
            )
        case PresentationContextAC():
            return _wrap(
                ItemType.PRESENTATION_CONTEXT_AC,
                _CONTEXT_HEAD.pack(item.context_id, item.result),
                _wrap(ItemType.TRANSFER_SYNTAX, _text(item.transfer_syntax)),
            )
        case UserInformation():
            return _wrap(ItemType.USER_INFORMATION, *(_encode(sub) for sub in item.items))
        case MaximumLength():
            return _wrap(ItemType.MAXIMUM_LENGTH, _U32.pack(item.max_length))
        case ImplementationClassUID():
            return _wrap(ItemType.IMPLEMENTATION_CLASS_UID, _text(item.uid))
        case ImplementationVersionName():
            return _wrap(ItemType.IMPLEMENTATION_VERSION_NAME, _text(item.name))
        case AsynchronousOperationsWindow():
            return _wrap(
                ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW,
                _U16_PAIR.pack(item.invoked, item.performed),
            )
        case RoleSelection():
            return _wrap(
                ItemType.ROLE_SELECTION,
                _len16(_text(item.sop_class_uid)),
                bytes((int(item.scu_role), int(item.scp_role))),
            )
        case SOPClassExtendedNegotiation():
            return _wrap(
                ItemType.SOP_CLASS_EXTENDED_NEGOTIATION,
                _len16(_text(item.sop_class_uid)),
                item.info,
            )
        case SOPClassCommonExtendedNegotiation():
            related = b"".join(_len16(_text(uid)) for uid in item.related_general_sop_classes)
            # Byte 2 is the Sub-Item-version (00H), which _wrap writes as the reserved byte.
            return _wrap(
                ItemType.SOP_CLASS_COMMON_EXTENDED_NEGOTIATION,
                _len16(_text(item.sop_class_uid)),
                _len16(_text(item.service_class_uid)),
                _len16(related),
            )
        case UserIdentityRQ():
            return _wrap(
                ItemType.USER_IDENTITY_RQ,
                _IDENTITY_HEAD.pack(item.identity_type, int(item.positive_response_requested)),
                _len16(item.primary_field),
                _len16(item.secondary_field),
            )
        case UserIdentityAC():
            return _wrap(ItemType.USER_IDENTITY_AC, _len16(item.server_response))
        case UnknownUserItem():
            if item.item_type in _USER_ITEM_TYPES:
                # It would decode as the known sub-item, not as itself.
                raise LocalProtocolError(
                    f"UnknownUserItem with the known type {item.item_type:#04x}"
                )
            return _wrap(item.item_type, item.data)
    raise LocalProtocolError(f"not an item: {item!r}")


def encode_item(item: Item | UserItem) -> bytes:
    """The whole item, header included. Values that do not fit their fields: LocalProtocolError."""
    try:
        return _encode(item)
    except (struct.error, UnicodeEncodeError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(item).__name__}: {exc}") from exc
