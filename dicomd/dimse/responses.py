"""The failure response to any DIMSE request, for when no service will handle it (PS3.7 9.1-9.3)."""

from __future__ import annotations

from dicomd.dimse.messages import (
    CEchoRQ,
    CEchoRSP,
    CFindRQ,
    CFindRSP,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CStoreRQ,
    CStoreRSP,
    Message,
)


def failure_response(request: Message, status: int, comment: str | None = None) -> Message | None:
    """The response message carrying `status` for `request`; None if it is not a request."""
    if comment is not None:
        comment = comment[:64]  # ErrorComment is LO: 64 characters at most (PS3.5 6.2)
    if isinstance(request, CEchoRQ):
        return CEchoRSP(request.message_id, request.affected_sop_class_uid, status, comment)
    if isinstance(request, CStoreRQ):
        return CStoreRSP(
            request.message_id,
            request.affected_sop_class_uid,
            request.affected_sop_instance_uid,
            status,
            comment,
        )
    if isinstance(request, CFindRQ):
        return CFindRSP(request.message_id, request.affected_sop_class_uid, status, False, comment)
    if isinstance(request, CGetRQ):
        return CGetRSP(
            request.message_id, request.affected_sop_class_uid, status, False, error_comment=comment
        )
    if isinstance(request, CMoveRQ):
        return CMoveRSP(
            request.message_id, request.affected_sop_class_uid, status, False, error_comment=comment
        )
    return None
