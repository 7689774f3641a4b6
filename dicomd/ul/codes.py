"""Wire codes of the DICOM Upper Layer (PS3.8 section 9.3) and the protocol error types.

Owns: the numeric codes that appear in PDUs and the two exceptions of the protocol core.
Must not know: sockets, asyncio, DIMSE.

Codes that a peer sends are `OpenIntEnum`s: an unknown value decodes to a pseudo-member named
`UNKNOWN_<n>` instead of failing, so that a decoder can keep what it does not understand and the
caller decides whether it matters (dicom-rs' `ul` crate does the same with its reason codes).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class OpenIntEnum(IntEnum):
    """An IntEnum that maps unknown values to pseudo-members instead of raising ValueError."""

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member

    @property
    def known(self) -> bool:
        return self._name_ in type(self).__members__


class PDUType(OpenIntEnum):
    """PS3.8 Table 9-11 and following: the first byte of every PDU."""

    ASSOCIATE_RQ = 0x01
    ASSOCIATE_AC = 0x02
    ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    RELEASE_RQ = 0x05
    RELEASE_RP = 0x06
    ABORT = 0x07


class ItemType(OpenIntEnum):
    """PS3.8 9.3.2-9.3.3 variable items and PS3.7 Annex D.3.3 user information sub-items."""

    APPLICATION_CONTEXT = 0x10
    PRESENTATION_CONTEXT_RQ = 0x20
    PRESENTATION_CONTEXT_AC = 0x21
    ABSTRACT_SYNTAX = 0x30
    TRANSFER_SYNTAX = 0x40
    USER_INFORMATION = 0x50
    MAXIMUM_LENGTH = 0x51
    IMPLEMENTATION_CLASS_UID = 0x52
    ASYNCHRONOUS_OPERATIONS_WINDOW = 0x53
    ROLE_SELECTION = 0x54
    IMPLEMENTATION_VERSION_NAME = 0x55
    SOP_CLASS_EXTENDED_NEGOTIATION = 0x56
    SOP_CLASS_COMMON_EXTENDED_NEGOTIATION = 0x57
    USER_IDENTITY_RQ = 0x58
    USER_IDENTITY_AC = 0x59


class RejectResult(OpenIntEnum):
    """A-ASSOCIATE-RJ Result field (PS3.8 Table 9-21)."""

    REJECTED_PERMANENT = 1
    REJECTED_TRANSIENT = 2


class RejectSource(OpenIntEnum):
    """A-ASSOCIATE-RJ Source field (PS3.8 Table 9-21)."""

    SERVICE_USER = 1
    SERVICE_PROVIDER_ACSE = 2
    SERVICE_PROVIDER_PRESENTATION = 3


class UserRejectReason(OpenIntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. when Source is SERVICE_USER."""

    NO_REASON_GIVEN = 1
    APPLICATION_CONTEXT_NAME_NOT_SUPPORTED = 2
    CALLING_AE_TITLE_NOT_RECOGNIZED = 3
    CALLED_AE_TITLE_NOT_RECOGNIZED = 7


class AcseRejectReason(OpenIntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. when Source is SERVICE_PROVIDER_ACSE."""

    NO_REASON_GIVEN = 1
    PROTOCOL_VERSION_NOT_SUPPORTED = 2


class PresentationRejectReason(OpenIntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. when Source is SERVICE_PROVIDER_PRESENTATION."""

    TEMPORARY_CONGESTION = 1
    LOCAL_LIMIT_EXCEEDED = 2


class AbortSource(OpenIntEnum):
    """A-ABORT Source field (PS3.8 Table 9-26)."""

    SERVICE_USER = 0
    RESERVED = 1
    SERVICE_PROVIDER = 2


class AbortReason(OpenIntEnum):
    """A-ABORT Reason/Diag. field, meaningful when Source is SERVICE_PROVIDER (PS3.8 Table 9-26)."""

    NOT_SPECIFIED = 0
    UNRECOGNIZED_PDU = 1
    UNEXPECTED_PDU = 2
    RESERVED = 3
    UNRECOGNIZED_PDU_PARAMETER = 4
    UNEXPECTED_PDU_PARAMETER = 5
    INVALID_PDU_PARAMETER_VALUE = 6


class ContextResult(OpenIntEnum):
    """Presentation context Result/Reason in the A-ASSOCIATE-AC (PS3.8 Table 9-18)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


class UserIdentityType(OpenIntEnum):
    """User Identity Type of the user identity negotiation sub-item (PS3.7 Table D.3-14)."""

    USERNAME = 1
    USERNAME_AND_PASSCODE = 2
    KERBEROS = 3
    SAML = 4
    JWT = 5


class RemoteProtocolError(Exception):
    """The peer broke the protocol; the runner answers with an A-ABORT carrying `reason`."""

    def __init__(self, message: str, reason: AbortReason = AbortReason.NOT_SPECIFIED) -> None:
        super().__init__(message)
        self.reason = reason


class LocalProtocolError(Exception):
    """We tried to do something the protocol does not allow in the current state: a bug."""
