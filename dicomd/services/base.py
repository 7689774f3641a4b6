"""What a DIMSE service sees of an association: the request, and a way to answer it.

Owns: the small interface between the association runner (`net`) and the services. Services never
import `net`; the runner hands them a `Responder`, and C-MOVE will get its outbound associations
through a callable the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from dicomd.dimse.messages import Message
from dicomd.ul.negotiation import AcceptedContext


@dataclass(frozen=True, slots=True)
class Request:
    context: AcceptedContext
    command: Message
    dataset: bytes | None
    calling_ae_title: str
    called_ae_title: str


class Responder(Protocol):
    async def respond(self, message: Message, dataset: bytes | None = None) -> None:
        """Send one DIMSE message (a response, or a pending response) on the request's context."""

    @property
    def cancel_requested(self) -> bool:
        """A C-CANCEL-RQ for this operation has arrived (PS3.7 9.3.2.3)."""


Handler = Callable[[Request, Responder], Awaitable[None]]
