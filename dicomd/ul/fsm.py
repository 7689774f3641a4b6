"""The DICOM Upper Layer state machine (PS3.8 section 9.2) as pure data.

Owns: the states (9.2.1, Tables 9-1 to 9-5), the actions and their next states (9.2.2, Tables 9-6
to 9-9), the events and the state transition table (9.2.3, Table 9-10), and a description of what
each action asks of whoever runs the machine (`EFFECTS`).
Must not know: bytes, PDU encoding, sockets, timers' clocks, asyncio. The connection layer turns
what it sees into an `Event`, calls `transition`, and carries out the action's `Effects`.

`TABLE` is a literal transcription of Table 9-10, one cell per line. Cells the standard leaves
empty are absent: they are combinations that cannot happen to a correct runner (a PDU before
any transport connection exists, a local primitive the service-user may not issue in that
state), so `transition` raises `LocalProtocolError` for them rather than inventing behaviour.
Whatever the peer does has a cell: every PDU event (EVT3, 4, 6, 10, 12, 13, 16, 19) and the
connection closing (EVT17) are defined in each state with a transport connection (Sta2, Sta3,
Sta5 to Sta13); an unexpected PDU usually means AA-8.

The transcription was checked cell by cell against independent ones (pynetdicom 3.0.4's
`TRANSITION_TABLE`, and public Rust and Go implementations): all agree on the 123 filled cells.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Self

from dicomd.ul.codes import AbortSource, LocalProtocolError, PDUType

__all__ = [
    "AE_6_REJECT_EFFECTS",
    "EFFECTS",
    "TABLE",
    "Action",
    "Effects",
    "Event",
    "Indication",
    "State",
    "abort_indication",
    "effects_of",
    "next_state",
    "transition",
]


class _Described(Enum):
    """An enum whose members carry the standard's wording as `.description`."""

    description: str

    # Only member definitions call this; afterwards Enum routes `State(6)` to its value
    # lookup. The default exists so that type checkers accept that lookup call.
    def __new__(cls, value: object, description: str = "") -> Self:
        member = object.__new__(cls)
        member._value_ = value
        member.description = description
        return member

    def __str__(self) -> str:
        return f"{self.name} ({self.description})"


class State(_Described):
    """PS3.8 9.2.1, Tables 9-1 to 9-5; the value is the state's number."""

    # Table 9-1 No association
    STA1 = 1, "Idle"
    # Table 9-2 Association establishment
    STA2 = 2, "Transport connection open (Awaiting A-ASSOCIATE-RQ PDU)"
    STA3 = 3, "Awaiting local A-ASSOCIATE response primitive (from local user)"
    STA4 = 4, "Awaiting transport connection opening to complete (from local transport service)"
    STA5 = 5, "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU"
    # Table 9-3 Data transfer
    STA6 = 6, "Association established and ready for data transfer"
    # Table 9-4 Association release
    STA7 = 7, "Awaiting A-RELEASE-RP PDU"
    STA8 = 8, "Awaiting local A-RELEASE response primitive (from local user)"
    STA9 = 9, "Release collision requestor side; awaiting A-RELEASE response (from local user)"
    STA10 = 10, "Release collision acceptor side; awaiting A-RELEASE-RP PDU"
    STA11 = 11, "Release collision requestor side; awaiting A-RELEASE-RP PDU"
    STA12 = (
        12,
        "Release collision acceptor side; awaiting A-RELEASE response primitive (from local user)",
    )
    # Table 9-5 Waiting for transport connection close
    STA13 = 13, "Awaiting Transport Connection Close Indication (Association no longer exists)"


class Event(_Described):
    """The rows of PS3.8 Table 9-10; the value is the event's number."""

    EVT1 = 1, "A-ASSOCIATE Request (local user)"
    EVT2 = 2, "Transport Conn. Confirmn (local transport service)"
    EVT3 = 3, "A-ASSOCIATE-AC PDU (received on transport connection)"
    EVT4 = 4, "A-ASSOCIATE-RJ PDU (received on transport connection)"
    EVT5 = 5, "Transport Connection Indication (local transport service)"
    EVT6 = 6, "A-ASSOCIATE-RQ PDU (received on transport connection)"
    EVT7 = 7, "A-ASSOCIATE response primitive (accept)"
    EVT8 = 8, "A-ASSOCIATE response primitive (reject)"
    EVT9 = 9, "P-DATA request primitive"
    EVT10 = 10, "P-DATA-TF PDU"
    EVT11 = 11, "A-RELEASE Request primitive"
    EVT12 = 12, "A-RELEASE-RQ PDU (received on open transport connection)"
    EVT13 = 13, "A-RELEASE-RP PDU (received on transport connection)"
    EVT14 = 14, "A-RELEASE Response primitive"
    EVT15 = 15, "A-ABORT Request primitive"
    EVT16 = 16, "A-ABORT PDU (received on open transport connection)"
    EVT17 = 17, "Transport connection closed indication (local transport service)"
    EVT18 = 18, "ARTIM timer expired (Association reject/release timer)"
    EVT19 = 19, "Unrecognized or invalid PDU received"


class Action(_Described):
    """PS3.8 9.2.2, Tables 9-6 to 9-9; the value is the standard's label."""

    # Table 9-6 Association establishment related actions
    AE_1 = "AE-1", "Issue TRANSPORT CONNECT request primitive to local transport service"
    AE_2 = "AE-2", "Send A-ASSOCIATE-RQ-PDU"
    AE_3 = "AE-3", "Issue A-ASSOCIATE confirmation (accept) primitive"
    AE_4 = (
        "AE-4",
        "Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection",
    )
    AE_5 = "AE-5", "Issue Transport connection response primitive; start ARTIM timer"
    AE_6 = (
        "AE-6",
        "Stop ARTIM timer and if A-ASSOCIATE-RQ acceptable by service-provider: issue "
        "A-ASSOCIATE indication primitive (next state Sta3); otherwise: issue "
        "A-ASSOCIATE-RJ-PDU and start ARTIM timer (next state Sta13)",
    )
    AE_7 = "AE-7", "Send A-ASSOCIATE-AC PDU"
    AE_8 = "AE-8", "Send A-ASSOCIATE-RJ PDU and start ARTIM timer"
    # Table 9-7 Data transfer related actions
    DT_1 = "DT-1", "Send P-DATA-TF PDU"
    DT_2 = "DT-2", "Send P-DATA indication primitive"
    # Table 9-8 Association release related actions
    AR_1 = "AR-1", "Send A-RELEASE-RQ PDU"
    AR_2 = "AR-2", "Issue A-RELEASE indication primitive"
    AR_3 = "AR-3", "Issue A-RELEASE confirmation primitive, and close transport connection"
    AR_4 = "AR-4", "Issue A-RELEASE-RP PDU and start ARTIM timer"
    AR_5 = "AR-5", "Stop ARTIM timer"
    AR_6 = "AR-6", "Issue P-DATA indication"
    AR_7 = "AR-7", "Issue P-DATA-TF PDU"
    AR_8 = (
        "AR-8",
        "Issue A-RELEASE indication (release collision): if association-requestor, "
        "next state is Sta9; if not, next state is Sta10",
    )
    AR_9 = "AR-9", "Send A-RELEASE-RP PDU"
    AR_10 = "AR-10", "Issue A-RELEASE confirmation primitive"
    # Table 9-9 Association abort related actions
    AA_1 = (
        "AA-1",
        "Send A-ABORT PDU (service-user source) and start (or restart if already started) "
        "ARTIM timer",
    )
    AA_2 = "AA-2", "Stop ARTIM timer if running. Close transport connection"
    AA_3 = (
        "AA-3",
        "If (service-user initiated abort): issue A-ABORT indication and close transport "
        "connection; otherwise (service-provider initiated abort): issue A-P-ABORT indication "
        "and close transport connection",
    )
    AA_4 = "AA-4", "Issue A-P-ABORT indication primitive"
    AA_5 = "AA-5", "Stop ARTIM timer"
    AA_6 = "AA-6", "Ignore PDU"
    AA_7 = "AA-7", "Send A-ABORT PDU"
    AA_8 = (
        "AA-8",
        "Send A-ABORT PDU (service-provider source), issue an A-P-ABORT indication, and start "
        "ARTIM timer",
    )


# PS3.8 Table 9-10. Key: (current state, event); value: the action. Empty cells are absent.
TABLE: Mapping[tuple[State, Event], Action] = MappingProxyType(
    {
        # EVT1 A-ASSOCIATE Request (local user)
        (State.STA1, Event.EVT1): Action.AE_1,
        # EVT2 Transport Conn. Confirmn (local transport service)
        (State.STA4, Event.EVT2): Action.AE_2,
        # EVT3 A-ASSOCIATE-AC PDU (received on transport connection)
        (State.STA2, Event.EVT3): Action.AA_1,
        (State.STA3, Event.EVT3): Action.AA_8,
        (State.STA5, Event.EVT3): Action.AE_3,
        (State.STA6, Event.EVT3): Action.AA_8,
        (State.STA7, Event.EVT3): Action.AA_8,
        (State.STA8, Event.EVT3): Action.AA_8,
        (State.STA9, Event.EVT3): Action.AA_8,
        (State.STA10, Event.EVT3): Action.AA_8,
        (State.STA11, Event.EVT3): Action.AA_8,
        (State.STA12, Event.EVT3): Action.AA_8,
        (State.STA13, Event.EVT3): Action.AA_6,
        # EVT4 A-ASSOCIATE-RJ PDU (received on transport connection)
        (State.STA2, Event.EVT4): Action.AA_1,
        (State.STA3, Event.EVT4): Action.AA_8,
        (State.STA5, Event.EVT4): Action.AE_4,
        (State.STA6, Event.EVT4): Action.AA_8,
        (State.STA7, Event.EVT4): Action.AA_8,
        (State.STA8, Event.EVT4): Action.AA_8,
        (State.STA9, Event.EVT4): Action.AA_8,
        (State.STA10, Event.EVT4): Action.AA_8,
        (State.STA11, Event.EVT4): Action.AA_8,
        (State.STA12, Event.EVT4): Action.AA_8,
        (State.STA13, Event.EVT4): Action.AA_6,
        # EVT5 Transport Connection Indication (local transport service)
        (State.STA1, Event.EVT5): Action.AE_5,
        # EVT6 A-ASSOCIATE-RQ PDU (received on transport connection)
        (State.STA2, Event.EVT6): Action.AE_6,
        (State.STA3, Event.EVT6): Action.AA_8,
        (State.STA5, Event.EVT6): Action.AA_8,
        (State.STA6, Event.EVT6): Action.AA_8,
        (State.STA7, Event.EVT6): Action.AA_8,
        (State.STA8, Event.EVT6): Action.AA_8,
        (State.STA9, Event.EVT6): Action.AA_8,
        (State.STA10, Event.EVT6): Action.AA_8,
        (State.STA11, Event.EVT6): Action.AA_8,
        (State.STA12, Event.EVT6): Action.AA_8,
        (State.STA13, Event.EVT6): Action.AA_7,
        # EVT7 A-ASSOCIATE response primitive (accept)
        (State.STA3, Event.EVT7): Action.AE_7,
        # EVT8 A-ASSOCIATE response primitive (reject)
        (State.STA3, Event.EVT8): Action.AE_8,
        # EVT9 P-DATA request primitive
        (State.STA6, Event.EVT9): Action.DT_1,
        (State.STA8, Event.EVT9): Action.AR_7,
        # EVT10 P-DATA-TF PDU
        (State.STA2, Event.EVT10): Action.AA_1,
        (State.STA3, Event.EVT10): Action.AA_8,
        (State.STA5, Event.EVT10): Action.AA_8,
        (State.STA6, Event.EVT10): Action.DT_2,
        (State.STA7, Event.EVT10): Action.AR_6,
        (State.STA8, Event.EVT10): Action.AA_8,
        (State.STA9, Event.EVT10): Action.AA_8,
        (State.STA10, Event.EVT10): Action.AA_8,
        (State.STA11, Event.EVT10): Action.AA_8,
        (State.STA12, Event.EVT10): Action.AA_8,
        (State.STA13, Event.EVT10): Action.AA_6,
        # EVT11 A-RELEASE Request primitive
        (State.STA6, Event.EVT11): Action.AR_1,
        # EVT12 A-RELEASE-RQ PDU (received on open transport connection)
        (State.STA2, Event.EVT12): Action.AA_1,
        (State.STA3, Event.EVT12): Action.AA_8,
        (State.STA5, Event.EVT12): Action.AA_8,
        (State.STA6, Event.EVT12): Action.AR_2,
        (State.STA7, Event.EVT12): Action.AR_8,
        (State.STA8, Event.EVT12): Action.AA_8,
        (State.STA9, Event.EVT12): Action.AA_8,
        (State.STA10, Event.EVT12): Action.AA_8,
        (State.STA11, Event.EVT12): Action.AA_8,
        (State.STA12, Event.EVT12): Action.AA_8,
        (State.STA13, Event.EVT12): Action.AA_6,
        # EVT13 A-RELEASE-RP PDU (received on transport connection)
        (State.STA2, Event.EVT13): Action.AA_1,
        (State.STA3, Event.EVT13): Action.AA_8,
        (State.STA5, Event.EVT13): Action.AA_8,
        (State.STA6, Event.EVT13): Action.AA_8,
        (State.STA7, Event.EVT13): Action.AR_3,
        (State.STA8, Event.EVT13): Action.AA_8,
        (State.STA9, Event.EVT13): Action.AA_8,
        (State.STA10, Event.EVT13): Action.AR_10,
        (State.STA11, Event.EVT13): Action.AR_3,
        (State.STA12, Event.EVT13): Action.AA_8,
        (State.STA13, Event.EVT13): Action.AA_6,
        # EVT14 A-RELEASE Response primitive
        (State.STA8, Event.EVT14): Action.AR_4,
        (State.STA9, Event.EVT14): Action.AR_9,
        (State.STA12, Event.EVT14): Action.AR_4,
        # EVT15 A-ABORT Request primitive
        (State.STA3, Event.EVT15): Action.AA_1,
        (State.STA4, Event.EVT15): Action.AA_2,
        (State.STA5, Event.EVT15): Action.AA_1,
        (State.STA6, Event.EVT15): Action.AA_1,
        (State.STA7, Event.EVT15): Action.AA_1,
        (State.STA8, Event.EVT15): Action.AA_1,
        (State.STA9, Event.EVT15): Action.AA_1,
        (State.STA10, Event.EVT15): Action.AA_1,
        (State.STA11, Event.EVT15): Action.AA_1,
        (State.STA12, Event.EVT15): Action.AA_1,
        # EVT16 A-ABORT PDU (received on open transport connection)
        (State.STA2, Event.EVT16): Action.AA_2,
        (State.STA3, Event.EVT16): Action.AA_3,
        (State.STA5, Event.EVT16): Action.AA_3,
        (State.STA6, Event.EVT16): Action.AA_3,
        (State.STA7, Event.EVT16): Action.AA_3,
        (State.STA8, Event.EVT16): Action.AA_3,
        (State.STA9, Event.EVT16): Action.AA_3,
        (State.STA10, Event.EVT16): Action.AA_3,
        (State.STA11, Event.EVT16): Action.AA_3,
        (State.STA12, Event.EVT16): Action.AA_3,
        (State.STA13, Event.EVT16): Action.AA_2,
        # EVT17 Transport connection closed indication (local transport service)
        (State.STA2, Event.EVT17): Action.AA_5,
        (State.STA3, Event.EVT17): Action.AA_4,
        (State.STA4, Event.EVT17): Action.AA_4,
        (State.STA5, Event.EVT17): Action.AA_4,
        (State.STA6, Event.EVT17): Action.AA_4,
        (State.STA7, Event.EVT17): Action.AA_4,
        (State.STA8, Event.EVT17): Action.AA_4,
        (State.STA9, Event.EVT17): Action.AA_4,
        (State.STA10, Event.EVT17): Action.AA_4,
        (State.STA11, Event.EVT17): Action.AA_4,
        (State.STA12, Event.EVT17): Action.AA_4,
        (State.STA13, Event.EVT17): Action.AR_5,
        # EVT18 ARTIM timer expired (Association reject/release timer)
        (State.STA2, Event.EVT18): Action.AA_2,
        (State.STA13, Event.EVT18): Action.AA_2,
        # EVT19 Unrecognized or invalid PDU received
        (State.STA2, Event.EVT19): Action.AA_1,
        (State.STA3, Event.EVT19): Action.AA_8,
        (State.STA5, Event.EVT19): Action.AA_8,
        (State.STA6, Event.EVT19): Action.AA_8,
        (State.STA7, Event.EVT19): Action.AA_8,
        (State.STA8, Event.EVT19): Action.AA_8,
        (State.STA9, Event.EVT19): Action.AA_8,
        (State.STA10, Event.EVT19): Action.AA_8,
        (State.STA11, Event.EVT19): Action.AA_8,
        (State.STA12, Event.EVT19): Action.AA_8,
        (State.STA13, Event.EVT19): Action.AA_7,
    }
)

# The "Next state is ..." line of each action in Tables 9-6 to 9-9, for the actions whose next
# state does not depend on anything; AE-6 and AR-8 are decided in `next_state`.
_FIXED_NEXT_STATE: Mapping[Action, State] = MappingProxyType(
    {
        Action.AE_1: State.STA4,
        Action.AE_2: State.STA5,
        Action.AE_3: State.STA6,
        Action.AE_4: State.STA1,
        Action.AE_5: State.STA2,
        Action.AE_7: State.STA6,
        Action.AE_8: State.STA13,
        Action.DT_1: State.STA6,
        Action.DT_2: State.STA6,
        Action.AR_1: State.STA7,
        Action.AR_2: State.STA8,
        Action.AR_3: State.STA1,
        Action.AR_4: State.STA13,
        Action.AR_5: State.STA1,
        Action.AR_6: State.STA7,
        Action.AR_7: State.STA8,
        Action.AR_9: State.STA11,
        Action.AR_10: State.STA12,
        Action.AA_1: State.STA13,
        Action.AA_2: State.STA1,
        Action.AA_3: State.STA1,
        Action.AA_4: State.STA1,
        Action.AA_5: State.STA1,
        Action.AA_6: State.STA13,
        Action.AA_7: State.STA13,
        Action.AA_8: State.STA13,
    }
)


def next_state(action: Action, *, is_requestor: bool, acceptable: bool = True) -> State:
    """The state `action` leads to (PS3.8 Tables 9-6 to 9-9).

    `acceptable` is the service-provider's verdict on a received A-ASSOCIATE-RQ and matters only
    for AE-6; `is_requestor` (this end requested the association) matters only for AR-8.
    """
    if action is Action.AE_6:
        return State.STA3 if acceptable else State.STA13
    if action is Action.AR_8:
        return State.STA9 if is_requestor else State.STA10
    return _FIXED_NEXT_STATE[action]


def transition(
    state: State, event: Event, *, is_requestor: bool, acceptable: bool = True
) -> tuple[Action, State]:
    """Look up Table 9-10: the action to perform for `event` in `state`, and the next state.

    Raises `LocalProtocolError` for a cell the standard leaves empty: the runner fed an event
    that cannot occur in that state (see the module docstring).
    """
    try:
        action = TABLE[state, event]
    except KeyError:
        raise LocalProtocolError(
            f"{event.name} ({event.description}) cannot occur in {state.name} "
            f"({state.description}): empty cell of PS3.8 Table 9-10"
        ) from None
    return action, next_state(action, is_requestor=is_requestor, acceptable=acceptable)


class Indication(Enum):
    """A primitive the service-provider issues to its local user (PS3.8 section 7)."""

    A_ASSOCIATE = "A-ASSOCIATE indication"
    A_ASSOCIATE_ACCEPTED = "A-ASSOCIATE confirmation (accept)"
    A_ASSOCIATE_REJECTED = "A-ASSOCIATE confirmation (reject)"
    P_DATA = "P-DATA indication"
    A_RELEASE = "A-RELEASE indication"
    A_RELEASE_CONFIRMATION = "A-RELEASE confirmation"
    A_ABORT = "A-ABORT indication"
    A_P_ABORT = "A-P-ABORT indication"
    # AA-3 chooses by who initiated the abort it received; resolve with `abort_indication`.
    A_ABORT_BY_SOURCE = "A-ABORT or A-P-ABORT indication, by the received A-ABORT PDU's source"


def abort_indication(source: AbortSource) -> Indication:
    """Resolve AA-3's indication from the Source field of the A-ABORT PDU received.

    Only a service-user source is a user-initiated abort; a provider source, the reserved value
    or an unknown one is treated as provider-initiated, so the user is never told its peer
    chose to abort when that is not what the PDU said.
    """
    return Indication.A_ABORT if source is AbortSource.SERVICE_USER else Indication.A_P_ABORT


@dataclass(frozen=True, slots=True)
class Effects:
    """What an action asks the runner to do, besides moving to the next state.

    The runner applies them in field order: stop ARTIM, open the transport connection, send
    the PDU, issue the indication to the local user, (re)start ARTIM, close the transport
    connection. Starting ARTIM while it runs restarts it (AA-1). The content of a PDU to send
    (which A-ASSOCIATE-RJ reason, which P-DATA-TF) comes from the event that triggered the
    action; the table only says which kind.
    """

    stop_artim: bool = False
    connect_transport: bool = False
    send_pdu: PDUType | None = None
    # Source field of an A-ABORT PDU to send, where the action fixes it (AA-1, AA-8). AA-7
    # leaves it to the runner.
    abort_source: AbortSource | None = None
    indication: Indication | None = None
    start_artim: bool = False
    close_transport: bool = False


_NONE = Effects()

# AE-6's effects when the A-ASSOCIATE-RQ is acceptable; the rejecting branch is below.
EFFECTS: Mapping[Action, Effects] = MappingProxyType(
    {
        Action.AE_1: Effects(connect_transport=True),
        Action.AE_2: Effects(send_pdu=PDUType.ASSOCIATE_RQ),
        Action.AE_3: Effects(indication=Indication.A_ASSOCIATE_ACCEPTED),
        Action.AE_4: Effects(indication=Indication.A_ASSOCIATE_REJECTED, close_transport=True),
        # The transport connection response is implicit once the runner has accepted the socket.
        Action.AE_5: Effects(start_artim=True),
        Action.AE_6: Effects(stop_artim=True, indication=Indication.A_ASSOCIATE),
        Action.AE_7: Effects(send_pdu=PDUType.ASSOCIATE_AC),
        Action.AE_8: Effects(send_pdu=PDUType.ASSOCIATE_RJ, start_artim=True),
        Action.DT_1: Effects(send_pdu=PDUType.P_DATA_TF),
        Action.DT_2: Effects(indication=Indication.P_DATA),
        Action.AR_1: Effects(send_pdu=PDUType.RELEASE_RQ),
        Action.AR_2: Effects(indication=Indication.A_RELEASE),
        Action.AR_3: Effects(indication=Indication.A_RELEASE_CONFIRMATION, close_transport=True),
        Action.AR_4: Effects(send_pdu=PDUType.RELEASE_RP, start_artim=True),
        Action.AR_5: Effects(stop_artim=True),
        Action.AR_6: Effects(indication=Indication.P_DATA),
        Action.AR_7: Effects(send_pdu=PDUType.P_DATA_TF),
        # Release collision: the indication is the same primitive; the next state tells which
        # side of the collision this end is on.
        Action.AR_8: Effects(indication=Indication.A_RELEASE),
        Action.AR_9: Effects(send_pdu=PDUType.RELEASE_RP),
        Action.AR_10: Effects(indication=Indication.A_RELEASE_CONFIRMATION),
        Action.AA_1: Effects(
            send_pdu=PDUType.ABORT, abort_source=AbortSource.SERVICE_USER, start_artim=True
        ),
        Action.AA_2: Effects(stop_artim=True, close_transport=True),
        Action.AA_3: Effects(indication=Indication.A_ABORT_BY_SOURCE, close_transport=True),
        # The transport connection is already gone (EVT17), so there is nothing to close.
        Action.AA_4: Effects(indication=Indication.A_P_ABORT),
        Action.AA_5: Effects(stop_artim=True),
        Action.AA_6: _NONE,
        Action.AA_7: Effects(send_pdu=PDUType.ABORT),
        Action.AA_8: Effects(
            send_pdu=PDUType.ABORT,
            abort_source=AbortSource.SERVICE_PROVIDER,
            indication=Indication.A_P_ABORT,
            start_artim=True,
        ),
    }
)

# AE-6 when the service-provider cannot accept the A-ASSOCIATE-RQ: ARTIM is stopped, the
# A-ASSOCIATE-RJ sent, and ARTIM started again to bound the wait for the peer to close.
AE_6_REJECT_EFFECTS = Effects(stop_artim=True, send_pdu=PDUType.ASSOCIATE_RJ, start_artim=True)


def effects_of(action: Action, *, acceptable: bool = True) -> Effects:
    """The `Effects` of `action`; `acceptable` selects AE-6's branch as in `next_state`."""
    if action is Action.AE_6 and not acceptable:
        return AE_6_REJECT_EFFECTS
    return EFFECTS[action]
