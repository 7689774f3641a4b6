"""What a DIMSE service sees of an association: the request, and a way to answer it.

Owns: the small interface between the association runner (`net`) and the services. Services never
import `net`; the runner hands them a `Responder`, and C-MOVE will get its outbound associations
through a callable the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from dicomd.config import RemoteAE
from dicomd.dimse.messages import Message
from dicomd.ul.negotiation import AcceptedContext, ProposedContext


@dataclass(frozen=True, slots=True)
class FileSlice:
    """A dataset to send that lives in a file (a stored instance): streamed a chunk at a time.

    `data`, when set, is all of the slice's bytes, read already (a small file, read whole in the
    trip to a thread that found its dataset offset): the sender then does not open the file."""

    path: Path
    offset: int
    length: int
    data: bytes | memoryview | None = None


class IncompleteMessage(ConnectionError):
    """A message could not be sent whole: its stored file failed to read after part of it was on
    the wire. PDUs already sent cannot be taken back, and the peer's reassembly (PS3.8 Annex E.2:
    fragments up to the one marked last) would take whatever came next as the rest of this data
    set, so the runner has aborted the association (A-ABORT) before raising this."""


class ResponseTimeout(TimeoutError):
    """The peer did not answer a request we sent within the DIMSE timeout. Its answer may still
    come; the association that sent the request drops it then (see AcceptorAssociation)."""


# What a DIMSE message carries as its dataset: nothing, bytes in memory, or a stored file's tail.
DatasetSource = bytes | FileSlice | None


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

    def framer(self) -> Callable[[bytes], bytes]:
        """A data set -> the wire bytes of its PDUs on the request's context, for respond_each()."""

    async def respond_each(self, message: Message, framed: Sequence[bytes]) -> None:
        """Send `message` once with each data set (framer()'s bytes), in order: a run of pending
        responses (C-FIND's page) queued together, the command encoded once."""

    @property
    def cancel_requested(self) -> bool:
        """A C-CANCEL-RQ for this operation has arrived (PS3.7 9.3.2.3)."""

    async def wait_cancel(self) -> None:
        """Returns once a C-CANCEL-RQ for this operation has arrived (at once if it has)."""

    @property
    def contexts(self) -> Mapping[int, AcceptedContext]:
        """The presentation contexts accepted on this association."""

    def next_message_id(self) -> int:
        """A Message ID for a request we send on this association (C-GET sub-operations)."""

    async def request(self, context_id: int, message: Message, dataset: DatasetSource) -> Message:
        """Send a request to the peer on this association and return its response (C-GET's
        C-STORE sub-operations, PS3.4 C.4.3.3); ResponseTimeout if none comes in time."""


class Outbound(Protocol):
    """An association we opened to another AE (C-MOVE's destination)."""

    @property
    def contexts(self) -> Mapping[int, AcceptedContext]: ...

    def next_message_id(self) -> int: ...

    @property
    def closed(self) -> bool:
        """The association is over (the peer aborted it, or the connection was lost)."""

    async def request(self, context_id: int, message: Message, dataset: DatasetSource) -> Message:
        """Send a request and return the peer's response."""

    async def release(self) -> None: ...

    async def abort(self) -> None: ...


# Opens an association from us to a configured remote AE, proposing these contexts.
OpenOutbound = Callable[[RemoteAE, Sequence[ProposedContext]], Awaitable[Outbound]]


Handler = Callable[[Request, Responder], Awaitable[None]]
# Opens the sink for a request's dataset, given (context, command, calling AE title).
SinkFactory = Callable[[AcceptedContext, Message, str], Awaitable[DatasetSink]]
