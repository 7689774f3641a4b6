"""One DICOM Upper Layer connection as a sans-I/O object: bytes and primitives in, events and bytes out.

Owns: the PS3.8 state of one association (the table in `fsm`), the PDU reader, the ARTIM timer.
Must not know: sockets, asyncio, DIMSE. The runner feeds it what the transport delivered
(`receive_data`, `connection_lost`), asks for what happened (`next_event`), passes the local user's
primitives (`request`, `accept`, `reject`, `send_data`, `release`, `release_response`, `abort`), and
writes out what `data_to_send()` returns. Time is an input: the ARTIM deadline is exposed as
`deadline` and its expiry is delivered with `handle_timeout()`; the clock is a constructor argument so
tests drive it without sleeping (as aioquic does).

A peer's protocol fault is detected in exactly one place, where received bytes become PDUs
(`_next_pdu`); it becomes PS3.8 event EVT19 and the action the table prescribes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from dicomd.ul import fsm
from dicomd.ul.codes import (
    AbortReason,
    AbortSource,
    LocalProtocolError,
    RemoteProtocolError,
)
from dicomd.ul.fsm import Action, Event, State
from dicomd.ul.pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
    encode,
)
from dicomd.ul.reader import PDUReader


class Role(Enum):
    REQUESTOR = "requestor"
    ACCEPTOR = "acceptor"


# -- events handed to the runner (the indication and confirmation primitives of PS3.8 7) --------


@dataclass(frozen=True, slots=True)
class AssociationRequested:
    """A-ASSOCIATE indication: the application must accept() or reject()."""

    request: AssociateRQ


@dataclass(frozen=True, slots=True)
class AssociationAccepted:
    """A-ASSOCIATE confirmation (accept), requestor side."""

    response: AssociateAC


@dataclass(frozen=True, slots=True)
class AssociationRejected:
    """A-ASSOCIATE-RJ received (requestor), or sent by the provider's own screening (acceptor)."""

    rejection: AssociateRJ
    local: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    """P-DATA indication."""

    pdu: PDataTF


@dataclass(frozen=True, slots=True)
class ReleaseRequested:
    """A-RELEASE indication: the application answers with release_response()."""

    collision: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseConfirmed:
    """A-RELEASE confirmation: the association ended normally."""


@dataclass(frozen=True, slots=True)
class Aborted:
    """A-ABORT or A-P-ABORT indication. `local` is True when we sent the abort ourselves."""

    source: AbortSource
    reason: AbortReason
    local: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The state machine is back in Sta1: the runner closes the transport and stops."""


ConnectionEvent = (
    AssociationRequested
    | AssociationAccepted
    | AssociationRejected
    | DataReceived
    | ReleaseRequested
    | ReleaseConfirmed
    | Aborted
    | ConnectionClosed
)


class NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()

_PDU_EVENTS: dict[type, Event] = {
    AssociateAC: Event.EVT3,
    AssociateRJ: Event.EVT4,
    AssociateRQ: Event.EVT6,
    PDataTF: Event.EVT10,
    ReleaseRQ: Event.EVT12,
    ReleaseRP: Event.EVT13,
    Abort: Event.EVT16,
}

# The PDU-length limit while no association is established: an A-ASSOCIATE-RQ with every storage
# SOP class proposed, role selections and a user identity token fits well within this.
ASSOCIATION_PDU_LIMIT = 1 << 20


class Connection:
    def __init__(
        self,
        role: Role,
        *,
        artim_timeout: float,
        clock: Callable[[], float],
        max_pdu_length: int = ASSOCIATION_PDU_LIMIT,
        screen: Callable[[AssociateRQ], AssociateRJ | None] | None = None,
    ) -> None:
        self.role = role
        self.state = State.STA1
        self._artim_timeout = artim_timeout
        self._clock = clock
        self._screen = screen
        self._deadline: float | None = None
        # Until the association is established the reader accepts A-ASSOCIATE PDUs up to a fixed
        # bound; `established()` narrows it to the maximum length we advertised.
        self._reader = PDUReader(max(max_pdu_length, ASSOCIATION_PDU_LIMIT))
        self._max_pdu_length = max_pdu_length
        self._events: deque[ConnectionEvent] = deque()
        self._outbox: list[bytes | memoryview] = []
        self._pending_request: AssociateRQ | None = None
        self._transport_closed = False
        self._discard_input = False
        self.peer_max_pdu_length = 0

    # -- inputs from the transport ---------------------------------------------------------------

    def connection_made(self) -> None:
        """Transport connected: EVT5 (indication) for an acceptor, EVT2 (confirmation) for a requestor."""
        self._fire(Event.EVT5 if self.role is Role.ACCEPTOR else Event.EVT2)

    def receive_data(self, data: bytes) -> None:
        """Bytes from the transport; b"" means the peer closed it (EVT17)."""
        if self.state is State.STA1:
            return
        if not data:
            self.connection_lost()
            return
        if not self._discard_input:
            self._reader.feed(data)

    def connection_lost(self) -> None:
        if self.state is State.STA1 or self._transport_closed:
            return
        self._transport_closed = True
        self._fire(Event.EVT17)

    # -- inputs from the local user --------------------------------------------------------------

    def request(self, rq: AssociateRQ) -> None:
        """A-ASSOCIATE request (EVT1): the runner then connects and calls connection_made()."""
        self._pending_request = rq
        self._fire(Event.EVT1)

    def accept(self, ac: AssociateAC) -> None:
        self._fire(Event.EVT7, pdu=ac)

    def reject(self, rj: AssociateRJ) -> None:
        self._fire(Event.EVT8, pdu=rj)

    def send_data(self, pdu: PDataTF) -> None:
        self._fire(Event.EVT9, pdu=pdu)

    def send_encoded_data(self, pieces: list[bytes | memoryview]) -> None:
        """P-DATA-TF PDUs already encoded (dimse.fragments.encoded_fragments: a stored file's
        hundreds of PDUs without an object each). Evt9 sends a P-DATA-TF in Sta6 (DT-1) and Sta8
        (AR-7) alike and changes no state (PS3.8 Table 9-10); anywhere else it is refused as
        send_data() refuses it."""
        if self.state is not State.STA6 and self.state is not State.STA8:
            self._fire(Event.EVT9)  # raises LocalProtocolError: not a valid local event here
            raise LocalProtocolError(f"P-DATA in {self.state}")  # pragma: no cover
        self._outbox.extend(pieces)

    def release(self) -> None:
        self._fire(Event.EVT11)

    def release_response(self) -> None:
        self._fire(Event.EVT14)

    def abort(self, reason: AbortReason = AbortReason.NOT_SPECIFIED) -> None:
        """A-ABORT request from the local user (EVT15)."""
        self._fire(Event.EVT15, pdu=Abort(AbortSource.SERVICE_USER, reason))

    def protocol_error(self, error: RemoteProtocolError) -> None:
        """The P-DATA content broke PS3.8 Annex E / PS3.7 framing: handled as an invalid PDU (EVT19)."""
        self._reader_failed()
        self._fire(Event.EVT19, reason=error.reason, detail=str(error))

    def established(self, peer_max_pdu_length: int) -> None:
        """Narrow the reader to the maximum PDU length we advertised, once negotiation is done."""
        self._reader.max_pdu_length = self._max_pdu_length
        self.peer_max_pdu_length = peer_max_pdu_length

    # -- time ------------------------------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When the ARTIM timer expires, if it runs (PS3.8 9.1.5)."""
        return self._deadline

    def handle_timeout(self) -> None:
        if self._deadline is not None and self._clock() >= self._deadline:
            self._deadline = None
            self._fire(Event.EVT18)

    # -- outputs ---------------------------------------------------------------------------------

    def next_event(self) -> ConnectionEvent | NeedData:
        while not self._events:
            if self.state is State.STA1 or not self._next_pdu():
                return NEED_DATA
        return self._events.popleft()

    def data_to_send(self) -> list[bytes | memoryview]:
        out, self._outbox = self._outbox, []
        return out

    @property
    def closed(self) -> bool:
        """The transport should be (or is) closed; nothing more will happen on this connection."""
        return self.state is State.STA1

    # -- the machinery ---------------------------------------------------------------------------

    def _next_pdu(self) -> bool:
        """Parse one PDU from the buffer and run its event; False when more bytes are needed."""
        try:
            pdu = self._reader.next_pdu()
        except RemoteProtocolError as e:
            self._reader_failed()
            self._fire(Event.EVT19, reason=e.reason, detail=str(e))
            return True
        if pdu is None:
            return False
        self._fire(_PDU_EVENTS[type(pdu)], pdu=pdu)
        return True

    def _reader_failed(self) -> None:
        # After a framing error the byte stream has no trustworthy PDU boundary left: whatever else
        # arrives is dropped unread while we wait (Sta13) for the transport to close.
        self._discard_input = True
        self._reader = PDUReader(self._max_pdu_length)

    def _fire(
        self,
        event: Event,
        *,
        pdu: PDU | None = None,
        reason: AbortReason = AbortReason.UNEXPECTED_PDU,
        detail: str = "",
    ) -> None:
        acceptable = True
        rejection: AssociateRJ | None = None
        if event is Event.EVT6 and self.state is State.STA2 and self._screen is not None:
            assert isinstance(pdu, AssociateRQ)
            rejection = self._screen(pdu)
            acceptable = rejection is None
        action, next_state = fsm.transition(
            self.state, event, is_requestor=self.role is Role.REQUESTOR, acceptable=acceptable
        )
        self.state = next_state
        self._run(action, event, pdu, reason, detail, rejection)

    def _run(
        self,
        action: Action,
        event: Event,
        pdu: PDU | None,
        reason: AbortReason,
        detail: str,
        rejection: AssociateRJ | None,
    ) -> None:
        A = Action
        if action is A.AE_1:
            pass  # the runner opens the transport after request()
        elif action is A.AE_2:
            assert self._pending_request is not None
            self._send(self._pending_request)
        elif action is A.AE_3:
            assert isinstance(pdu, AssociateAC)
            self._events.append(AssociationAccepted(pdu))
        elif action is A.AE_4:
            assert isinstance(pdu, AssociateRJ)
            self._events.append(AssociationRejected(pdu, local=False))
            self._close()
        elif action is A.AE_5:
            self._start_artim()
        elif action is A.AE_6:
            self._stop_artim()
            assert isinstance(pdu, AssociateRQ)
            if rejection is None:
                self._events.append(AssociationRequested(pdu))
            else:
                self._send(rejection)
                self._start_artim()
                self._events.append(AssociationRejected(rejection, local=True))
        elif action is A.AE_7 or action is A.DT_1 or action is A.AR_7:
            assert pdu is not None
            self._send(pdu)
        elif action is A.AE_8:
            assert isinstance(pdu, AssociateRJ)
            self._send(pdu)
            self._start_artim()
        elif action is A.DT_2 or action is A.AR_6:
            assert isinstance(pdu, PDataTF)
            self._events.append(DataReceived(pdu))
        elif action is A.AR_1:
            self._send(ReleaseRQ())
        elif action is A.AR_2:
            self._events.append(ReleaseRequested())
        elif action is A.AR_3:
            self._events.append(ReleaseConfirmed())
            self._close()
        elif action is A.AR_4:
            self._send(ReleaseRP())
            self._start_artim()
        elif action is A.AR_5:
            self._stop_artim()
            self._events.append(ConnectionClosed())
        elif action is A.AR_8:
            self._events.append(ReleaseRequested(collision=True))
        elif action is A.AR_9:
            self._send(ReleaseRP())
        elif action is A.AR_10:
            self._events.append(ReleaseConfirmed())
        elif action is A.AA_1:
            self._send(self._abort_pdu(event, pdu, reason))
            self._start_artim()
            if event is not Event.EVT15:
                self._events.append(Aborted(*self._abort_fields(event, pdu, reason), True, detail))
        elif action is A.AA_2:
            self._stop_artim()
            self._close()
        elif action is A.AA_3:
            assert isinstance(pdu, Abort)
            self._events.append(Aborted(pdu.source, pdu.reason, local=False))
            self._close()
        elif action is A.AA_4:
            self._events.append(
                Aborted(AbortSource.SERVICE_PROVIDER, AbortReason.NOT_SPECIFIED, False, "closed")
            )
            self._close()
        elif action is A.AA_5:
            self._stop_artim()
            self._close()
        elif action is A.AA_6:
            pass  # PS3.8: ignore the PDU while waiting for the transport to close
        elif action is A.AA_7:
            self._send(Abort(AbortSource.SERVICE_PROVIDER, reason))
        elif action is A.AA_8:
            self._send(Abort(AbortSource.SERVICE_PROVIDER, reason))
            self._start_artim()
            self._events.append(Aborted(AbortSource.SERVICE_PROVIDER, reason, True, detail))
        else:  # pragma: no cover - the table only names the actions above
            raise LocalProtocolError(f"no implementation for {action}")

    def _abort_pdu(self, event: Event, pdu: PDU | None, reason: AbortReason) -> Abort:
        if event is Event.EVT15:
            assert isinstance(pdu, Abort)
            return pdu
        return Abort(*self._abort_fields(event, pdu, reason))

    @staticmethod
    def _abort_fields(
        event: Event, pdu: PDU | None, reason: AbortReason
    ) -> tuple[AbortSource, AbortReason]:
        # AA-1 on a PDU the peer should not have sent (Sta2, and the requestor's Sta5 ... ): Table 9-9
        # names the service-user as source, but its reason field is then "not significant" and the
        # peer learns nothing. The fault was found by the provider, so we send the provider source
        # with the diagnostic of Table 9-26, as AA-8 does in the established states.
        if event is Event.EVT19:
            return AbortSource.SERVICE_PROVIDER, reason
        return AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU

    def _send(self, pdu: PDU) -> None:
        self._outbox.append(encode(pdu))

    def _start_artim(self) -> None:
        self._deadline = self._clock() + self._artim_timeout

    def _stop_artim(self) -> None:
        self._deadline = None

    def _close(self) -> None:
        self._deadline = None
        self._events.append(ConnectionClosed())
