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


class DatasetSink(Protocol):
    """Where a streamed dataset's fragments go as they arrive (C-STORE: a spool file)."""

    async def write(self, data: bytes) -> None:
        """Take the next fragment; the runner stops reading the peer until this returns."""

    async def discard(self) -> None:
        """The association ended before the last fragment: forget everything written."""


@dataclass(frozen=True, slots=True)
class Request:
    context: AcceptedContext
    command: Message
    # The dataset when it was held in memory; None when it has none or it went to `sink`.
    dataset: bytes | None
    calling_ae_title: str
    called_ae_title: str
    sink: DatasetSink | None = None


class Responder(Protocol):
    async def respond(self, message: Message, dataset: bytes | None = None) -> None:
        """Send one DIMSE message (a response, or a pending response) on the request's context."""

    @property
    def cancel_requested(self) -> bool:
        """A C-CANCEL-RQ for this operation has arrived (PS3.7 9.3.2.3)."""


Handler = Callable[[Request, Responder], Awaitable[None]]
# Opens the sink for a request's dataset, given (context, command, calling AE title).
SinkFactory = Callable[[AcceptedContext, Message, str], Awaitable[DatasetSink]]
