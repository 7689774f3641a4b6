"""The sans-I/O connection: an in-memory requestor/acceptor pair, with time as an input."""

from __future__ import annotations

import pytest

from dicomd.ul.codes import (
    AbortReason,
    AbortSource,
    ContextResult,
    LocalProtocolError,
    RejectResult,
    RejectSource,
)
from dicomd.ul.connection import (
    NEED_DATA,
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    Connection,
    ConnectionClosed,
    ConnectionEvent,
    DataReceived,
    NeedData,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
)
from dicomd.ul.fsm import State
from dicomd.ul.items import (
    MaximumLength,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
)
from dicomd.ul.pdu import (
    PDV,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    decode,
    encode,
)

RQ = AssociateRQ(
    called_ae_title="ACCEPTOR",
    calling_ae_title="REQUESTOR",
    application_context="1.2.840.10008.3.1.1.1",
    presentation_contexts=(PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),),
    user_information=UserInformation((MaximumLength(16384),)),
)
AC = AssociateAC(
    called_ae_title="ACCEPTOR",
    calling_ae_title="REQUESTOR",
    application_context="1.2.840.10008.3.1.1.1",
    presentation_contexts=(
        PresentationContextAC(1, ContextResult.ACCEPTANCE, "1.2.840.10008.1.2"),
    ),
    user_information=UserInformation((MaximumLength(32768),)),
)
DATA = PDataTF((PDV(1, 0x03, b"\x00" * 10),))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def events(conn: Connection) -> list[ConnectionEvent]:
    out = []
    while not isinstance(event := conn.next_event(), NeedData):
        out.append(event)
    assert event is NEED_DATA
    return out


def transfer(
    src: Connection, dst: Connection, *, byte_by_byte: bool = False
) -> list[ConnectionEvent]:
    """Move what src wants to send into dst; return the events dst produced."""
    data = b"".join(src.data_to_send())
    got: list[ConnectionEvent] = []
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    for chunk in chunks:
        if chunk:
            dst.receive_data(chunk)
            got += events(dst)
    return got


def state(conn: Connection) -> State:
    """conn.state, read afresh: mypy keeps an attribute narrowed by an assert across the method
    calls that change it."""
    return conn.state


def pair(clock: Clock, **acceptor_kw: object) -> tuple[Connection, Connection]:
    req = Connection(Role.REQUESTOR, artim_timeout=30, clock=clock)
    acc = Connection(Role.ACCEPTOR, artim_timeout=30, clock=clock, **acceptor_kw)  # type: ignore[arg-type]
    req.request(RQ)
    assert req.state is State.STA4
    acc.connection_made()
    assert acc.state is State.STA2 and acc.deadline == 30
    req.connection_made()
    assert state(req) is State.STA5
    return req, acc


@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_whole_lifetime(byte_by_byte: bool) -> None:
    clock = Clock()
    req, acc = pair(clock)
    assert transfer(req, acc, byte_by_byte=byte_by_byte) == [AssociationRequested(RQ)]
    assert acc.deadline is None  # AE-6 stops ARTIM
    acc.accept(AC)
    assert acc.state is State.STA6
    assert transfer(acc, req, byte_by_byte=byte_by_byte) == [AssociationAccepted(AC)]
    assert req.state is State.STA6
    req.send_data(DATA)
    acc.send_encoded_data([memoryview(encode(DATA))])  # the same PDU, encoded beforehand
    assert transfer(req, acc, byte_by_byte=byte_by_byte) == [DataReceived(DATA)]
    assert transfer(acc, req, byte_by_byte=byte_by_byte) == [DataReceived(DATA)]
    req.release()
    assert state(req) is State.STA7
    assert transfer(req, acc, byte_by_byte=byte_by_byte) == [ReleaseRequested()]
    acc.release_response()
    assert state(acc) is State.STA13 and acc.deadline == 30
    assert transfer(acc, req) == [ReleaseConfirmed(), ConnectionClosed()]
    assert req.closed
    acc.connection_lost()  # the requestor closed the transport: AR-5
    assert events(acc) == [ConnectionClosed()]
    assert acc.closed and acc.deadline is None


def test_several_pdus_in_one_chunk_and_trailing_bytes() -> None:
    clock = Clock()
    req, acc = pair(clock)
    transfer(req, acc)
    acc.accept(AC)
    transfer(acc, req)
    for _ in range(3):
        req.send_data(DATA)
    data = b"".join(req.data_to_send())
    acc.receive_data(data[:-5])
    assert events(acc) == [DataReceived(DATA)] * 2
    acc.receive_data(data[-5:])
    assert events(acc) == [DataReceived(DATA)]


def test_provider_screen_rejects_with_rj_and_artim() -> None:
    clock = Clock()
    rj = AssociateRJ(RejectResult.REJECTED_TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION, 2)
    req, acc = pair(clock, screen=lambda rq: rj)
    assert transfer(req, acc) == [AssociationRejected(rj, local=True)]
    assert acc.state is State.STA13 and acc.deadline == 30
    assert transfer(acc, req) == [AssociationRejected(rj, local=False), ConnectionClosed()]
    clock.now = 30
    acc.handle_timeout()  # the requestor never closed: ARTIM expiry, AA-2
    assert events(acc) == [ConnectionClosed()]


def test_user_rejection() -> None:
    clock = Clock()
    req, acc = pair(clock)
    transfer(req, acc)
    rj = AssociateRJ(RejectResult.REJECTED_PERMANENT, RejectSource.SERVICE_USER, 7)
    acc.reject(rj)
    assert acc.state is State.STA13
    assert decode(b"".join(acc.data_to_send())) == rj


def test_artim_expiry_while_waiting_for_request() -> None:
    clock = Clock()
    acc = Connection(Role.ACCEPTOR, artim_timeout=5, clock=clock)
    acc.connection_made()
    acc.receive_data(b"\x01\x00\x00")  # three bytes, then nothing
    assert events(acc) == []
    clock.now = 4.9
    acc.handle_timeout()
    assert not acc.closed
    clock.now = 5.0
    acc.handle_timeout()
    assert events(acc) == [ConnectionClosed()]
    assert acc.data_to_send() == []  # AA-2: close, nothing sent


def test_invalid_pdu_when_established_is_provider_abort() -> None:
    clock = Clock()
    req, acc = pair(clock)
    transfer(req, acc)
    acc.accept(AC)
    acc.data_to_send()
    clock.now = 100
    acc.receive_data(b"\x09\x00\x00\x00\x00\x00")
    got = events(acc)
    assert len(got) == 1 and isinstance(got[0], Aborted)
    assert got[0].local and got[0].reason == AbortReason.UNRECOGNIZED_PDU
    assert decode(b"".join(acc.data_to_send())) == Abort(
        AbortSource.SERVICE_PROVIDER, AbortReason.UNRECOGNIZED_PDU
    )
    assert acc.state is State.STA13 and acc.deadline == 130
    acc.receive_data(b"more garbage after the abort")  # ignored: the stream is dead
    assert events(acc) == []
    assert acc.data_to_send() == []  # and no second A-ABORT


def test_unexpected_pdu_before_association_is_aborted() -> None:
    clock = Clock()
    acc = Connection(Role.ACCEPTOR, artim_timeout=5, clock=clock)
    acc.connection_made()
    from dicomd.ul.pdu import encode

    acc.receive_data(encode(DATA))
    got = events(acc)
    assert isinstance(got[0], Aborted) and got[0].reason == AbortReason.UNEXPECTED_PDU
    assert decode(b"".join(acc.data_to_send())) == Abort(
        AbortSource.SERVICE_PROVIDER, AbortReason.UNEXPECTED_PDU
    )
    assert acc.state is State.STA13


def test_peer_abort_and_lost_transport() -> None:
    clock = Clock()
    req, acc = pair(clock)
    transfer(req, acc)
    acc.accept(AC)
    transfer(acc, req)
    req.abort()
    assert req.state is State.STA13
    got = transfer(req, acc)
    assert got == [
        Aborted(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED, local=False),
        ConnectionClosed(),
    ]
    # A transport that drops in Sta6 is an A-P-ABORT (AA-4).
    req2, acc2 = pair(clock)
    transfer(req2, acc2)
    acc2.accept(AC)
    acc2.receive_data(b"")
    got = events(acc2)
    assert isinstance(got[0], Aborted) and got[0].source == AbortSource.SERVICE_PROVIDER
    assert got[-1] == ConnectionClosed() and acc2.closed


def test_release_collision() -> None:
    clock = Clock()
    req, acc = pair(clock)
    transfer(req, acc)
    acc.accept(AC)
    transfer(acc, req)
    req.release()
    acc.release()
    assert transfer(acc, req) == [ReleaseRequested(collision=True)]
    assert transfer(req, acc) == [ReleaseRequested(collision=True)]
    assert (req.state, acc.state) == (State.STA9, State.STA10)
    req.release_response()  # AR-9
    assert transfer(req, acc) == [ReleaseConfirmed()]  # AR-10, acceptor to Sta12
    acc.release_response()  # AR-4
    assert transfer(acc, req) == [ReleaseConfirmed(), ConnectionClosed()]
    assert req.closed and acc.state is State.STA13


def test_local_misuse_is_a_local_protocol_error() -> None:
    acc = Connection(Role.ACCEPTOR, artim_timeout=5, clock=Clock())
    acc.connection_made()
    with pytest.raises(LocalProtocolError):
        acc.send_data(DATA)
    with pytest.raises(LocalProtocolError):
        acc.send_encoded_data([b"\x04\x00"])
    assert acc.data_to_send() == []
    with pytest.raises(LocalProtocolError):
        acc.release()


def test_reader_limit_narrows_after_establishment() -> None:
    clock = Clock()
    req = Connection(Role.REQUESTOR, artim_timeout=30, clock=clock)
    acc = Connection(Role.ACCEPTOR, artim_timeout=30, clock=clock, max_pdu_length=4096)
    req.request(RQ)
    acc.connection_made()
    req.connection_made()
    transfer(req, acc)
    acc.accept(AC)
    acc.established(16384)
    acc.data_to_send()
    acc.receive_data(b"\x04\x00\x00\x00\x10\x01")  # P-DATA declaring 4097 bytes
    got = events(acc)
    assert isinstance(got[0], Aborted) and got[0].reason == AbortReason.INVALID_PDU_PARAMETER_VALUE
