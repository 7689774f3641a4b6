"""Golden bytes for every PDU and item of dicomd.ul.pdu / dicomd.ul.items, and decode errors.

Each golden is written by hand from PS3.8 9.3 and PS3.7 Annex D.3.3, one commented line per field,
and checked both ways: decode(golden) == object and encode(object) == golden.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest

from dicomd.ul.codes import (
    AbortReason,
    AbortSource,
    ContextResult,
    LocalProtocolError,
    RejectResult,
    RejectSource,
    RemoteProtocolError,
    UserIdentityType,
    UserRejectReason,
)
from dicomd.ul.items import (
    ApplicationContextItem,
    AsynchronousOperationsWindow,
    ImplementationClassUID,
    ImplementationVersionName,
    Item,
    MaximumLength,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownUserItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    UserItem,
    decode_item,
    encode_item,
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
    decode,
    encode,
)

INVALID = AbortReason.INVALID_PDU_PARAMETER_VALUE
UNEXPECTED = AbortReason.UNEXPECTED_PDU_PARAMETER

APP_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DCMTK_CLASS_UID = "1.2.276.0.7230010.3.0.3.6.9"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

# --- user information sub-items ------------------------------------------------------------------

MAX_LENGTH_16384 = (
    b"\x51\x00"  # item type 51H (maximum length), reserved
    b"\x00\x04"  # item length 4
    b"\x00\x00\x40\x00"  # maximum length received 16384
)
DCMTK_CLASS = (
    b"\x52\x00"  # item type 52H (implementation class UID), reserved
    b"\x00\x1b"  # item length 27
    b"1.2.276.0.7230010.3.0.3.6.9"  # UID, unpadded although odd
)
DCMTK_VERSION = (
    b"\x55\x00"  # item type 55H (implementation version name), reserved
    b"\x00\x0f"  # item length 15
    b"OFFIS_DCMTK_369"  # version name
)
ASYNC_WINDOW = (
    b"\x53\x00"  # item type 53H (asynchronous operations window), reserved
    b"\x00\x04"  # item length 4
    b"\x00\x05"  # maximum number of operations invoked 5
    b"\x00\x01"  # maximum number of operations performed 1
)
ROLE_SELECTION = (
    b"\x54\x00"  # item type 54H (SCP/SCU role selection), reserved
    b"\x00\x1d"  # item length 29 = 2 + 25 + 2
    b"\x00\x19"  # UID length 25
    b"1.2.840.10008.5.1.4.1.1.2"  # SOP class UID (CT Image Storage)
    b"\x00"  # SCU role: not proposed
    b"\x01"  # SCP role: proposed
)
EXTENDED_NEGOTIATION = (
    b"\x56\x00"  # item type 56H (SOP class extended negotiation), reserved
    b"\x00\x20"  # item length 32 = 2 + 27 + 3
    b"\x00\x1b"  # SOP class UID length 27
    b"1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND
    b"\x01\x01\x00"  # service class application information (relational, date-time, no fuzzy)
)
COMMON_EXTENDED_NEGOTIATION = (
    b"\x57\x00"  # item type 57H (SOP class common extended negotiation), sub-item version 0
    b"\x00\x53"  # item length 83 = 2 + 29 + 2 + 17 + 2 + 31
    b"\x00\x1d"  # SOP class UID length 29
    b"1.2.840.10008.5.1.4.1.1.88.40"  # Procedure Log Storage
    b"\x00\x11"  # service class UID length 17
    b"1.2.840.10008.4.2"  # Storage Service Class
    b"\x00\x1f"  # related general SOP class identification length 31
    b"\x00\x1d"  # related general SOP class UID length 29
    b"1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR Storage
)
USER_IDENTITY_RQ = (
    b"\x58\x00"  # item type 58H (user identity RQ), reserved
    b"\x00\x11"  # item length 17 = 2 + 2 + 5 + 2 + 6
    b"\x02"  # user identity type 2: username and passcode
    b"\x01"  # positive response requested
    b"\x00\x05"  # primary field length 5
    b"alice"  # primary field: username
    b"\x00\x06"  # secondary field length 6
    b"s3cret"  # secondary field: passcode
)
USER_IDENTITY_AC = (
    b"\x59\x00"  # item type 59H (user identity AC), reserved
    b"\x00\x08"  # item length 8
    b"\x00\x06"  # server response length 6
    b"ticket"  # server response
)

USER_ITEM_GOLDENS: list[tuple[bytes, UserItem]] = [
    (MAX_LENGTH_16384, MaximumLength(16384)),
    (DCMTK_CLASS, ImplementationClassUID(DCMTK_CLASS_UID)),
    (DCMTK_VERSION, ImplementationVersionName("OFFIS_DCMTK_369")),
    (ASYNC_WINDOW, AsynchronousOperationsWindow(invoked=5, performed=1)),
    (ROLE_SELECTION, RoleSelection(CT_IMAGE_STORAGE, scu_role=False, scp_role=True)),
    (
        EXTENDED_NEGOTIATION,
        SOPClassExtendedNegotiation("1.2.840.10008.5.1.4.1.2.2.1", b"\x01\x01\x00"),
    ),
    (
        COMMON_EXTENDED_NEGOTIATION,
        SOPClassCommonExtendedNegotiation(
            "1.2.840.10008.5.1.4.1.1.88.40",
            "1.2.840.10008.4.2",
            ("1.2.840.10008.5.1.4.1.1.88.22",),
        ),
    ),
    (
        USER_IDENTITY_RQ,
        UserIdentityRQ(UserIdentityType.USERNAME_AND_PASSCODE, True, b"alice", b"s3cret"),
    ),
    (USER_IDENTITY_AC, UserIdentityAC(b"ticket")),
]

# --- items -------------------------------------------------------------------------------------

APP_CONTEXT_ITEM = (
    b"\x10\x00"  # item type 10H (application context), reserved
    b"\x00\x15"  # item length 21
    b"1.2.840.10008.3.1.1.1"  # DICOM application context name
)
ECHO_CONTEXT_RQ = (
    b"\x20\x00"  # item type 20H (presentation context, RQ), reserved
    b"\x00\x2e"  # item length 46 = 4 + 21 + 21
    b"\x01\x00\x00\x00"  # context ID 1, reserved, reserved, reserved
    b"\x30\x00\x00\x11"  # abstract syntax sub-item 30H, reserved, length 17
    b"1.2.840.10008.1.1"  # Verification SOP Class
    b"\x40\x00\x00\x11"  # transfer syntax sub-item 40H, reserved, length 17
    b"1.2.840.10008.1.2"  # Implicit VR Little Endian
)
ECHO_CONTEXT_AC = (
    b"\x21\x00"  # item type 21H (presentation context, AC), reserved
    b"\x00\x19"  # item length 25 = 4 + 21
    b"\x01\x00"  # context ID 1, reserved
    b"\x00\x00"  # result 0 (acceptance), reserved
    b"\x40\x00\x00\x11"  # transfer syntax sub-item 40H, reserved, length 17
    b"1.2.840.10008.1.2"  # Implicit VR Little Endian
)
REJECTED_CONTEXT_AC = (
    b"\x21\x00"  # item type 21H (presentation context, AC), reserved
    b"\x00\x08"  # item length 8
    b"\x03\x00"  # context ID 3, reserved
    b"\x03\x00"  # result 3 (abstract syntax not supported), reserved
    b"\x40\x00\x00\x00"  # transfer syntax sub-item, empty: not significant when rejected
)
DCMTK_USER_INFO = (
    b"\x50\x00"  # item type 50H (user information), reserved
    b"\x00\x3a" + MAX_LENGTH_16384 + DCMTK_CLASS + DCMTK_VERSION  # item length 58 = 8 + 31 + 19
)
DCMTK_USER_INFORMATION = UserInformation(
    (
        MaximumLength(16384),
        ImplementationClassUID(DCMTK_CLASS_UID),
        ImplementationVersionName("OFFIS_DCMTK_369"),
    )
)

ITEM_GOLDENS: list[tuple[bytes, Item | UserItem]] = [
    (APP_CONTEXT_ITEM, ApplicationContextItem(APP_CONTEXT)),
    (ECHO_CONTEXT_RQ, PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,))),
    (ECHO_CONTEXT_AC, PresentationContextAC(1, ContextResult.ACCEPTANCE, IMPLICIT_LE)),
    (
        REJECTED_CONTEXT_AC,
        PresentationContextAC(3, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
    ),
    (DCMTK_USER_INFO, DCMTK_USER_INFORMATION),
    *USER_ITEM_GOLDENS,
]

# --- PDUs --------------------------------------------------------------------------------------

# What DCMTK's `echoscu -aec ANY-SCP localhost 104` sends (DCMTK 3.6.9).
ECHOSCU_RQ = (
    b"\x01\x00"  # PDU type 01H (A-ASSOCIATE-RQ), reserved
    b"\x00\x00\x00\xcd"  # PDU length 205 = 68 + 25 + 50 + 62
    b"\x00\x01"  # protocol version: bit 0 (version 1)
    b"\x00\x00"  # reserved
    b"ANY-SCP         "  # called AE title, 16 bytes, space padded
    b"ECHOSCU         "  # calling AE title, 16 bytes, space padded
    + bytes(32)  # reserved, 32 bytes
    + APP_CONTEXT_ITEM  # 25 bytes
    + ECHO_CONTEXT_RQ  # 50 bytes
    + DCMTK_USER_INFO  # 62 bytes
)
ECHOSCU_ASSOCIATE_RQ = AssociateRQ(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    application_context=APP_CONTEXT,
    presentation_contexts=(PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,)),),
    user_information=DCMTK_USER_INFORMATION,
)

STORESCP_AC = (
    b"\x02\x00"  # PDU type 02H (A-ASSOCIATE-AC), reserved
    b"\x00\x00\x00\xc4"  # PDU length 196 = 68 + 25 + 29 + 12 + 62
    b"\x00\x01"  # protocol version 1
    b"\x00\x00"  # reserved
    b"ANY-SCP         "  # called AE title echoed from the RQ
    b"ECHOSCU         "  # calling AE title echoed from the RQ
    + bytes(32)  # reserved, echoed
    + APP_CONTEXT_ITEM  # 25 bytes
    + ECHO_CONTEXT_AC  # 29 bytes
    + REJECTED_CONTEXT_AC  # 12 bytes
    + DCMTK_USER_INFO  # 62 bytes
)
STORESCP_ASSOCIATE_AC = AssociateAC(
    called_ae_title="ANY-SCP",
    calling_ae_title="ECHOSCU",
    application_context=APP_CONTEXT,
    presentation_contexts=(
        PresentationContextAC(1, ContextResult.ACCEPTANCE, IMPLICIT_LE),
        PresentationContextAC(3, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
    ),
    user_information=DCMTK_USER_INFORMATION,
)

ASSOCIATE_RJ = (
    b"\x03\x00"  # PDU type 03H (A-ASSOCIATE-RJ), reserved
    b"\x00\x00\x00\x04"  # PDU length 4
    b"\x00"  # reserved
    b"\x01"  # result 1: rejected-permanent
    b"\x01"  # source 1: DICOM UL service-user
    b"\x07"  # reason 7: called-AE-title-not-recognized
)
P_DATA_TF = (
    b"\x04\x00"  # PDU type 04H (P-DATA-TF), reserved
    b"\x00\x00\x00\x12"  # PDU length 18 = 10 + 8
    b"\x00\x00\x00\x06"  # PDV item length 6 = context ID + control header + 4 data bytes
    b"\x01"  # presentation context ID 1
    b"\x03"  # message control header: command, last fragment
    b"\x00\x00\x02\x00"  # data (start of a command group length element)
    b"\x00\x00\x00\x04"  # PDV item length 4
    b"\x01"  # presentation context ID 1
    b"\x00"  # message control header: data set, not last
    b"\xca\xfe"  # data
)
RELEASE_RQ = (
    b"\x05\x00"  # PDU type 05H (A-RELEASE-RQ), reserved
    b"\x00\x00\x00\x04"  # PDU length 4
    b"\x00\x00\x00\x00"  # reserved
)
RELEASE_RP = (
    b"\x06\x00"  # PDU type 06H (A-RELEASE-RP), reserved
    b"\x00\x00\x00\x04"  # PDU length 4
    b"\x00\x00\x00\x00"  # reserved
)
ABORT = (
    b"\x07\x00"  # PDU type 07H (A-ABORT), reserved
    b"\x00\x00\x00\x04"  # PDU length 4
    b"\x00\x00"  # reserved, reserved
    b"\x02"  # source 2: DICOM UL service-provider
    b"\x06"  # reason 6: invalid-PDU-parameter value
)

PDU_GOLDENS: list[tuple[bytes, PDU]] = [
    (ECHOSCU_RQ, ECHOSCU_ASSOCIATE_RQ),
    (STORESCP_AC, STORESCP_ASSOCIATE_AC),
    (
        ASSOCIATE_RJ,
        AssociateRJ(
            RejectResult.REJECTED_PERMANENT,
            RejectSource.SERVICE_USER,
            UserRejectReason.CALLED_AE_TITLE_NOT_RECOGNIZED,
        ),
    ),
    (
        P_DATA_TF,
        PDataTF((PDV(1, 0x03, b"\x00\x00\x02\x00"), PDV(1, 0x00, b"\xca\xfe"))),
    ),
    (RELEASE_RQ, ReleaseRQ()),
    (RELEASE_RP, ReleaseRP()),
    (ABORT, Abort(AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE)),
]


def _ids(goldens: Sequence[tuple[bytes, object]]) -> list[str]:
    return [type(obj).__name__ for _, obj in goldens]


@pytest.mark.parametrize(("golden", "expected"), PDU_GOLDENS, ids=_ids(PDU_GOLDENS))
def test_pdu_golden_decodes(golden: bytes, expected: PDU) -> None:
    assert decode(golden) == expected


@pytest.mark.parametrize(("golden", "expected"), PDU_GOLDENS, ids=_ids(PDU_GOLDENS))
def test_pdu_golden_encodes(golden: bytes, expected: PDU) -> None:
    assert encode(expected) == golden


@pytest.mark.parametrize(("golden", "expected"), ITEM_GOLDENS, ids=_ids(ITEM_GOLDENS))
def test_item_golden_decodes(golden: bytes, expected: Item | UserItem) -> None:
    assert decode_item(golden) == expected


@pytest.mark.parametrize(("golden", "expected"), ITEM_GOLDENS, ids=_ids(ITEM_GOLDENS))
def test_item_golden_encodes(golden: bytes, expected: Item | UserItem) -> None:
    assert encode_item(expected) == golden


def test_presentation_context_with_two_transfer_syntaxes() -> None:
    golden = (
        b"\x20\x00"  # item type 20H, reserved
        b"\x00\x4d"  # item length 77 = 4 + (4 + 25) + (4 + 19) + (4 + 17)
        b"\x03\x00\x00\x00"  # context ID 3, reserved x3
        b"\x30\x00\x00\x19"  # abstract syntax sub-item, length 25
        b"1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        b"\x40\x00\x00\x13"  # transfer syntax sub-item, length 19
        b"1.2.840.10008.1.2.1"  # Explicit VR Little Endian
        b"\x40\x00\x00\x11"  # transfer syntax sub-item, length 17
        b"1.2.840.10008.1.2"  # Implicit VR Little Endian
    )
    expected = PresentationContextRQ(3, CT_IMAGE_STORAGE, (EXPLICIT_LE, IMPLICIT_LE))
    assert decode_item(golden) == expected
    assert encode_item(expected) == golden


def test_dcmtk_echoscu_request_fields() -> None:
    rq = decode(ECHOSCU_RQ)
    assert isinstance(rq, AssociateRQ)
    assert rq.protocol_version == 1
    assert rq.user_information.max_length == 16384
    assert rq.user_information.implementation_class_uid == DCMTK_CLASS_UID
    assert rq.user_information.implementation_version_name == "OFFIS_DCMTK_369"
    assert rq.presentation_contexts[0].transfer_syntaxes == (IMPLICIT_LE,)


def test_user_information_with_every_sub_item_and_an_unknown_one() -> None:
    unknown = (
        b"\x5a\x00"  # item type 5AH (not defined by this codec), reserved
        b"\x00\x03"  # item length 3
        b"abc"  # opaque content, kept as received
    )
    body = b"".join(golden for golden, _ in USER_ITEM_GOLDENS) + unknown
    golden = b"\x50\x00" + struct.pack(">H", len(body)) + body  # item 50H, reserved, length
    expected = UserInformation(
        (*(item for _, item in USER_ITEM_GOLDENS), UnknownUserItem(0x5A, b"abc"))
    )
    assert decode_item(golden) == expected
    assert encode_item(expected) == golden
    assert expected.max_length == 16384
    assert expected.async_window == AsynchronousOperationsWindow(5, 1)
    assert expected.role_selections == (RoleSelection(CT_IMAGE_STORAGE, False, True),)
    assert len(expected.extended_negotiations) == 1
    assert len(expected.common_extended_negotiations) == 1
    assert expected.user_identity_rq is not None
    assert expected.user_identity_rq.primary_field == b"alice"
    assert expected.user_identity_ac == UserIdentityAC(b"ticket")


def test_user_information_properties_when_absent() -> None:
    empty = UserInformation(())
    assert empty.max_length is None
    assert empty.implementation_class_uid is None
    assert empty.implementation_version_name is None
    assert empty.async_window is None
    assert empty.role_selections == ()
    assert empty.extended_negotiations == ()
    assert empty.common_extended_negotiations == ()
    assert empty.user_identity_rq is None
    assert empty.user_identity_ac is None


def test_user_identity_repr_hides_credentials() -> None:
    text = repr(UserIdentityRQ(UserIdentityType.USERNAME_AND_PASSCODE, False, b"alice", b"pw42"))
    assert "alice" not in text
    assert "pw42" not in text
    assert "5 bytes" in text


def test_pdv_flags() -> None:
    assert PDV(1, 0x03, b"").is_command and PDV(1, 0x03, b"").is_last
    assert not PDV(1, 0x00, b"").is_command and not PDV(1, 0x00, b"").is_last
    assert PDV(1, 0x01, b"").is_command and not PDV(1, 0x01, b"").is_last
    assert not PDV(1, 0x02, b"").is_command and PDV(1, 0x02, b"").is_last
    assert "100000 bytes" in repr(PDV(1, 0, bytes(100_000)))


# --- tolerance on content ----------------------------------------------------------------------


def _associate(pdu_type: int, items: bytes, called: bytes = b"ANY-SCP".ljust(16)) -> bytes:
    body = (
        b"\x00\x01\x00\x00"  # protocol version 1, reserved
        + called  # called AE title
        + b"ECHOSCU".ljust(16)  # calling AE title
        + bytes(32)  # reserved
        + items
    )
    return struct.pack(">BxL", pdu_type, len(body)) + body


def _item(item_type: int, body: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(body)) + body


def test_unknown_item_types_are_skipped() -> None:
    # PS3.8 9.3: "Items of unrecognized types shall be ignored and skipped."
    unknown = _item(0x60, b"future")
    context = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1.2.840.10008.1.1") + unknown)
    context += _item(0x20, b"\x03\x00\x00\x00" + _item(0x30, b"1.2") + _item(0x40, b"1.2.3"))
    data = _associate(0x01, APP_CONTEXT_ITEM + unknown + context + unknown + DCMTK_USER_INFO)
    rq = decode(data)
    assert isinstance(rq, AssociateRQ)
    assert rq.presentation_contexts == (
        PresentationContextRQ(1, VERIFICATION, ()),
        PresentationContextRQ(3, "1.2", ("1.2.3",)),
    )
    assert rq.user_information == DCMTK_USER_INFORMATION


def test_padded_uids_and_ae_titles_are_stripped() -> None:
    padded_context = (
        b"\x20\x00\x00\x30"  # item 20H, reserved, length 48
        b"\x01\x00\x00\x00"  # context ID 1, reserved x3
        b"\x30\x00\x00\x12"  # abstract syntax sub-item, length 18
        b"1.2.840.10008.1.1\x00"  # UID padded with NUL to even length
        b"\x40\x00\x00\x12"  # transfer syntax sub-item, length 18
        b"1.2.840.10008.1.2 "  # UID padded with a space
    )
    data = _associate(
        0x01, APP_CONTEXT_ITEM + padded_context + DCMTK_USER_INFO, b"  ANY-SCP".ljust(16)
    )
    rq = decode(data)
    assert isinstance(rq, AssociateRQ)
    assert rq.called_ae_title == "ANY-SCP"
    assert rq.presentation_contexts == (PresentationContextRQ(1, VERIFICATION, (IMPLICIT_LE,)),)
    assert decode_item(b"\x52\x00\x00\x04" + b"1.2\x00") == ImplementationClassUID("1.2")


def test_content_is_not_judged() -> None:
    # Empty AE titles, protocol version 2, no presentation contexts: negotiation's business.
    body = b"\x00\x02\x00\x00" + bytes(16) + b" " * 16 + bytes(32)
    body += APP_CONTEXT_ITEM + DCMTK_USER_INFO
    ac = decode(struct.pack(">BxL", 0x02, len(body)) + body)
    assert ac == AssociateAC("", "", APP_CONTEXT, (), DCMTK_USER_INFORMATION, protocol_version=2)


def test_unknown_codes_are_kept() -> None:
    abort = decode(b"\x07\x00\x00\x00\x00\x04\x00\x00\x05\x2a")
    assert isinstance(abort, Abort)
    assert abort.source == 5 and abort.reason == 42
    assert abort.reason.name == "UNKNOWN_42"
    assert encode(abort) == b"\x07\x00\x00\x00\x00\x04\x00\x00\x05\x2a"
    context = decode_item(b"\x21\x00\x00\x04\x05\x00\x09\x00")  # result 9, no TS sub-item
    assert context == PresentationContextAC(5, ContextResult(9), "")


def test_rejected_context_without_transfer_syntax_sub_item() -> None:
    golden = (
        b"\x21\x00\x00\x04"  # item 21H, reserved, length 4
        b"\x07\x00\x04\x00"  # context ID 7, reserved, result 4 (TS not supported), reserved
    )
    assert decode_item(golden) == PresentationContextAC(
        7, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""
    )


def test_nonzero_role_bytes_mean_supported() -> None:
    item = decode_item(b"\x54\x00\x00\x07" + b"\x00\x03" + b"1.2" + b"\x02\xff")
    assert item == RoleSelection("1.2", True, True)


def test_decode_accepts_memoryview_and_bytearray() -> None:
    assert decode(memoryview(P_DATA_TF)) == decode(P_DATA_TF)
    assert decode(bytearray(ECHOSCU_RQ)) == ECHOSCU_ASSOCIATE_RQ
    pdu = decode(memoryview(b"xx" + P_DATA_TF)[2:])
    assert isinstance(pdu, PDataTF)
    assert all(type(pdv.data) is bytes for pdv in pdu.pdvs)


# --- structural errors -------------------------------------------------------------------------


def _reason(data: bytes) -> AbortReason:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    return info.value.reason


def _item_reason(data: bytes) -> AbortReason:
    with pytest.raises(RemoteProtocolError) as info:
        decode_item(data)
    return info.value.reason


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x10, 0xFF])
def test_unknown_pdu_type(pdu_type: int) -> None:
    assert _reason(bytes([pdu_type]) + b"\x00\x00\x00\x00\x04" + bytes(4)) == (
        AbortReason.UNRECOGNIZED_PDU
    )


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x05\x00\x00\x00\x00",  # header cut short
        RELEASE_RQ[:-1],  # length says 4, 3 follow
        RELEASE_RQ + b"\x00",  # trailing byte inside what should be one PDU
        b"\x05\x00\x00\x00\x00\x05" + bytes(5),  # A-RELEASE-RQ must have length 4
        b"\x06\x00\x00\x00\x00\x00",  # A-RELEASE-RP of length 0
        b"\x07\x00\x00\x00\x00\x03" + bytes(3),  # A-ABORT of length 3
        b"\x03\x00\x00\x00\x00\x05" + bytes(5),  # A-ASSOCIATE-RJ of length 5
        b"\x01\x00\x00\x00\x00\x10" + bytes(16),  # A-ASSOCIATE-RQ shorter than fixed fields
    ],
)
def test_inconsistent_pdu_lengths(data: bytes) -> None:
    assert _reason(data) == INVALID


@pytest.mark.parametrize(
    ("items", "reason"),
    [
        (APP_CONTEXT_ITEM + ECHO_CONTEXT_RQ + DCMTK_USER_INFO + b"\x60\x00\x00", INVALID),
        (APP_CONTEXT_ITEM + ECHO_CONTEXT_RQ + DCMTK_USER_INFO[:-1], INVALID),
        (APP_CONTEXT_ITEM + ECHO_CONTEXT_RQ, INVALID),  # no user information
        (ECHO_CONTEXT_RQ.replace(b"\x20", b"\x60", 1) + DCMTK_USER_INFO, UNEXPECTED),
        (_item(0x60, b"") + DCMTK_USER_INFO, UNEXPECTED),  # user info before app context
        (_item(0x60, b""), INVALID),  # no application context
        (APP_CONTEXT_ITEM + APP_CONTEXT_ITEM + DCMTK_USER_INFO, UNEXPECTED),
        (APP_CONTEXT_ITEM + DCMTK_USER_INFO + DCMTK_USER_INFO, UNEXPECTED),
        (APP_CONTEXT_ITEM + DCMTK_USER_INFO + ECHO_CONTEXT_RQ, UNEXPECTED),
        (APP_CONTEXT_ITEM + ECHO_CONTEXT_AC + DCMTK_USER_INFO, UNEXPECTED),  # AC item in RQ
        (APP_CONTEXT_ITEM + MAX_LENGTH_16384 + DCMTK_USER_INFO, UNEXPECTED),  # sub-item at top
        (APP_CONTEXT_ITEM + _item(0x40, b"1.2") + DCMTK_USER_INFO, UNEXPECTED),
    ],
    ids=[
        "truncated-item-header",
        "item-past-end",
        "no-user-info",
        "context-before-app-context",
        "user-info-before-app-context",
        "no-app-context",
        "app-context-twice",
        "user-info-twice",
        "context-after-user-info",
        "ac-context-in-rq",
        "user-sub-item-at-top",
        "transfer-syntax-at-top",
    ],
)
def test_associate_rq_structure(items: bytes, reason: AbortReason) -> None:
    assert _reason(_associate(0x01, items)) == reason


def test_associate_ac_rejects_rq_context() -> None:
    assert _reason(_associate(0x02, APP_CONTEXT_ITEM + ECHO_CONTEXT_RQ + DCMTK_USER_INFO)) == (
        UNEXPECTED
    )


U1 = b"\x00\x01" + b"1"  # 2-byte length, then a 1-character UID
U2 = b"\x00\x01" + b"2"


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (b"\x20\x00\x00\x03\x01\x00\x00", INVALID),  # context shorter than its fixed fields
        (_item(0x20, b"\x01\x00\x00\x00"), INVALID),  # no abstract syntax
        (_item(0x20, b"\x01\x00\x00\x00" + _item(0x40, b"1.2")), UNEXPECTED),  # TS first
        (
            _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1") + _item(0x30, b"2")),
            UNEXPECTED,
        ),
        (_item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1") + MAX_LENGTH_16384), UNEXPECTED),
        (_item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1")[:-1]), INVALID),  # sub-item past end
        (_item(0x21, b"\x01\x00\x00\x00"), INVALID),  # accepted without a transfer syntax
        (_item(0x21, b"\x01\x00\x00\x00" + _item(0x40, b"1") + _item(0x40, b"2")), UNEXPECTED),
        (_item(0x21, b"\x01\x00\x00\x00" + _item(0x30, b"1") + _item(0x40, b"2")), UNEXPECTED),
        (_item(0x21, b"\x01\x00"), INVALID),
        (MAX_LENGTH_16384[:-1], INVALID),  # item length says 4, 3 follow
        (_item(0x51, b"\x00\x00\x40"), INVALID),  # maximum length of 3 bytes
        (_item(0x53, b"\x00\x01"), INVALID),  # async window of 2 bytes
        (_item(0x54, b"\x00\x05" + b"1.2"), INVALID),  # UID length past end
        (_item(0x54, b"\x00\x03" + b"1.2" + b"\x01"), INVALID),  # one role byte missing
        (_item(0x54, b"\x00\x03" + b"1.2" + b"\x01\x01\x01"), INVALID),  # one role byte too many
        (_item(0x54, b"\x00"), INVALID),  # UID length truncated
        (_item(0x56, b"\x00\x09" + b"1.2"), INVALID),  # UID length past end
        (COMMON_EXTENDED_NEGOTIATION[:-1], INVALID),
        (_item(0x57, COMMON_EXTENDED_NEGOTIATION[4:] + b"\x00"), INVALID),  # trailing byte
        (_item(0x57, U1 + U2 + b"\x00\x03" + b"\x00\x05" + b"3"), INVALID),  # inner UID past block
        (_item(0x57, U1 + U2), INVALID),  # related length missing
        (_item(0x58, b"\x01"), INVALID),
        (_item(0x58, b"\x01\x00" + b"\x00\x02" + b"ab"), INVALID),  # secondary length missing
        (
            _item(0x58, b"\x01\x00" + b"\x00\x02" + b"ab" + b"\x00\x00" + b"x"),
            INVALID,
        ),  # trailing byte
        (_item(0x59, b"\x00\x04" + b"ab"), INVALID),  # response past end
        (_item(0x59, b"\x00\x00" + b"x"), INVALID),  # trailing byte
        (_item(0x50, MAX_LENGTH_16384 + MAX_LENGTH_16384), UNEXPECTED),  # repeated singleton
        (_item(0x50, DCMTK_VERSION + DCMTK_VERSION), UNEXPECTED),
        (_item(0x30, b"1.2"), UNEXPECTED),  # sub-item on its own
        (_item(0x60, b""), AbortReason.UNRECOGNIZED_PDU_PARAMETER),
        (b"\x51\x00\x00", INVALID),
    ],
)
def test_item_structure(item: bytes, reason: AbortReason) -> None:
    assert _item_reason(item) == reason


def test_repeatable_user_sub_items_may_repeat() -> None:
    info = decode_item(_item(0x50, ROLE_SELECTION + ROLE_SELECTION + EXTENDED_NEGOTIATION * 2))
    assert isinstance(info, UserInformation)
    assert len(info.role_selections) == 2
    assert len(info.extended_negotiations) == 2


@pytest.mark.parametrize(
    "data",
    [
        b"\x04\x00\x00\x00\x00\x00",  # no PDV at all
        b"\x04\x00\x00\x00\x00\x03\x00\x00\x00",  # PDV header cut short
        b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x01\x01\x03",  # item length 1 < 2
        b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x00\x01\x03",  # item length 0
        b"\x04\x00\x00\x00\x00\x07\x00\x00\x00\x04\x01\x03\x00",  # PDV past its PDU
        b"\x04\x00\x00\x00\x00\x0d" + P_DATA_TF[6:16] + b"\x00\x00\x00",  # 2nd PDV header cut
        b"\x04\x00\x00\x00\x00\x0a\x00\x00\x00\x02\x01\x03\x00\x00\x00\x03",
    ],
)
def test_p_data_structure(data: bytes) -> None:
    assert _reason(data) == INVALID


def test_p_data_empty_pdv_is_valid() -> None:
    pdu = decode(b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x01\x02")
    assert pdu == PDataTF((PDV(1, 0x02, b""),))


# --- local misuse on encode --------------------------------------------------------------------


@pytest.mark.parametrize(
    "pdu",
    [
        AssociateRQ("A" * 17, "B", APP_CONTEXT, (), DCMTK_USER_INFORMATION),
        AssociateRQ("A", "\u20ac", APP_CONTEXT, (), DCMTK_USER_INFORMATION),
        AssociateRQ(
            "A", "B", APP_CONTEXT, (PresentationContextRQ(257, "1", ()),), UserInformation(())
        ),
        PDataTF(()),
        PDataTF((PDV(256, 0, b""),)),
        Abort(AbortSource.SERVICE_USER, AbortReason(300)),
    ],
)
def test_encode_rejects_unencodable_pdus(pdu: PDU) -> None:
    with pytest.raises(LocalProtocolError):
        encode(pdu)


@pytest.mark.parametrize(
    "item",
    [
        MaximumLength(2**32),
        AsynchronousOperationsWindow(65536, 0),
        ImplementationClassUID("1" * 70_000),
        UnknownUserItem(0x51, b"\x00\x00\x00\x00"),
        UserInformation((SOPClassExtendedNegotiation("1", bytes(65_535)),)),
    ],
)
def test_encode_rejects_unencodable_items(item: Item | UserItem) -> None:
    with pytest.raises(LocalProtocolError):
        encode_item(item)
