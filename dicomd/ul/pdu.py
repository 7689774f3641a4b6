"""The seven DICOM Upper Layer PDUs and their byte encoding (PS3.8 9.3.2-9.3.7).

Owns: the PDU dataclasses, `encode(pdu) -> bytes` and `decode(bytes) -> PDU` for exactly one whole
PDU. Items inside A-ASSOCIATE PDUs live in items.py; incremental reading lives in reader.py.
Must not know: sockets, the state machine, negotiation policy, DIMSE.

Every PDU starts with a 6-byte header, big endian like everything in PS3.8 9.3:
    # 1    PDU-type
    # 2    Reserved, sent as 00H, not tested
    # 3-6  PDU-length, counts the bytes after this field
decode() raises RemoteProtocolError for structural faults only (see each decoder); whether an
association request is acceptable is for negotiation to say.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from struct import Struct
from typing import TypeAlias

from dicomd.ul.codes import (
    AbortReason,
    AbortSource,
    ItemType,
    LocalProtocolError,
    PDUType,
    RejectResult,
    RejectSource,
    RemoteProtocolError,
)
from dicomd.ul.items import (
    ApplicationContextItem,
    Buffer,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
    decode_presentation_context_ac,
    decode_presentation_context_rq,
    decode_user_information,
    encode_item,
    split_items,
)

PDU_HEADER = Struct(">BxL")  # 1 PDU-type, 2 reserved, 3-6 PDU-length
# A-ASSOCIATE-RQ/AC fixed fields after the header (PS3.8 Tables 9-11, 9-17):
#   7-8 Protocol-version, 9-10 reserved, 11-26 Called-AE-title (16 bytes, space padded),
#   27-42 Calling-AE-title (16 bytes, space padded), 43-74 reserved (32 bytes).
_ASSOCIATE_FIXED = Struct(">H2x16s16s32x")
# PDV item (PS3.8 Table 9-23): 1-4 Item-length (counts from byte 5), 5 Presentation-context-ID,
# then the Presentation-data-value whose first byte is the message control header (Annex E.2).
_PDV_HEAD = Struct(">LBB")
_PDV_OVERHEAD = _PDV_HEAD.size - 4  # bytes counted by Item-length besides the data
# A-ASSOCIATE-RJ (Table 9-21): 7 reserved, 8 Result, 9 Source, 10 Reason/Diag.
_REJECT = Struct(">xBBB")
# A-ABORT (Table 9-26): 7-8 reserved, 9 Source, 10 Reason/Diag.
_ABORT = Struct(">2xBB")
# A-RELEASE-RQ/RP (Tables 9-24, 9-25): 7-10 reserved.
_RELEASE_BODY = bytes(4)
_AE_TITLE_LENGTH = 16
_KNOWN_ITEM_TYPES = frozenset(int(t) for t in ItemType)


@dataclass(frozen=True, slots=True)
class AssociateRQ:
    """PS3.8 9.3.2, PDU type 01H."""

    called_ae_title: str
    calling_ae_title: str
    application_context: str
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_information: UserInformation
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AssociateAC:
    """PS3.8 9.3.3, PDU type 02H. The AE titles echo the RQ's and are not tested on receipt."""

    called_ae_title: str
    calling_ae_title: str
    application_context: str
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_information: UserInformation
    protocol_version: int = 1


@dataclass(frozen=True, slots=True)
class AssociateRJ:
    """PS3.8 9.3.4, PDU type 03H. `reason` means a UserRejectReason, AcseRejectReason or
    PresentationRejectReason depending on `source`."""

    result: RejectResult
    source: RejectSource
    reason: int


@dataclass(frozen=True, slots=True)
class PDV:
    """One presentation data value (PS3.8 9.3.5.1) with its message control header (Annex E.2)."""

    context_id: int
    message_control_header: int
    data: bytes

    @property
    def is_command(self) -> bool:
        return bool(self.message_control_header & 0x01)

    @property
    def is_last(self) -> bool:
        return bool(self.message_control_header & 0x02)

    def __repr__(self) -> str:
        # A PDV may carry megabytes; the repr must stay one line in a log.
        return (
            f"PDV(context_id={self.context_id}, message_control_header="
            f"{self.message_control_header:#04x}, data=<{len(self.data)} bytes>)"
        )


@dataclass(frozen=True, slots=True)
class PDataTF:
    """PS3.8 9.3.5, PDU type 04H: one or more PDVs."""

    pdvs: tuple[PDV, ...]


@dataclass(frozen=True, slots=True)
class ReleaseRQ:
    """PS3.8 9.3.6, PDU type 05H."""


@dataclass(frozen=True, slots=True)
class ReleaseRP:
    """PS3.8 9.3.7, PDU type 06H."""


@dataclass(frozen=True, slots=True)
class Abort:
    """PS3.8 9.3.8, PDU type 07H. `reason` is significant only when the source is the provider."""

    source: AbortSource
    reason: AbortReason


PDU: TypeAlias = AssociateRQ | AssociateAC | AssociateRJ | PDataTF | ReleaseRQ | ReleaseRP | Abort


# --- decoding ----------------------------------------------------------------------------------


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, AbortReason.INVALID_PDU_PARAMETER_VALUE)


def _unexpected(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, AbortReason.UNEXPECTED_PDU_PARAMETER)


def _ae_title(raw: bytes) -> str:
    # Space padded per the standard; some peers pad with NUL, which is no more significant.
    return raw.decode("latin-1").strip(" \x00")


def _decode_associate(body: memoryview, is_request: bool) -> AssociateRQ | AssociateAC:
    if len(body) < _ASSOCIATE_FIXED.size:
        raise _invalid(f"A-ASSOCIATE PDU of length {len(body)}, shorter than its fixed fields")
    protocol_version, called, calling = _ASSOCIATE_FIXED.unpack_from(body)
    context_type = (
        ItemType.PRESENTATION_CONTEXT_RQ if is_request else ItemType.PRESENTATION_CONTEXT_AC
    )
    application_context: str | None = None
    contexts_rq: list[PresentationContextRQ] = []
    contexts_ac: list[PresentationContextAC] = []
    user_information: UserInformation | None = None
    # PS3.8 9.3: items appear in increasing order of type: one 10H, the 20H/21H items, one 50H.
    for item_type, item in split_items(body[_ASSOCIATE_FIXED.size :]):
        if item_type == ItemType.APPLICATION_CONTEXT:
            if application_context is not None:
                raise _unexpected("application context item repeated")
            application_context = str(item, "latin-1").rstrip("\x00 ")
        elif item_type == context_type:
            if application_context is None or user_information is not None:
                raise _unexpected("presentation context item out of order")
            if is_request:
                contexts_rq.append(decode_presentation_context_rq(item))
            else:
                contexts_ac.append(decode_presentation_context_ac(item))
        elif item_type == ItemType.USER_INFORMATION:
            if application_context is None or user_information is not None:
                raise _unexpected("user information item out of order or repeated")
            user_information = decode_user_information(item)
        elif item_type in _KNOWN_ITEM_TYPES:
            raise _unexpected(f"item {item_type:#04x} not allowed in an A-ASSOCIATE PDU")
        # Any other type: PS3.8 9.3, "Items of unrecognized types shall be ignored and skipped."
        # The standard's own rule wins over rejecting them with UNRECOGNIZED_PDU_PARAMETER.
    if application_context is None:
        raise _invalid("A-ASSOCIATE PDU without an application context item")
    if user_information is None:
        raise _invalid("A-ASSOCIATE PDU without a user information item")
    called_ae_title, calling_ae_title = _ae_title(called), _ae_title(calling)
    if is_request:
        return AssociateRQ(
            called_ae_title,
            calling_ae_title,
            application_context,
            tuple(contexts_rq),
            user_information,
            protocol_version,
        )
    return AssociateAC(
        called_ae_title,
        calling_ae_title,
        application_context,
        tuple(contexts_ac),
        user_information,
        protocol_version,
    )


def _decode_p_data(body: memoryview) -> PDataTF:
    # Hot path: one unpack and one slice per PDV, never a loop over data bytes.
    pdvs: list[PDV] = []
    unpack = _PDV_HEAD.unpack_from
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < _PDV_HEAD.size:
            raise _invalid(f"truncated PDV header at offset {offset}")
        length, context_id, control = unpack(body, offset)
        if length < _PDV_OVERHEAD:
            raise _invalid(f"PDV item length {length}, less than 2")
        stop = offset + 4 + length
        if stop > end:
            raise _invalid(f"PDV item length {length} runs past its P-DATA-TF PDU")
        pdvs.append(PDV(context_id, control, bytes(body[offset + _PDV_HEAD.size : stop])))
        offset = stop
    if not pdvs:
        raise _invalid("P-DATA-TF PDU without any PDV")  # Table 9-22: one or more
    return PDataTF(tuple(pdvs))


def _decode_reject(body: memoryview) -> AssociateRJ:
    if len(body) != _REJECT.size:
        raise _invalid(f"A-ASSOCIATE-RJ PDU of length {len(body)}, not 4")
    result, source, reason = _REJECT.unpack_from(body)
    return AssociateRJ(RejectResult(result), RejectSource(source), reason)


def _decode_abort(body: memoryview) -> Abort:
    if len(body) != _ABORT.size:
        raise _invalid(f"A-ABORT PDU of length {len(body)}, not 4")
    source, reason = _ABORT.unpack_from(body)
    return Abort(AbortSource(source), AbortReason(reason))


def _decode_release(body: memoryview, pdu: ReleaseRQ | ReleaseRP) -> ReleaseRQ | ReleaseRP:
    if len(body) != len(_RELEASE_BODY):
        raise _invalid(f"{type(pdu).__name__} PDU of length {len(body)}, not 4")
    return pdu


def decode(data: Buffer) -> PDU:
    """Exactly one whole PDU, header included."""
    view = memoryview(data)
    if len(view) < PDU_HEADER.size:
        raise _invalid(f"truncated PDU header ({len(view)} bytes)")
    pdu_type, length = PDU_HEADER.unpack_from(view)
    if not 1 <= pdu_type <= 7:
        raise RemoteProtocolError(
            f"unrecognized PDU type {pdu_type:#04x}", AbortReason.UNRECOGNIZED_PDU
        )
    if length != len(view) - PDU_HEADER.size:
        raise _invalid(f"PDU length {length} but {len(view) - PDU_HEADER.size} bytes follow")
    body = view[PDU_HEADER.size :]
    if pdu_type == PDUType.P_DATA_TF:
        return _decode_p_data(body)
    if pdu_type == PDUType.ASSOCIATE_RQ:
        return _decode_associate(body, is_request=True)
    if pdu_type == PDUType.ASSOCIATE_AC:
        return _decode_associate(body, is_request=False)
    if pdu_type == PDUType.ASSOCIATE_RJ:
        return _decode_reject(body)
    if pdu_type == PDUType.RELEASE_RQ:
        return _decode_release(body, ReleaseRQ())
    if pdu_type == PDUType.RELEASE_RP:
        return _decode_release(body, ReleaseRP())
    return _decode_abort(body)


# --- encoding ----------------------------------------------------------------------------------


def _encode_ae_title(title: str) -> bytes:
    raw = title.encode("latin-1")
    if len(raw) > _AE_TITLE_LENGTH:
        raise LocalProtocolError(f"AE title {title!r} longer than 16 bytes")
    return raw.ljust(_AE_TITLE_LENGTH, b" ")


def _encode_associate(pdu_type: PDUType, pdu: AssociateRQ | AssociateAC) -> bytes:
    body = b"".join(
        [
            _ASSOCIATE_FIXED.pack(
                pdu.protocol_version,
                _encode_ae_title(pdu.called_ae_title),
                _encode_ae_title(pdu.calling_ae_title),
            ),
            encode_item(ApplicationContextItem(pdu.application_context)),
            *(encode_item(context) for context in pdu.presentation_contexts),
            encode_item(pdu.user_information),
        ]
    )
    return PDU_HEADER.pack(pdu_type, len(body)) + body


def p_data_head(context_id: int, message_control_header: int, size: int) -> bytes:
    """The bytes before the data of a P-DATA-TF PDU holding one PDV of `size` data bytes: what
    encode() writes for it (PS3.8 Table 9-22 and 9-23), for senders that keep the data apart."""
    return PDU_HEADER.pack(PDUType.P_DATA_TF, size + _PDV_HEAD.size) + _PDV_HEAD.pack(
        size + _PDV_OVERHEAD, context_id, message_control_header
    )


def _encode_p_data(pdu: PDataTF) -> bytes:
    if not pdu.pdvs:
        raise LocalProtocolError("a P-DATA-TF PDU needs at least one PDV")
    parts: list[bytes] = [b""]
    pack = _PDV_HEAD.pack
    total = 0
    for pdv in pdu.pdvs:
        size = len(pdv.data)
        parts.append(pack(size + _PDV_OVERHEAD, pdv.context_id, pdv.message_control_header))
        parts.append(pdv.data)
        total += size + _PDV_HEAD.size
    parts[0] = PDU_HEADER.pack(PDUType.P_DATA_TF, total)
    return b"".join(parts)


def _encode(pdu: PDU) -> bytes:
    match pdu:
        case PDataTF():
            return _encode_p_data(pdu)
        case AssociateRQ():
            return _encode_associate(PDUType.ASSOCIATE_RQ, pdu)
        case AssociateAC():
            return _encode_associate(PDUType.ASSOCIATE_AC, pdu)
        case AssociateRJ():
            body = _REJECT.pack(pdu.result, pdu.source, pdu.reason)
            return PDU_HEADER.pack(PDUType.ASSOCIATE_RJ, len(body)) + body
        case ReleaseRQ():
            return PDU_HEADER.pack(PDUType.RELEASE_RQ, len(_RELEASE_BODY)) + _RELEASE_BODY
        case ReleaseRP():
            return PDU_HEADER.pack(PDUType.RELEASE_RP, len(_RELEASE_BODY)) + _RELEASE_BODY
        case Abort():
            body = _ABORT.pack(pdu.source, pdu.reason)
            return PDU_HEADER.pack(PDUType.ABORT, len(body)) + body
    raise LocalProtocolError(f"not a PDU: {pdu!r}")


def encode(pdu: PDU) -> bytes:
    """The whole PDU, header included. Values that do not fit their fields: LocalProtocolError."""
    try:
        return _encode(pdu)
    except (struct.error, UnicodeEncodeError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(pdu).__name__}: {exc}") from exc
