"""Tests for dicomd.ul.fsm: PS3.8 Table 9-10 cell by cell, next states, walks, effects."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dicomd.ul.codes import AbortSource, LocalProtocolError, PDUType
from dicomd.ul.fsm import (
    AE_6_REJECT_EFFECTS,
    EFFECTS,
    TABLE,
    Action,
    Effects,
    Event,
    Indication,
    State,
    abort_indication,
    effects_of,
    next_state,
    transition,
)

# PS3.8 Table 9-10 read column by column (one line per state), written independently of the
# module, which is laid out row by row (one block per event). A cell not listed is empty.
EXPECTED_TABLE_TEXT = """
Sta1:  EVT1=AE-1 EVT5=AE-5
Sta2:  EVT3=AA-1 EVT4=AA-1 EVT6=AE-6 EVT10=AA-1 EVT12=AA-1 EVT13=AA-1 EVT16=AA-2 EVT17=AA-5
       EVT18=AA-2 EVT19=AA-1
Sta3:  EVT3=AA-8 EVT4=AA-8 EVT6=AA-8 EVT7=AE-7 EVT8=AE-8 EVT10=AA-8 EVT12=AA-8 EVT13=AA-8
       EVT15=AA-1 EVT16=AA-3 EVT17=AA-4 EVT19=AA-8
Sta4:  EVT2=AE-2 EVT15=AA-2 EVT17=AA-4
Sta5:  EVT3=AE-3 EVT4=AE-4 EVT6=AA-8 EVT10=AA-8 EVT12=AA-8 EVT13=AA-8 EVT15=AA-1 EVT16=AA-3
       EVT17=AA-4 EVT19=AA-8
Sta6:  EVT3=AA-8 EVT4=AA-8 EVT6=AA-8 EVT9=DT-1 EVT10=DT-2 EVT11=AR-1 EVT12=AR-2 EVT13=AA-8
       EVT15=AA-1 EVT16=AA-3 EVT17=AA-4 EVT19=AA-8
Sta7:  EVT3=AA-8 EVT4=AA-8 EVT6=AA-8 EVT10=AR-6 EVT12=AR-8 EVT13=AR-3 EVT15=AA-1 EVT16=AA-3
       EVT17=AA-4 EVT19=AA-8
Sta8:  EVT3=AA-8 EVT4=AA-8 EVT6=AA-8 EVT9=AR-7 EVT10=AA-8 EVT12=AA-8 EVT13=AA-8 EVT14=AR-4
       EVT15=AA-1 EVT16=AA-3 EVT17=AA-4 EVT19=AA-8
Sta9:  EVT3=AA-8 EVT4=AA-8 EVT6=AA-8 EVT10=AA-8 EVT12=AA-8 EVT13=AA-8 EVT14=AR-9 EVT15=AA-1
       EVT16=AA-3 EVT17=AA-4 EVT19=AA-8
Sta10: EVT3=AA-8 EVT4=AA-8 EVT6=AA-8 EVT10=AA-8 EVT12=AA-8 EVT13=AR-10 EVT15=AA-1 EVT16=AA-3
       EVT17=AA-4 EVT19=AA-8
Sta11: EVT3=AA-8 EVT4=AA-8 EVT6=AA-8 EVT10=AA-8 EVT12=AA-8 EVT13=AR-3 EVT15=AA-1 EVT16=AA-3
       EVT17=AA-4 EVT19=AA-8
Sta12: EVT3=AA-8 EVT4=AA-8 EVT6=AA-8 EVT10=AA-8 EVT12=AA-8 EVT13=AA-8 EVT14=AR-4 EVT15=AA-1
       EVT16=AA-3 EVT17=AA-4 EVT19=AA-8
Sta13: EVT3=AA-6 EVT4=AA-6 EVT6=AA-7 EVT10=AA-6 EVT12=AA-6 EVT13=AA-6 EVT16=AA-2 EVT17=AR-5
       EVT18=AA-2 EVT19=AA-7
"""


def _parse_expected(text: str) -> dict[tuple[State, Event], Action]:
    cells: dict[tuple[State, Event], Action] = {}
    state: State | None = None
    for line in text.strip().splitlines():
        head, _, rest = line.partition(":")
        if rest:  # "StaN: ..." starts a state; indented lines continue it
            state = State[head.strip().upper()]
        else:
            rest = line
        assert state is not None
        for cell in rest.split():
            event_name, action_label = cell.split("=")
            key = (state, Event[event_name])
            assert key not in cells, f"duplicate cell {key} in the expected table"
            cells[key] = Action[action_label.replace("-", "_")]
    return cells


EXPECTED_TABLE = _parse_expected(EXPECTED_TABLE_TEXT)
GRID = [(state, event) for state in State for event in Event]
E = Event


def test_expected_table_has_the_standards_cell_count() -> None:
    # 123 cells of Table 9-10 are filled; the other 124 of the 247 are empty.
    assert len(EXPECTED_TABLE) == 123
    assert len(GRID) == 13 * 19


@pytest.mark.parametrize(("state", "event"), GRID, ids=lambda x: x.name)
@pytest.mark.parametrize("is_requestor", [True, False], ids=["requestor", "acceptor"])
def test_every_cell_of_table_9_10(state: State, event: Event, is_requestor: bool) -> None:
    expected = EXPECTED_TABLE.get((state, event))
    if expected is None:
        assert (state, event) not in TABLE
        with pytest.raises(LocalProtocolError, match=f"{event.name}.*{state.name}"):
            transition(state, event, is_requestor=is_requestor)
    else:
        assert TABLE[state, event] is expected
        action, _ = transition(state, event, is_requestor=is_requestor)
        assert action is expected


def test_table_has_no_cell_outside_the_expected_ones() -> None:
    assert dict(TABLE) == EXPECTED_TABLE


def test_every_peer_event_is_defined_wherever_a_transport_connection_exists() -> None:
    peer_events = [E.EVT3, E.EVT4, E.EVT6, E.EVT10, E.EVT12, E.EVT13, E.EVT16, E.EVT17, E.EVT19]
    connected = [s for s in State if s not in (State.STA1, State.STA4)]
    missing = [(s, e) for s in connected for e in peer_events if (s, e) not in TABLE]
    assert missing == []


def test_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TABLE[State.STA1, Event.EVT2] = Action.AE_2  # type: ignore[index]


# The "Next state is" line of each action, Tables 9-6 to 9-9.
EXPECTED_NEXT = {
    "AE-1": 4, "AE-2": 5, "AE-3": 6, "AE-4": 1, "AE-5": 2, "AE-7": 6, "AE-8": 13,
    "DT-1": 6, "DT-2": 6,
    "AR-1": 7, "AR-2": 8, "AR-3": 1, "AR-4": 13, "AR-5": 1, "AR-6": 7, "AR-7": 8,
    "AR-9": 11, "AR-10": 12,
    "AA-1": 13, "AA-2": 1, "AA-3": 1, "AA-4": 1, "AA-5": 1, "AA-6": 13, "AA-7": 13, "AA-8": 13,
}  # fmt: skip
FIXED_ACTIONS = [a for a in Action if a not in (Action.AE_6, Action.AR_8)]


def test_expected_next_covers_all_fixed_actions() -> None:
    assert {a.value for a in FIXED_ACTIONS} == set(EXPECTED_NEXT)


@pytest.mark.parametrize("action", FIXED_ACTIONS, ids=lambda a: a.value)
@pytest.mark.parametrize("is_requestor", [True, False], ids=["requestor", "acceptor"])
@pytest.mark.parametrize("acceptable", [True, False], ids=["acceptable", "unacceptable"])
def test_next_state_of_fixed_actions(action: Action, is_requestor: bool, acceptable: bool) -> None:
    expected = State(EXPECTED_NEXT[action.value])
    assert next_state(action, is_requestor=is_requestor, acceptable=acceptable) is expected


@pytest.mark.parametrize("is_requestor", [True, False])
def test_ae6_depends_on_acceptability_only(is_requestor: bool) -> None:
    assert next_state(Action.AE_6, is_requestor=is_requestor) is State.STA3
    assert next_state(Action.AE_6, is_requestor=is_requestor, acceptable=True) is State.STA3
    assert next_state(Action.AE_6, is_requestor=is_requestor, acceptable=False) is State.STA13


@pytest.mark.parametrize("acceptable", [True, False])
def test_ar8_depends_on_role_only(acceptable: bool) -> None:
    assert next_state(Action.AR_8, is_requestor=True, acceptable=acceptable) is State.STA9
    assert next_state(Action.AR_8, is_requestor=False, acceptable=acceptable) is State.STA10


def test_transition_passes_role_and_acceptability_through() -> None:
    assert transition(State.STA2, Event.EVT6, is_requestor=False) == (Action.AE_6, State.STA3)
    assert transition(State.STA2, Event.EVT6, is_requestor=False, acceptable=False) == (
        Action.AE_6,
        State.STA13,
    )
    assert transition(State.STA7, Event.EVT12, is_requestor=True) == (Action.AR_8, State.STA9)
    assert transition(State.STA7, Event.EVT12, is_requestor=False) == (Action.AR_8, State.STA10)


def test_enum_values_and_descriptions() -> None:
    assert [s.value for s in State] == list(range(1, 14))
    assert [e.value for e in Event] == list(range(1, 20))
    assert len(Action) == 8 + 2 + 10 + 8
    assert State(13) is State.STA13 and Action("AR-10") is Action.AR_10
    for member in [*State, *Event, *Action]:
        assert member.description.strip(), member
    assert State.STA1.description == "Idle"
    assert "Awaiting Transport Connection Close Indication" in State.STA13.description
    assert Event.EVT18.description.startswith("ARTIM timer expired")
    assert "service-user source" in Action.AA_1.description
    assert "service-provider source" in Action.AA_8.description
    assert Action.AA_6.description == "Ignore PDU"
    assert str(State.STA6) == "STA6 (Association established and ready for data transfer)"


# --- walks through whole association lifetimes -------------------------------------------


def walk(
    events: list[Event],
    *,
    is_requestor: bool,
    acceptable: bool = True,
    start: State = State.STA1,
) -> list[tuple[str, int]]:
    """Run `events` from `start`; return (action label, next state number) per step."""
    state = start
    steps = []
    for event in events:
        action, state = transition(state, event, is_requestor=is_requestor, acceptable=acceptable)
        steps.append((action.value, state.value))
    return steps


def test_acceptor_normal_lifetime() -> None:
    events = [E.EVT5, E.EVT6, E.EVT7, E.EVT10, E.EVT9, E.EVT10, E.EVT12, E.EVT9, E.EVT14, E.EVT17]
    assert walk(events, is_requestor=False) == [
        ("AE-5", 2),
        ("AE-6", 3),
        ("AE-7", 6),
        ("DT-2", 6),
        ("DT-1", 6),
        ("DT-2", 6),
        ("AR-2", 8),
        ("AR-7", 8),  # may still send P-DATA before answering the release
        ("AR-4", 13),
        ("AR-5", 1),
    ]


def test_acceptor_user_rejects_then_artim_expires_in_sta13() -> None:
    events = [E.EVT5, E.EVT6, E.EVT8, E.EVT18]
    assert walk(events, is_requestor=False) == [("AE-5", 2), ("AE-6", 3), ("AE-8", 13), ("AA-2", 1)]


def test_acceptor_provider_rejects_unacceptable_rq() -> None:
    events = [E.EVT5, E.EVT6, E.EVT17]
    assert walk(events, is_requestor=False, acceptable=False) == [
        ("AE-5", 2),
        ("AE-6", 13),
        ("AR-5", 1),
    ]


def test_artim_expiry_in_sta2() -> None:
    assert walk([E.EVT5, E.EVT18], is_requestor=False) == [("AE-5", 2), ("AA-2", 1)]


def test_requestor_normal_lifetime() -> None:
    events = [E.EVT1, E.EVT2, E.EVT3, E.EVT9, E.EVT10, E.EVT11, E.EVT10, E.EVT13]
    assert walk(events, is_requestor=True) == [
        ("AE-1", 4),
        ("AE-2", 5),
        ("AE-3", 6),
        ("DT-1", 6),
        ("DT-2", 6),
        ("AR-1", 7),
        ("AR-6", 7),  # the peer may still send P-DATA before its A-RELEASE-RP
        ("AR-3", 1),
    ]


def test_requestor_rejected() -> None:
    assert walk([E.EVT1, E.EVT2, E.EVT4], is_requestor=True) == [
        ("AE-1", 4),
        ("AE-2", 5),
        ("AE-4", 1),
    ]


def test_release_collision_requestor_side() -> None:
    # Sta7 -> Sta9 -> Sta11 -> Sta1: AR-3 closes the transport, so this side skips Sta13.
    events = [E.EVT11, E.EVT12, E.EVT14, E.EVT13]
    assert walk(events, is_requestor=True, start=State.STA6) == [
        ("AR-1", 7),
        ("AR-8", 9),
        ("AR-9", 11),
        ("AR-3", 1),
    ]


def test_release_collision_acceptor_side() -> None:
    events = [E.EVT11, E.EVT12, E.EVT13, E.EVT14, E.EVT17]
    assert walk(events, is_requestor=False, start=State.STA6) == [
        ("AR-1", 7),
        ("AR-8", 10),
        ("AR-10", 12),
        ("AR-4", 13),
        ("AR-5", 1),
    ]


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        ([E.EVT15, E.EVT17], [("AA-1", 13), ("AR-5", 1)]),  # local abort, peer closes
        ([E.EVT15, E.EVT18], [("AA-1", 13), ("AA-2", 1)]),  # local abort, peer silent
        ([E.EVT15, E.EVT16], [("AA-1", 13), ("AA-2", 1)]),  # abort collision
        ([E.EVT16], [("AA-3", 1)]),  # peer aborts
        ([E.EVT17], [("AA-4", 1)]),  # transport lost
        ([E.EVT3], [("AA-8", 13)]),  # unexpected A-ASSOCIATE-AC
        ([E.EVT19, E.EVT10, E.EVT19, E.EVT6, E.EVT17], [
            ("AA-8", 13), ("AA-6", 13), ("AA-7", 13), ("AA-7", 13), ("AR-5", 1)
        ]),  # invalid PDU: abort, then ignore or re-abort until the peer closes
    ],
)  # fmt: skip
@pytest.mark.parametrize("is_requestor", [True, False])
def test_abort_paths_from_sta6(
    events: list[Event], expected: list[tuple[str, int]], is_requestor: bool
) -> None:
    assert walk(events, is_requestor=is_requestor, start=State.STA6) == expected


def test_abort_before_association() -> None:
    assert walk([E.EVT1, E.EVT15], is_requestor=True) == [("AE-1", 4), ("AA-2", 1)]
    assert walk([E.EVT1, E.EVT17], is_requestor=True) == [("AE-1", 4), ("AA-4", 1)]
    assert walk([E.EVT5, E.EVT19], is_requestor=False) == [("AE-5", 2), ("AA-1", 13)]
    assert walk([E.EVT5, E.EVT16], is_requestor=False) == [("AE-5", 2), ("AA-2", 1)]
    assert walk([E.EVT5, E.EVT6, E.EVT15], is_requestor=False) == [
        ("AE-5", 2),
        ("AE-6", 3),
        ("AA-1", 13),
    ]


def test_invalid_pdu_in_sta6_is_aa8_with_provider_abort() -> None:
    action, state = transition(State.STA6, Event.EVT19, is_requestor=False)
    assert (action, state) == (Action.AA_8, State.STA13)
    effects = effects_of(action)
    assert effects.send_pdu is PDUType.ABORT
    assert effects.abort_source is AbortSource.SERVICE_PROVIDER
    assert effects.indication is Indication.A_P_ABORT
    assert effects.start_artim


def test_local_misuse_raises() -> None:
    with pytest.raises(LocalProtocolError):
        transition(State.STA7, Event.EVT9, is_requestor=True)  # P-DATA after A-RELEASE request
    with pytest.raises(LocalProtocolError):
        transition(State.STA10, Event.EVT14, is_requestor=False)  # respond before the RP
    with pytest.raises(LocalProtocolError):
        transition(State.STA13, Event.EVT15, is_requestor=False)  # nothing left to abort


# --- effects -------------------------------------------------------------------------------


def test_every_action_has_effects() -> None:
    assert set(EFFECTS) == set(Action)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (Action.AE_1, Effects(connect_transport=True)),
        (Action.AE_2, Effects(send_pdu=PDUType.ASSOCIATE_RQ)),
        (Action.AE_3, Effects(indication=Indication.A_ASSOCIATE_ACCEPTED)),
        (Action.AE_4, Effects(indication=Indication.A_ASSOCIATE_REJECTED, close_transport=True)),
        (Action.AE_5, Effects(start_artim=True)),
        (Action.AE_6, Effects(stop_artim=True, indication=Indication.A_ASSOCIATE)),
        (Action.AE_7, Effects(send_pdu=PDUType.ASSOCIATE_AC)),
        (Action.AE_8, Effects(send_pdu=PDUType.ASSOCIATE_RJ, start_artim=True)),
        (Action.DT_1, Effects(send_pdu=PDUType.P_DATA_TF)),
        (Action.DT_2, Effects(indication=Indication.P_DATA)),
        (Action.AR_1, Effects(send_pdu=PDUType.RELEASE_RQ)),
        (Action.AR_2, Effects(indication=Indication.A_RELEASE)),
        (Action.AR_3, Effects(indication=Indication.A_RELEASE_CONFIRMATION, close_transport=True)),
        (Action.AR_4, Effects(send_pdu=PDUType.RELEASE_RP, start_artim=True)),
        (Action.AR_5, Effects(stop_artim=True)),
        (Action.AR_6, Effects(indication=Indication.P_DATA)),
        (Action.AR_7, Effects(send_pdu=PDUType.P_DATA_TF)),
        (Action.AR_8, Effects(indication=Indication.A_RELEASE)),
        (Action.AR_9, Effects(send_pdu=PDUType.RELEASE_RP)),
        (Action.AR_10, Effects(indication=Indication.A_RELEASE_CONFIRMATION)),
        (Action.AA_1, Effects(
            send_pdu=PDUType.ABORT, abort_source=AbortSource.SERVICE_USER, start_artim=True
        )),
        (Action.AA_2, Effects(stop_artim=True, close_transport=True)),
        (Action.AA_3, Effects(indication=Indication.A_ABORT_BY_SOURCE, close_transport=True)),
        (Action.AA_4, Effects(indication=Indication.A_P_ABORT)),
        (Action.AA_5, Effects(stop_artim=True)),
        (Action.AA_6, Effects()),
        (Action.AA_7, Effects(send_pdu=PDUType.ABORT)),
        (Action.AA_8, Effects(
            send_pdu=PDUType.ABORT,
            abort_source=AbortSource.SERVICE_PROVIDER,
            indication=Indication.A_P_ABORT,
            start_artim=True,
        )),
    ],
    ids=lambda x: x.value if isinstance(x, Action) else "",
)  # fmt: skip
def test_effects_of_each_action(action: Action, expected: Effects) -> None:
    assert EFFECTS[action] == expected
    assert effects_of(action) == expected


def test_ae6_reject_branch() -> None:
    rejected = effects_of(Action.AE_6, acceptable=False)
    assert rejected is AE_6_REJECT_EFFECTS
    assert rejected == Effects(stop_artim=True, send_pdu=PDUType.ASSOCIATE_RJ, start_artim=True)
    # acceptable only matters for AE-6
    assert effects_of(Action.AE_8, acceptable=False) == EFFECTS[Action.AE_8]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (AbortSource.SERVICE_USER, Indication.A_ABORT),
        (AbortSource.SERVICE_PROVIDER, Indication.A_P_ABORT),
        (AbortSource.RESERVED, Indication.A_P_ABORT),
        (AbortSource(9), Indication.A_P_ABORT),
    ],
)
def test_abort_indication_resolves_aa3(source: AbortSource, expected: Indication) -> None:
    assert abort_indication(source) is expected


def test_effects_are_frozen() -> None:
    with pytest.raises(AttributeError):
        EFFECTS[Action.AA_6].close_transport = True  # type: ignore[misc]


def _cells() -> list[tuple[State, Event, Action, State, Effects]]:
    """Every defined cell with each of its outcomes (both roles, AE-6 both ways)."""
    out = []
    for (state, event), action in TABLE.items():
        outcomes = {
            (next_state(action, is_requestor=r, acceptable=a), effects_of(action, acceptable=a))
            for r in (True, False)
            for a in (True, False)
        }
        out += [(state, event, action, new, effects) for new, effects in outcomes]
    return out


def test_sta1_is_only_entered_with_the_transport_gone() -> None:
    for state, event, action, new, effects in _cells():
        if new is State.STA1:
            assert effects.close_transport or event is Event.EVT17, (state, event, action)


def test_artim_runs_exactly_in_sta2_and_sta13() -> None:
    # ARTIM guards only the wait for an A-ASSOCIATE-RQ (Sta2) and for the close (Sta13).
    for state, event, action, new, effects in _cells():
        running_before = state in (State.STA2, State.STA13)
        running_after = effects.start_artim or (running_before and not effects.stop_artim)
        assert running_after == (new in (State.STA2, State.STA13)), (state, event, action)


def test_only_aa1_and_aa8_fix_the_abort_source() -> None:
    for action, effects in EFFECTS.items():
        fixed = action in (Action.AA_1, Action.AA_8)
        assert (effects.abort_source is not None) == fixed, action
        if fixed:
            assert effects.send_pdu is PDUType.ABORT


# --- a requestor and an acceptor driven against each other through their effects -----------

PDU_EVENT = {
    PDUType.ASSOCIATE_RQ: E.EVT6,
    PDUType.ASSOCIATE_AC: E.EVT3,
    PDUType.ASSOCIATE_RJ: E.EVT4,
    PDUType.P_DATA_TF: E.EVT10,
    PDUType.RELEASE_RQ: E.EVT12,
    PDUType.RELEASE_RP: E.EVT13,
    PDUType.ABORT: E.EVT16,
}


@dataclass
class Side:
    is_requestor: bool
    state: State = State.STA1
    # user's answer to (indication, state it arrived in), e.g. accept an A-ASSOCIATE
    replies: dict[tuple[Indication, State], Event] = field(default_factory=dict)
    log: list[tuple[str, int]] = field(default_factory=list)


def run_pair(requestor: Side, acceptor: Side, queue: deque[tuple[Side, Event]]) -> None:
    while queue:
        side, event = queue.popleft()
        peer = acceptor if side is requestor else requestor
        action, side.state = transition(side.state, event, is_requestor=side.is_requestor)
        side.log.append((action.value, side.state.value))
        effects = effects_of(action)
        if effects.connect_transport:
            queue += [(peer, E.EVT5), (side, E.EVT2)]
        if effects.send_pdu is not None:
            queue.append((peer, PDU_EVENT[effects.send_pdu]))
        if effects.indication is not None:
            reply = side.replies.get((effects.indication, side.state))
            if reply is not None:
                queue.append((side, reply))
        if effects.close_transport:
            queue.append((peer, E.EVT17))


def test_pair_full_lifetime() -> None:
    requestor = Side(
        is_requestor=True,
        replies={
            (Indication.A_ASSOCIATE_ACCEPTED, State.STA6): E.EVT9,  # send a request
            (Indication.P_DATA, State.STA6): E.EVT11,  # got the response: release
        },
    )
    acceptor = Side(
        is_requestor=False,
        replies={
            (Indication.A_ASSOCIATE, State.STA3): E.EVT7,
            (Indication.P_DATA, State.STA6): E.EVT9,
            (Indication.A_RELEASE, State.STA8): E.EVT14,
        },
    )
    run_pair(requestor, acceptor, deque([(requestor, E.EVT1)]))
    assert requestor.log == [
        ("AE-1", 4),
        ("AE-2", 5),
        ("AE-3", 6),
        ("DT-1", 6),
        ("DT-2", 6),
        ("AR-1", 7),
        ("AR-3", 1),
    ]
    assert acceptor.log == [
        ("AE-5", 2),
        ("AE-6", 3),
        ("AE-7", 6),
        ("DT-2", 6),
        ("DT-1", 6),
        ("AR-2", 8),
        ("AR-4", 13),
        ("AR-5", 1),
    ]


def test_pair_release_collision() -> None:
    # PS3.8 7.2.3: the requestor's user answers first; the acceptor's user answers only after
    # its A-RELEASE confirmation.
    requestor = Side(is_requestor=True, replies={(Indication.A_RELEASE, State.STA9): E.EVT14})
    acceptor = Side(
        is_requestor=False,
        replies={
            (Indication.A_ASSOCIATE, State.STA3): E.EVT7,
            (Indication.A_RELEASE_CONFIRMATION, State.STA12): E.EVT14,
        },
    )
    run_pair(requestor, acceptor, deque([(requestor, E.EVT1)]))
    assert (requestor.state, acceptor.state) == (State.STA6, State.STA6)
    requestor.log.clear()
    acceptor.log.clear()

    run_pair(requestor, acceptor, deque([(requestor, E.EVT11), (acceptor, E.EVT11)]))
    assert requestor.log == [("AR-1", 7), ("AR-8", 9), ("AR-9", 11), ("AR-3", 1)]
    assert acceptor.log == [("AR-1", 7), ("AR-8", 10), ("AR-10", 12), ("AR-4", 13), ("AR-5", 1)]


def test_pair_abort_in_sta6() -> None:
    requestor = Side(is_requestor=True)
    acceptor = Side(is_requestor=False, replies={(Indication.A_ASSOCIATE, State.STA3): E.EVT7})
    run_pair(requestor, acceptor, deque([(requestor, E.EVT1)]))
    requestor.log.clear()
    acceptor.log.clear()
    run_pair(requestor, acceptor, deque([(acceptor, E.EVT15)]))
    # the acceptor aborts; the requestor is told and closes; the acceptor sees the close
    assert acceptor.log == [("AA-1", 13), ("AR-5", 1)]
    assert requestor.log == [("AA-3", 1)]


# --- random event sequences ----------------------------------------------------------------


@given(
    events=st.lists(st.sampled_from(Event), max_size=60),
    is_requestor=st.booleans(),
    acceptable=st.booleans(),
)
def test_random_walks_stay_in_the_table(
    events: list[Event], is_requestor: bool, acceptable: bool
) -> None:
    state = State.STA1
    transport_open = False
    artim_running = False
    for event in events:
        if (state, event) not in TABLE:
            with pytest.raises(LocalProtocolError):
                transition(state, event, is_requestor=is_requestor, acceptable=acceptable)
            return
        action, new = transition(state, event, is_requestor=is_requestor, acceptable=acceptable)
        assert action is TABLE[state, event]
        assert isinstance(new, State)
        assert new is next_state(action, is_requestor=is_requestor, acceptable=acceptable)

        # A small model of the transport and the timer, driven by events and effects alone.
        if event in (Event.EVT2, Event.EVT5):
            transport_open = True
        if event is Event.EVT17:
            transport_open = False
        effects = effects_of(action, acceptable=acceptable)
        artim_running = (artim_running and not effects.stop_artim) or effects.start_artim
        if effects.close_transport:
            transport_open = False
        state = new

        assert transport_open == (state not in (State.STA1, State.STA4)), (event, action)
        assert artim_running == (state in (State.STA2, State.STA13)), (event, action)
