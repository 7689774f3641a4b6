"""Fuzzing the pure layers with mutated sessions: only protocol errors come out, never a crash.

- PDUReader over a whole mutated session, fed at once and in random chunks: the same PDUs and the
  same error whatever the chunking, and nothing but RemoteProtocolError.
- decode_command on mutated command sets: a Message or DIMSEDecodeError; what decodes re-encodes
  to a command set that decodes to the same Message.
- MessageAssembler on the P-DATA-TF PDUs of mutated sessions: only RemoteProtocolError.
- The whole sans-I/O acceptor (Connection + negotiate + MessageAssembler, wired as the asyncio
  runner wires them): a mutated session gives events and outgoing PDUs, never an exception, and
  everything it sends is a well-formed PDU an acceptor may send.

(tests/ul/test_pdu_roundtrip.py fuzzes decode() on single mutated PDUs; these go a level up, from
valid sessions, so that faults land behind a valid association too.)
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dicomd.app import build_state
from dicomd.config import Config
from dicomd.dimse.fragments import CommandReceived, MessageAssembler, fragment
from dicomd.dimse.messages import (
    CEchoRQ,
    CEchoRSP,
    DIMSEDecodeError,
    decode_command,
    encode_command,
    has_dataset,
)
from dicomd.ul.codes import AbortReason, LocalProtocolError, RemoteProtocolError
from dicomd.ul.connection import (
    Aborted,
    AssociationRequested,
    Connection,
    ConnectionClosed,
    DataReceived,
    NeedData,
    ReleaseRequested,
    Role,
)
from dicomd.ul.negotiation import negotiate
from dicomd.ul.pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
    decode,
    encode,
)
from dicomd.ul.reader import PDUReader
from tests.fuzz import corpus

SERVER_MAX_PDU = 262_144
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def read_all(stream: bytes, chunks: list[int]) -> tuple[list[PDU], tuple[str, AbortReason] | None]:
    """The PDUs of `stream` fed in pieces of the given sizes (cycled), and the error that ended it."""
    reader = PDUReader(SERVER_MAX_PDU)
    pdus: list[PDU] = []
    offset, i = 0, 0
    try:
        while True:
            while (pdu := reader.next_pdu()) is not None:
                pdus.append(pdu)
            if offset >= len(stream):
                return pdus, None
            size = chunks[i % len(chunks)] if chunks else len(stream)
            reader.feed(stream[offset : offset + size])
            offset += size
            i += 1
    except RemoteProtocolError as e:
        assert isinstance(e.reason, AbortReason)
        assert reader.buffered == 0  # a failed reader drops what it held
        return pdus, (str(e), e.reason)


@FUZZ
@given(corpus.streams(), st.lists(st.integers(1, 300), max_size=8))
@example(corpus.REGRESSIONS[3], [1])
@example(corpus.REGRESSIONS[2], [7, 1])
def test_reader_chunking_does_not_change_the_outcome(stream: bytes, chunks: list[int]) -> None:
    whole = read_all(stream, [])
    assert read_all(stream, chunks) == whole
    assert read_all(stream, [1]) == whole
    for pdu in whole[0]:
        # Anything the reader hands out is a PDU that encodes again, to something that decodes the same.
        assert decode(encode(pdu)) == pdu


@FUZZ
@given(corpus.mutated_command())
@example(b"")
@example(b"\x00\x00\x00\x00\x04\x00\x00\x00\xff\xff\xff\xff")  # group length UL with a 4 GiB length
@example(corpus.COMMANDS[2][:-3])  # truncated inside the last element
@example(struct.pack("<HHI", 0, 0x100, 2) + b"\x30\x00")  # C-ECHO-RQ with nothing else
def test_decode_command_raises_only_dimse_decode_error(data: bytes) -> None:
    try:
        message = decode_command(data)
    except DIMSEDecodeError:
        return
    try:
        again = encode_command(message)
    except LocalProtocolError:
        # Decoding is lenient where encoding is strict (e.g. an over-long UID): not a fault, as long
        # as decoding never raises anything else. Reported by the test name if it ever mattered.
        return
    assert decode_command(again) == message


def p_data_of(stream: bytes) -> list[PDataTF]:
    pdus, _error = read_all(stream, [])
    return [p for p in pdus if isinstance(p, PDataTF)]


@FUZZ
@given(corpus.streams())
def test_assembler_raises_only_remote_protocol_error(stream: bytes) -> None:
    assembler = MessageAssembler()
    try:
        for pdu in p_data_of(stream):
            for item in assembler.feed(pdu):
                if isinstance(item, CommandReceived):
                    assert has_dataset(item.command) == assembler.expecting_dataset
    except RemoteProtocolError as e:
        assert isinstance(e.reason, AbortReason)


# --- the sans-I/O acceptor, wired as dicomd.net.association wires it --------------------------

POLICY = build_state(Config()).policy
_ACCEPTOR_PDUS = (AssociateAC, AssociateRJ, PDataTF, ReleaseRQ, ReleaseRP, Abort)


class PureAcceptor:
    """Connection + negotiate + MessageAssembler, the runner's logic without asyncio.

    Echo requests are answered; data sets are counted. Time only moves when the test says so.
    """

    def __init__(self) -> None:
        self.now = 0.0
        self.conn = Connection(
            Role.ACCEPTOR,
            artim_timeout=30.0,
            clock=lambda: self.now,
            max_pdu_length=SERVER_MAX_PDU,
        )
        self.assembler = MessageAssembler()
        self.contexts: dict[int, str] = {}
        self.events: list[object] = []
        self.sent = bytearray()
        self.conn.connection_made()

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self.pump()

    def pump(self) -> None:
        conn = self.conn
        while not isinstance(event := conn.next_event(), NeedData):
            self.events.append(event)
            if isinstance(event, AssociationRequested):
                self.on_request(event.request)
            elif isinstance(event, DataReceived):
                try:
                    self.on_data(event.pdu)
                except RemoteProtocolError as e:
                    conn.protocol_error(e)
            elif isinstance(event, ReleaseRequested):
                conn.release_response()
            self.sent += b"".join(conn.data_to_send())
        self.sent += b"".join(conn.data_to_send())

    def on_request(self, rq: AssociateRQ) -> None:
        result = negotiate(rq, POLICY)
        if isinstance(result, AssociateRJ):
            self.conn.reject(result)
            return
        self.contexts = {c.context_id: c.abstract_syntax for c in result.contexts.values()}
        self.conn.accept(result.response)
        self.conn.established(result.peer_max_pdu_length)

    def on_data(self, pdu: PDataTF) -> None:
        for item in self.assembler.feed(pdu):
            if not isinstance(item, CommandReceived):
                continue
            if item.context_id not in self.contexts:
                raise RemoteProtocolError(
                    "context not accepted", AbortReason.INVALID_PDU_PARAMETER_VALUE
                )
            command = item.command
            if isinstance(command, CEchoRQ):
                response = CEchoRSP(command.message_id, command.affected_sop_class_uid, 0)
                data = encode_command(response)
                peer_max = self.conn.peer_max_pdu_length or SERVER_MAX_PDU
                for out in fragment(
                    item.context_id, data, is_command=True, max_pdu_length=peer_max
                ):
                    self.conn.send_data(out)


def check_output(sent: bytes) -> list[PDU]:
    """What the acceptor sent: whole, well-formed PDUs of the kinds an acceptor sends."""
    reader = PDUReader(1 << 24)
    reader.feed(sent)
    pdus = []
    while (pdu := reader.next_pdu()) is not None:
        pdus.append(pdu)
    assert reader.buffered == 0, "the acceptor sent a partial PDU"
    for pdu in pdus:
        assert isinstance(pdu, _ACCEPTOR_PDUS), pdu
        assert not isinstance(pdu, ReleaseRQ), "an acceptor never initiates a release here"
    return pdus


@FUZZ
@given(corpus.streams(), st.integers(1, 512), st.booleans())
@example(corpus.REGRESSIONS[4], 64, True)
@example(corpus.REGRESSIONS[11], 3, False)
def test_acceptor_state_machine_never_raises(stream: bytes, chunk: int, close: bool) -> None:
    acceptor = PureAcceptor()
    for start in range(0, len(stream), chunk):
        acceptor.feed(stream[start : start + chunk])
    if close:
        acceptor.feed(b"")  # the peer closes its side (EVT17)
    else:
        acceptor.now += 3600  # or goes silent: ARTIM (if it runs) expires
        acceptor.conn.handle_timeout()
        acceptor.pump()
    pdus = check_output(bytes(acceptor.sent))
    if close:
        assert acceptor.conn.closed
        assert isinstance(acceptor.events[-1], ConnectionClosed)
    # A protocol fault found in the peer's bytes is answered with an A-ABORT, and that is the last
    # thing we send; a rejection is the only PDU sent before the close.
    provider_aborts = [
        e for e in acceptor.events if isinstance(e, Aborted) and e.local and e.detail != "closed"
    ]
    if provider_aborts and pdus:
        assert isinstance(pdus[-1], Abort)
    if any(isinstance(p, AssociateRJ) for p in pdus):
        # After a rejection, nothing but an A-ABORT for what the peer sent on regardless.
        assert isinstance(pdus[0], AssociateRJ)
        assert all(isinstance(p, Abort) for p in pdus[1:])
