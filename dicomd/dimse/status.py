"""DIMSE status codes and their categories.

Owns: the numeric Status (0000,0900) values the C-ECHO, C-STORE, C-FIND, C-GET and C-MOVE
services use, and the mapping of any 16-bit status to its category.
Must not know: messages, PDUs, sockets, which service is asking.

References: PS3.7 Annex C (status type encoding, general statuses), PS3.7 9.1.x; PS3.4 B.2.3
(Storage), C.4.1.1.4 (C-FIND), C.4.2.1.5 (C-MOVE), C.4.3.1.4 (C-GET).

Several services give the same code different names (0xA900, 0xB000); they are plain ints, not an
enum, so that both names can exist without one silently becoming an alias of the other, and so
that any code a peer sends is representable.
"""

from __future__ import annotations

from enum import Enum
from typing import Final


class StatusCategory(Enum):
    """The status types of PS3.7 Annex C."""

    SUCCESS = "success"
    WARNING = "warning"
    FAILURE = "failure"
    CANCEL = "cancel"
    PENDING = "pending"


# --- PS3.7 Annex C: statuses common to all services ----------------------------------------------
SUCCESS: Final = 0x0000
WARNING: Final = 0x0001  # C.3: a general warning, e.g. requested optional attributes not supported
ATTRIBUTE_LIST_ERROR: Final = 0x0107  # C.4.2: warning despite the 01xx range
ATTRIBUTE_VALUE_OUT_OF_RANGE: Final = 0x0116  # C.4.3: warning despite the 01xx range
NO_SUCH_ATTRIBUTE: Final = 0x0105
INVALID_ATTRIBUTE_VALUE: Final = 0x0106
PROCESSING_FAILURE: Final = 0x0110
DUPLICATE_SOP_INSTANCE: Final = 0x0111
NO_SUCH_SOP_INSTANCE: Final = 0x0112
NO_SUCH_EVENT_TYPE: Final = 0x0113
NO_SUCH_ARGUMENT: Final = 0x0114
INVALID_ARGUMENT_VALUE: Final = 0x0115
INVALID_OBJECT_INSTANCE: Final = 0x0117
NO_SUCH_SOP_CLASS: Final = 0x0118
CLASS_INSTANCE_CONFLICT: Final = 0x0119
MISSING_ATTRIBUTE: Final = 0x0120
MISSING_ATTRIBUTE_VALUE: Final = 0x0121
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
NO_SUCH_ACTION: Final = 0x0123
REFUSED_NOT_AUTHORIZED: Final = 0x0124
DUPLICATE_INVOCATION: Final = 0x0210
UNRECOGNIZED_OPERATION: Final = 0x0211
MISTYPED_ARGUMENT: Final = 0x0212
RESOURCE_LIMITATION: Final = 0x0213
CANCEL: Final = 0xFE00
PENDING: Final = 0xFF00
PENDING_WARNING: Final = 0xFF01  # C-FIND: matches continue, optional keys not supported

# --- PS3.4 B.2.3: Storage (C-STORE) --------------------------------------------------------------
OUT_OF_RESOURCES: Final = 0xA700  # A7xx: Refused, out of resources
DATASET_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900  # A9xx: Error
CANNOT_UNDERSTAND: Final = 0xC000  # Cxxx: Error
COERCION: Final = 0xB000  # Warning: coercion of data elements
ELEMENTS_DISCARDED: Final = 0xB006  # Warning: elements discarded
DATASET_MISMATCH_WARNING: Final = 0xB007  # Warning: data set does not match SOP class

# --- PS3.4 C.4.1.1.4 / C.4.2.1.5 / C.4.3.1.4: Query/Retrieve (C-FIND, C-MOVE, C-GET) ------------
OUT_OF_RESOURCES_MATCHES: Final = 0xA701  # unable to calculate number of matches
OUT_OF_RESOURCES_SUBOPS: Final = 0xA702  # unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN: Final = 0xA801
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS: Final = 0xA900
UNABLE_TO_PROCESS: Final = 0xC001  # any Cxxx means "unable to process"; this is the one we send
SUBOPS_WARNING: Final = 0xB000  # sub-operations complete, one or more failures or warnings

_WARNING_CODES: Final = frozenset({WARNING, ATTRIBUTE_LIST_ERROR, ATTRIBUTE_VALUE_OUT_OF_RANGE})
_PENDING_CODES: Final = frozenset({PENDING, PENDING_WARNING})


def category(status: int) -> StatusCategory:
    """Classify a status per PS3.7 Annex C.

    Anything that is not success, warning, cancel or pending is a failure: Axxx, Cxxx, 01xx (but
    0107 and 0116), 02xx, and also the codes the standard leaves unassigned, because a requestor
    must not take an unknown code for success.
    """
    if not 0 <= status <= 0xFFFF:
        raise ValueError(f"status {status!r} does not fit the 16-bit Status (0000,0900)")
    if status == SUCCESS:
        return StatusCategory.SUCCESS
    if status in _PENDING_CODES:
        return StatusCategory.PENDING
    if status == CANCEL:
        return StatusCategory.CANCEL
    if status in _WARNING_CODES or status & 0xF000 == 0xB000:
        return StatusCategory.WARNING
    return StatusCategory.FAILURE
