"""End to end on 127.0.0.1 port 0: negotiation answers, bad input, limits, timeouts, shutdown."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Awaitable, Callable

import pytest

from dicomd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomd.dimse import status
from dicomd.dimse.messages import CEchoRQ, CEchoRSP, decode_command, encode_command
from dicomd.net.requestor import AssociationRejectedError, echo
from dicomd.services.base import Request, Responder
from dicomd.services.echo import VERIFICATION_SOP_CLASS, handle_echo
from dicomd.ul.codes import (
    AbortReason,
    AbortSource,
    ContextResult,
    RejectResult,
    RejectSource,
)
from dicomd.ul.items import PresentationContextRQ
from dicomd.ul.pdu import (
    PDV,
    Abort,
    AssociateAC,
    AssociateRJ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
    encode,
)
from dicomd.ul.reader import PDUReader
from tests.conftest import make_config, run_server
from tests.net.rawpeer import IMPLICIT, VERIFICATION, RawPeer, associate_rq, echo_pdata


async def our_echo(port: int, **kw: object) -> int:
    return await echo(
        "127.0.0.1",
        port,
        calling_ae_title=str(kw.get("calling", "TESTSCU")),
        called_ae_title=str(kw.get("called", "DICOMD")),
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        timeout=5.0,
    )


async def test_echo_round_trip() -> None:
    async with run_server() as server:
        assert await our_echo(server.port) == status.SUCCESS
        assert await our_echo(server.port) == status.SUCCESS


async def test_raw_association_echo_and_release() -> None:
    async with run_server() as server:
        peer = await RawPeer.connect(server.port)
        ac = await peer.associate()
        assert isinstance(ac, AssociateAC)
        assert ac.presentation_contexts[0].result == ContextResult.ACCEPTANCE
        assert ac.presentation_contexts[0].transfer_syntax == IMPLICIT
        assert ac.user_information.max_length == 262144
        assert ac.user_information.implementation_class_uid == IMPLEMENTATION_CLASS_UID
        await peer.send(echo_pdata(message_id=7))
        rsp = await peer.receive()
        assert isinstance(rsp, PDataTF)
        pdv = rsp.pdvs[0]
        assert pdv.is_command and pdv.is_last
        msg = decode_command(pdv.data)
        assert msg == CEchoRSP(7, VERIFICATION, status.SUCCESS)
        await peer.send(ReleaseRQ())
        assert isinstance(await peer.receive(), ReleaseRP)
        peer.close()


async def test_response_fragments_respect_peer_max_pdu() -> None:
    """A response longer than the peer's maximum PDU length is split into PDUs that fit it."""
    long_comment = "x" * 20000

    async def wordy_echo(request: Request, responder: Responder) -> None:
        assert isinstance(request.command, CEchoRQ)
        await responder.respond(
            CEchoRSP(
                request.command.message_id, VERIFICATION, 0x0110, error_comment=long_comment[:64]
            )
        )

    async with run_server(handlers={(VERIFICATION_SOP_CLASS, CEchoRQ): wordy_echo}) as server:
        peer = await RawPeer.connect(server.port)
        # The smallest maximum length PS3.8 allows a requestor to advertise is not bounded below,
        # but anything under the command size forces fragmentation of the response.
        assert isinstance(await peer.associate(associate_rq(max_length=40)), AssociateAC)
        await peer.send(echo_pdata())
        data = b""
        while True:
            pdu = await peer.receive()
            assert isinstance(pdu, PDataTF)
            for pdv in pdu.pdvs:
                assert len(pdv.data) + 6 <= 40
                data += pdv.data
                last = pdv.is_last
            if last:
                break
        rsp = decode_command(data)
        assert isinstance(rsp, CEchoRSP) and rsp.status == 0x0110
        peer.close()


async def test_final_response_leaves_before_the_handler_goes_on() -> None:
    """A final response is written when respond() returns, not when the handler next yields: a
    modality waiting for its C-STORE-RSP does not wait for what the service does after it. The
    peer is a blocking socket on a thread, so it reads while the handler holds the loop."""
    blocked_until: list[float] = []

    async def echo_then_work(request: Request, responder: Responder) -> None:
        await handle_echo(request, responder)
        # Work after the response that does not yield (as a log line): the loop is held.
        time.sleep(0.5)  # noqa: ASYNC251
        blocked_until.append(time.monotonic())

    def peer(port: int) -> float:
        with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
            reader = PDUReader(1 << 20)

            def receive() -> object:
                while (pdu := reader.next_pdu()) is None:
                    data = sock.recv(65536)
                    assert data, "server closed the connection"
                    reader.feed(data)
                return pdu

            sock.sendall(encode(associate_rq()))
            assert isinstance(receive(), AssociateAC)
            sock.sendall(encode(echo_pdata(message_id=5)))
            rsp = receive()
            arrived = time.monotonic()
            assert isinstance(rsp, PDataTF)
            assert decode_command(rsp.pdvs[0].data) == CEchoRSP(5, VERIFICATION, status.SUCCESS)
            sock.sendall(encode(ReleaseRQ()))
            assert isinstance(receive(), ReleaseRP)
            return arrived

    async with run_server(handlers={(VERIFICATION_SOP_CLASS, CEchoRQ): echo_then_work}) as server:
        arrived = await asyncio.to_thread(peer, server.port)
    assert blocked_until and arrived < blocked_until[0]


# -- association rejection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rq_kwargs", "expected"),
    [
        ({"called": "SOMEONE_ELSE"}, (1, 1, 7)),
        ({"application_context": "1.2.3.4.5"}, (1, 1, 2)),
        ({"protocol_version": 2}, (1, 2, 2)),
        ({"contexts": ()}, (1, 1, 1)),
    ],
    ids=["called-ae", "application-context", "protocol-version", "no-contexts"],
)
async def test_association_rejections(
    rq_kwargs: dict[str, object], expected: tuple[int, int, int]
) -> None:
    # After an A-ASSOCIATE-RJ the acceptor waits (Sta13) for the requestor to close, up to ARTIM.
    async with run_server(make_config(artim_timeout=0.5)) as server:
        peer = await RawPeer.connect(server.port)
        rj = await peer.associate(associate_rq(**rq_kwargs))  # type: ignore[arg-type]
        assert isinstance(rj, AssociateRJ)
        assert (int(rj.result), int(rj.source), int(rj.reason)) == expected
        assert await peer.closed_by_server()
        assert await our_echo(server.port) == status.SUCCESS


async def test_unknown_calling_ae_rejected_when_list_is_set() -> None:
    config = make_config()
    from dataclasses import replace

    from dicomd.config import SecurityConfig

    config = replace(config, security=SecurityConfig(allowed_calling_aets=("MODALITY1",)))
    async with run_server(config) as server:
        with pytest.raises(AssociationRejectedError) as info:
            await our_echo(server.port, calling="INTRUDER")
        rj = info.value.rejection
        assert (rj.result, rj.source, int(rj.reason)) == (
            RejectResult.REJECTED_PERMANENT,
            RejectSource.SERVICE_USER,
            3,
        )
        assert await our_echo(server.port, calling="MODALITY1") == status.SUCCESS


async def test_called_ae_accepted_when_configured() -> None:
    async with run_server(make_config(called_ae_check="accept")) as server:
        assert await our_echo(server.port, called="ANYTHING") == status.SUCCESS


async def test_association_limit_is_transient_local_limit() -> None:
    async with run_server(make_config(max_associations=1)) as server:
        first = await RawPeer.connect(server.port)
        assert isinstance(await first.associate(), AssociateAC)
        second = await RawPeer.connect(server.port)
        rj = await second.associate()
        assert isinstance(rj, AssociateRJ)
        assert (int(rj.result), int(rj.source), int(rj.reason)) == (2, 3, 2)
        await first.send(ReleaseRQ())
        assert isinstance(await first.receive(), ReleaseRP)
        first.close()
        await asyncio.sleep(0)  # let the server see the first one go
        for _ in range(50):
            if server.state.established == set():
                break
            await asyncio.sleep(0.01)
        assert await our_echo(server.port) == status.SUCCESS


async def test_context_results() -> None:
    contexts = (
        PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
        PresentationContextRQ(3, "1.2.826.0.1.3680043.9.9999.1", (IMPLICIT,)),  # unknown class
        PresentationContextRQ(5, VERIFICATION, ("1.2.840.10008.1.2.4.50",)),  # JPEG: no
        PresentationContextRQ(6, VERIFICATION, (IMPLICIT,)),  # even id: invalid
    )
    async with run_server() as server:
        peer = await RawPeer.connect(server.port)
        ac = await peer.associate(associate_rq(contexts=contexts))
        assert isinstance(ac, AssociateAC)
        results = {pc.context_id: pc.result for pc in ac.presentation_contexts}
        assert results == {
            1: ContextResult.ACCEPTANCE,
            3: ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED,
            5: ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED,
            6: ContextResult.NO_REASON,
        }
        peer.close()


# -- bad input: each answered per PS3.8 while a concurrent echo still succeeds ------------------


async def _expect_abort(peer: RawPeer, reason: AbortReason) -> None:
    pdu = await peer.receive()
    assert isinstance(pdu, Abort), pdu
    assert pdu.source == AbortSource.SERVICE_PROVIDER
    assert pdu.reason == reason
    assert await peer.closed_by_server()


BadInput = Callable[[RawPeer], Awaitable[None]]


async def garbage(peer: RawPeer) -> None:
    await peer.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await _expect_abort(peer, AbortReason.UNRECOGNIZED_PDU)


async def unknown_pdu_type(peer: RawPeer) -> None:
    await peer.send(b"\x0a\x00" + struct.pack(">I", 4) + b"\x00" * 4)
    await _expect_abort(peer, AbortReason.UNRECOGNIZED_PDU)


async def huge_declared_length(peer: RawPeer) -> None:
    await peer.send(b"\x01\x00" + struct.pack(">I", 0xFFFFFFF0) + b"\x00\x01")
    await _expect_abort(peer, AbortReason.INVALID_PDU_PARAMETER_VALUE)


async def pdata_before_association(peer: RawPeer) -> None:
    await peer.send(echo_pdata())
    await _expect_abort(peer, AbortReason.UNEXPECTED_PDU)


async def associate_rq_when_established(peer: RawPeer) -> None:
    assert isinstance(await peer.associate(), AssociateAC)
    await peer.send(associate_rq())
    await _expect_abort(peer, AbortReason.UNEXPECTED_PDU)


async def pdv_longer_than_pdu(peer: RawPeer) -> None:
    assert isinstance(await peer.associate(), AssociateAC)
    # P-DATA-TF of length 10 holding a PDV item that claims 100 bytes.
    await peer.send(b"\x04\x00" + struct.pack(">I", 10) + struct.pack(">I", 100) + b"\x01\x03abcd")
    await _expect_abort(peer, AbortReason.INVALID_PDU_PARAMETER_VALUE)


async def abort_mid_message(peer: RawPeer) -> None:
    assert isinstance(await peer.associate(), AssociateAC)
    command = encode_command(CEchoRQ(1, VERIFICATION))
    await peer.send(PDataTF((PDV(1, 0x01, command[:20]),)))  # command fragment, not last
    await peer.send(Abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED))
    # PS3.8 AA-3: the server issues the indication and closes; it sends nothing back.
    assert await peer.receive() is None


async def dataset_on_unaccepted_context(peer: RawPeer) -> None:
    assert isinstance(await peer.associate(), AssociateAC)
    await peer.send(echo_pdata(context_id=3))
    await _expect_abort(peer, AbortReason.INVALID_PDU_PARAMETER_VALUE)


@pytest.mark.parametrize(
    "bad_input",
    [
        garbage,
        unknown_pdu_type,
        huge_declared_length,
        pdata_before_association,
        associate_rq_when_established,
        pdv_longer_than_pdu,
        abort_mid_message,
        dataset_on_unaccepted_context,
    ],
)
async def test_bad_input_answered_and_others_served(bad_input: BadInput) -> None:
    # After an A-ABORT the server waits (Sta13) for the peer to close, up to ARTIM.
    async with run_server(make_config(artim_timeout=0.5)) as server:
        peer = await RawPeer.connect(server.port)
        concurrent = asyncio.create_task(our_echo(server.port))
        await bad_input(peer)
        assert await concurrent == status.SUCCESS
        assert await our_echo(server.port) == status.SUCCESS
        peer.close()


@pytest.mark.parametrize("payload", [b"", b"\x01\x00\x00"], ids=["silent", "three-bytes"])
async def test_stalled_peer_cut_off_by_artim(payload: bytes) -> None:
    async with run_server(make_config(artim_timeout=0.3)) as server:
        loop = asyncio.get_running_loop()
        peer = await RawPeer.connect(server.port)
        if payload:
            await peer.send(payload)
        started = loop.time()
        # While it stalls, others are served at once (no accept-loop head-of-line blocking).
        assert await our_echo(server.port) == status.SUCCESS
        assert await peer.closed_by_server(timeout=3.0)
        assert 0.25 <= loop.time() - started < 2.0


async def test_idle_established_association_aborted() -> None:
    async with run_server(make_config(idle_timeout=0.3)) as server:
        peer = await RawPeer.connect(server.port)
        assert isinstance(await peer.associate(), AssociateAC)
        pdu = await peer.receive(timeout=3.0)
        assert isinstance(pdu, Abort)
        assert await peer.closed_by_server()


async def test_many_stalled_connections_do_not_block_service() -> None:
    async with run_server(make_config(artim_timeout=5.0)) as server:
        peers = [await RawPeer.connect(server.port) for _ in range(50)]
        for peer in peers[::2]:
            await peer.send(b"\x01\x00\x00\x00")
        assert await our_echo(server.port) == status.SUCCESS
        for peer in peers:
            peer.close()


# -- shutdown -----------------------------------------------------------------------------------


async def test_shutdown_lets_running_operation_finish_then_aborts() -> None:
    started = asyncio.Event()

    async def slow_echo(request: Request, responder: Responder) -> None:
        started.set()
        await asyncio.sleep(0.3)
        await handle_echo(request, responder)

    config = make_config()
    from dicomd.app import build_state
    from dicomd.net.server import DicomServer

    state = build_state(config)
    state.handlers = {(VERIFICATION_SOP_CLASS, CEchoRQ): slow_echo}
    server = DicomServer(state, "127.0.0.1", 0)
    await server.start()
    idle = await RawPeer.connect(server.port)
    assert isinstance(await idle.associate(), AssociateAC)
    busy = await RawPeer.connect(server.port)
    assert isinstance(await busy.associate(), AssociateAC)
    await busy.send(echo_pdata(message_id=3))
    await started.wait()
    shutdown = asyncio.create_task(server.shutdown(timeout=5.0))
    # The idle association is aborted at once; the busy one gets its response, then the abort.
    assert isinstance(await idle.receive(), Abort)
    rsp = await busy.receive()
    assert isinstance(rsp, PDataTF)
    assert decode_command(rsp.pdvs[0].data) == CEchoRSP(3, VERIFICATION, status.SUCCESS)
    assert isinstance(await busy.receive(), Abort)
    async with asyncio.timeout(5):
        await shutdown
    with pytest.raises(OSError):
        await RawPeer.connect(server.port)


async def test_shutdown_deadline_aborts_stuck_operation() -> None:
    async def stuck(request: Request, responder: Responder) -> None:
        await asyncio.sleep(60)

    async with run_server(handlers={(VERIFICATION_SOP_CLASS, CEchoRQ): stuck}) as server:
        peer = await RawPeer.connect(server.port)
        assert isinstance(await peer.associate(), AssociateAC)
        await peer.send(echo_pdata())
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await server.shutdown(timeout=0.3)
        assert loop.time() - started < 3.0
        assert isinstance(await peer.receive(), Abort)
