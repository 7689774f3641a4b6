"""Verification SOP Class as SCP (PS3.4 Annex A): answer C-ECHO-RQ with Success."""

from __future__ import annotations

from dicomd.dimse import status
from dicomd.dimse.messages import CEchoRQ, CEchoRSP
from dicomd.services.base import Request, Responder

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"


async def handle_echo(request: Request, responder: Responder) -> None:
    command = request.command
    assert isinstance(command, CEchoRQ)
    await responder.respond(
        CEchoRSP(
            message_id_being_responded_to=command.message_id,
            affected_sop_class_uid=command.affected_sop_class_uid,
            status=status.SUCCESS,
        )
    )
