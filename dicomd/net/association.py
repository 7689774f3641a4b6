"""The acceptor runner: one coroutine per association, from TCP accept to close.

Owns: the life of one inbound association — negotiation through `ul.negotiation`, DIMSE reassembly,
dispatch of each request to its service, C-CANCEL, release, abort, timeouts and draining on shutdown.
It is the only place that decides what to log about an association; the structlog context (association
id, peer, AE titles) is bound here so every event of the association carries it.

DIMSE requests run one at a time in a worker task (we negotiate no asynchronous operations window, so
the peer has at most one outstanding request), while this coroutine keeps reading: that is how a
C-CANCEL-RQ reaches an operation in progress, and how an A-ABORT stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from dicomd import metrics
from dicomd.config import RemoteAE, SecurityConfig
from dicomd.dimse import status
from dicomd.dimse.fragments import CommandReceived, DatasetFragment, MessageAssembler
from dicomd.dimse.messages import (
    CCancelRQ,
    CFindRQ,
    CGetRQ,
    CMoveRQ,
    CStoreRQ,
    Message,
    has_dataset,
    is_response,
)
from dicomd.dimse.responses import failure_response
from dicomd.net.channel import Channel, IdleTimeout, WriteTimeout, set_nodelay
from dicomd.services.base import (
    DatasetSink,
    DatasetSource,
    Handler,
    IncompleteMessage,
    Request,
    ResponseTimeout,
    SinkFactory,
)
from dicomd.ul.codes import (
    AbortReason,
    LocalProtocolError,
    RejectResult,
    RejectSource,
    RemoteProtocolError,
    UserRejectReason,
)
from dicomd.ul.connection import (
    Aborted,
    AssociationRejected,
    AssociationRequested,
    Connection,
    ConnectionClosed,
    DataReceived,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
)
from dicomd.ul.negotiation import AcceptedContext, AcceptorPolicy, Negotiated, negotiate, screen
from dicomd.ul.pdu import AssociateRJ, AssociateRQ

log = structlog.get_logger("dicomd.association")

# A dataset that is not streamed to a service's sink (C-FIND/C-GET/C-MOVE identifiers) is held in
# memory; no legitimate identifier comes near this.
MAX_IN_MEMORY_DATASET = 4 * 1024 * 1024

_ids = itertools.count(1)


@dataclass
class ServerState:
    """What the runners of one server share: the policy, the services, the live associations."""

    policy: AcceptorPolicy
    # (SOP class UID, request message type) -> the service that handles it.
    handlers: Mapping[tuple[str, type[Message]], Handler]
    # (SOP class UID, request message type) -> where its dataset streams to; others are held in memory.
    sinks: Mapping[tuple[str, type[Message]], SinkFactory]
    max_associations: int
    artim_timeout: float
    idle_timeout: float
    dimse_timeout: float
    max_pdu_length: int
    established: set[AcceptorAssociation] = field(default_factory=set)
    draining: bool = False
    # Reloadable on SIGHUP: access control and the remote AE table.
    security: SecurityConfig = field(default_factory=SecurityConfig)
    remotes: Mapping[str, RemoteAE] = field(default_factory=dict)
    on_closed: Callable[[AcceptorAssociation], None] | None = None


class _Operation:
    def __init__(self, context_id: int, message_id: int) -> None:
        self.context_id = context_id
        self.message_id = message_id
        self.cancel = False
        self._cancelled: asyncio.Event | None = None  # made for the first wait_cancel() only

    def request_cancel(self) -> None:
        self.cancel = True
        if self._cancelled is not None:
            self._cancelled.set()

    async def wait_cancel(self) -> None:
        if self.cancel:
            return
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
        await self._cancelled.wait()


class _Responder:
    def __init__(self, association: AcceptorAssociation, channel: Channel, op: _Operation) -> None:
        self._association = association
        self._channel = channel
        self._op = op
        self.last_status: int | None = None

    async def respond(self, message: Message, dataset: bytes | None = None) -> None:
        await self._channel.send_message(self._op.context_id, message, dataset)
        code = getattr(message, "status", None)
        self.last_status = code
        if code is not None and status.category(code) is not status.StatusCategory.PENDING:
            # A final response is what the peer waits for (a modality, before it sends the next
            # image): written now, not after whatever the service does next (its log line).
            await self._channel.flush()

    def framer(self) -> Callable[[bytes], bytes]:
        return self._channel.framer(self._op.context_id)

    async def respond_each(self, message: Message, framed: Sequence[bytes]) -> None:
        await self._channel.send_framed(self._op.context_id, message, framed)
        if framed:
            self.last_status = getattr(message, "status", None)

    @property
    def cancel_requested(self) -> bool:
        return self._op.cancel

    async def wait_cancel(self) -> None:
        await self._op.wait_cancel()

    @property
    def contexts(self) -> Mapping[int, AcceptedContext]:
        assert self._association._negotiated is not None
        return self._association._negotiated.contexts

    def next_message_id(self) -> int:
        return self._association.next_message_id()

    async def request(self, context_id: int, message: Message, dataset: DatasetSource) -> Message:
        return await self._association.request(self._channel, context_id, message, dataset)


class AcceptorAssociation:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: ServerState
    ) -> None:
        self.id = next(_ids)
        self._server = server
        self._reader = reader
        self._writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._negotiated: Negotiated | None = None
        self._request: AssociateRQ | None = None
        self._assembler = MessageAssembler()
        # The request whose dataset is arriving, and where its fragments go.
        self._incoming: tuple[CommandReceived, bytearray | DatasetSink] | None = None
        self._queue: asyncio.Queue[tuple[Request, _Operation]] = asyncio.Queue(maxsize=1)
        self._current: _Operation | None = None
        self._worker: asyncio.Task[None] | None = None
        self._channel: Channel | None = None
        # Requests we sent to the peer (C-GET sub-operations), by Message ID, awaiting a response.
        self._awaiting: dict[int, asyncio.Future[Message]] = {}
        # ... and those whose response did not come within the DIMSE timeout (dropped if it does).
        self._unanswered: set[int] = set()
        self._message_ids = 0

    # -- life cycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        structlog.contextvars.bind_contextvars(assoc=self.id, peer=self.peer)
        set_nodelay(self._writer)
        loop = asyncio.get_running_loop()
        conn = Connection(
            Role.ACCEPTOR,
            artim_timeout=self._server.artim_timeout,
            clock=loop.time,
            max_pdu_length=self._server.max_pdu_length,
            screen=self._screen,
        )
        self._channel = channel = Channel(
            conn,
            self._reader,
            self._writer,
            idle_timeout=self._server.idle_timeout,
            write_timeout=self._server.dimse_timeout,
        )
        conn.connection_made()
        try:
            await self._event_loop(channel)
        except IdleTimeout:
            log.warning("association_idle_timeout", seconds=self._server.idle_timeout)
            await self._stop_worker()  # nothing may answer into the aborted association
            await self._abort(channel)
        except WriteTimeout:
            log.warning("association_write_timeout", seconds=self._server.dimse_timeout)
            channel.abort_transport()
        except (ConnectionError, OSError) as e:
            # The peer reset the connection while we were writing: it is gone, not a crash.
            log.info("association_connection_lost", error=str(e) or type(e).__name__)
        except asyncio.CancelledError:
            # Server shutdown past its deadline: tell the peer before going away.
            await self._abort(channel)
            raise
        finally:
            await self._stop_worker()
            await self._discard_incoming()
            if self in self._server.established:
                self._server.established.discard(self)
                metrics.ASSOCIATIONS_ACTIVE.dec()
            await channel.close()
            if self._server.on_closed is not None:
                self._server.on_closed(self)
            structlog.contextvars.unbind_contextvars("assoc", "peer", "calling_ae", "called_ae")

    async def _event_loop(self, channel: Channel) -> None:
        while True:
            event = await channel.next_event()
            if isinstance(event, DataReceived):
                await self._on_data(channel, event)
            elif isinstance(event, AssociationRequested):
                await self._on_request(channel, event.request)
            elif isinstance(event, ReleaseRequested):
                if not await self._wait_idle():
                    # The peer asked to release in the middle of an operation that outlived the
                    # DIMSE timeout: the operation ends here, unanswered, before A-RELEASE-RP
                    # (after which nothing more may be sent, PS3.8 Sta13).
                    await self._stop_worker()
                channel.connection.release_response()
                log.info("association_released")
            elif isinstance(event, AssociationRejected):
                log.warning("association_rejected", **_rj_fields(event.rejection), by="provider")
                metrics.ASSOCIATIONS.labels("rejected").inc()
            elif isinstance(event, Aborted):
                await self._stop_worker()
                log.warning(
                    "association_aborted",
                    by="us" if event.local else "peer",
                    source=event.source.name,
                    reason=event.reason.name,
                    detail=event.detail or None,
                )
            elif isinstance(event, ReleaseConfirmed):
                log.info("association_released")
            elif isinstance(event, ConnectionClosed):
                return

    async def _address_allowed(self, rq: AssociateRQ) -> bool:
        """[security] check_remote_address: a calling AE we know must come from its host."""
        remote = self._server.remotes.get(rq.calling_ae_title)
        if not self._server.security.check_remote_address or remote is None:
            return True
        peer = self._writer.get_extra_info("peername")
        peer_ip = peer[0] if isinstance(peer, tuple) else None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(remote.host, None)
        except OSError:
            infos = []
        allowed = {info[4][0] for info in infos}
        if peer_ip in allowed:
            return True
        log.warning("association_address_mismatch", expected=remote.host, peer_ip=peer_ip)
        return False

    def _screen(self, rq: AssociateRQ) -> AssociateRJ | None:
        others = len(self._server.established)
        return screen(
            rq, active_associations=others, max_associations=self._server.max_associations
        )

    async def _on_request(self, channel: Channel, rq: AssociateRQ) -> None:
        structlog.contextvars.bind_contextvars(
            calling_ae=rq.calling_ae_title, called_ae=rq.called_ae_title
        )
        result = negotiate(rq, self._server.policy)
        if not isinstance(result, AssociateRJ) and not await self._address_allowed(rq):
            result = AssociateRJ(
                RejectResult.REJECTED_PERMANENT,
                RejectSource.SERVICE_USER,
                UserRejectReason.CALLING_AE_TITLE_NOT_RECOGNIZED,
            )
        if isinstance(result, AssociateRJ):
            channel.connection.reject(result)
            log.warning("association_rejected", **_rj_fields(result), by="user")
            metrics.ASSOCIATIONS.labels("rejected").inc()
            if int(result.reason) in (3, 7) and result.source == RejectSource.SERVICE_USER:
                metrics.ACCESS_REFUSED.labels("association").inc()
            return
        self._request = rq
        self._negotiated = result
        self._server.established.add(self)
        metrics.ASSOCIATIONS.labels("accepted").inc()
        metrics.ASSOCIATIONS_ACTIVE.inc()
        channel.connection.accept(result.response)
        channel.connection.established(result.peer_max_pdu_length)
        accepted = [c.abstract_syntax for c in result.contexts.values()]
        log.info(
            "association_accepted",
            contexts=len(rq.presentation_contexts),
            accepted=len(accepted),
            peer_max_pdu=result.peer_max_pdu_length,
        )
        self._worker = asyncio.create_task(self._work(channel))
        if self._server.draining:
            await self._abort(channel)

    # -- DIMSE -----------------------------------------------------------------------------------

    async def _on_data(self, channel: Channel, event: DataReceived) -> None:
        try:
            items = self._assembler.feed(event.pdu)
            for item in items:
                if isinstance(item, CommandReceived):
                    await self._on_command(channel, item)
                else:
                    await self._on_fragment(channel, item)
        except RemoteProtocolError as e:
            await self._stop_worker()
            channel.connection.protocol_error(e)

    def next_message_id(self) -> int:
        self._message_ids = self._message_ids % 0xFFFF + 1
        return self._message_ids

    async def request(
        self, channel: Channel, context_id: int, message: Message, dataset: DatasetSource
    ) -> Message:
        """Send a request to the peer and wait (DIMSE timeout) for its response."""
        message_id = getattr(message, "message_id", None)
        assert isinstance(message_id, int)
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._awaiting[message_id] = future
        try:
            await channel.send_message(context_id, message, dataset)
            async with asyncio.timeout(self._server.dimse_timeout):
                return await future
        except TimeoutError:
            # The peer may still answer: that answer is dropped, not taken for a protocol error
            # (nor for the answer to a later request, which has another Message ID).
            self._unanswered.add(message_id)
            raise ResponseTimeout(
                f"no response within the DIMSE timeout ({self._server.dimse_timeout:g} s)"
            ) from None
        finally:
            self._awaiting.pop(message_id, None)

    async def _on_command(self, channel: Channel, item: CommandReceived) -> None:
        command = item.command
        if is_response(command):
            answered = getattr(command, "message_id_being_responded_to", -1)
            waiter = self._awaiting.get(answered)
            if waiter is None and answered in self._unanswered:
                self._unanswered.discard(answered)
                log.info("late_response_dropped", message_id=answered)
                return
            if waiter is None or waiter.done():
                raise RemoteProtocolError(
                    f"unexpected {type(command).__name__}", AbortReason.UNEXPECTED_PDU_PARAMETER
                )
            waiter.set_result(command)
            return
        if isinstance(command, CCancelRQ):
            current = self._current
            if current is not None and current.message_id == command.message_id_being_responded_to:
                current.request_cancel()
                log.info("dimse_cancel", message_id=current.message_id)
            return
        context = self._context(item.context_id)
        if context is None:
            raise RemoteProtocolError(
                f"message on presentation context {item.context_id}, which was not accepted",
                AbortReason.INVALID_PDU_PARAMETER_VALUE,
            )
        if has_dataset(command):
            factory = self._server.sinks.get((context.abstract_syntax, type(command)))
            assert self._request is not None
            target: bytearray | DatasetSink = (
                bytearray()
                if factory is None
                else await factory(context, command, self._request.calling_ae_title)
            )
            self._incoming = (item, target)
            return
        await self._dispatch(context, command, None)

    async def _on_fragment(self, channel: Channel, item: DatasetFragment) -> None:
        assert self._incoming is not None
        command_item, target = self._incoming
        if isinstance(target, bytearray):
            if len(target) + len(item.data) > MAX_IN_MEMORY_DATASET:
                raise RemoteProtocolError(
                    "dataset larger than this service accepts",
                    AbortReason.INVALID_PDU_PARAMETER_VALUE,
                )
            target += item.data
        else:
            await target.write(item.data)
        if item.is_last:
            self._incoming = None
            context = self._context(command_item.context_id)
            assert context is not None
            if isinstance(target, bytearray):
                await self._dispatch(context, command_item.command, bytes(target))
            else:
                await self._dispatch(context, command_item.command, None, target)

    def _context(self, context_id: int) -> AcceptedContext | None:
        assert self._negotiated is not None
        return self._negotiated.contexts.get(context_id)

    async def _dispatch(
        self,
        context: AcceptedContext,
        command: Message,
        dataset: bytes | None,
        sink: DatasetSink | None = None,
    ) -> None:
        assert self._request is not None
        rq = self._request
        request = Request(context, command, dataset, rq.calling_ae_title, rq.called_ae_title, sink)
        op = _Operation(context.context_id, getattr(command, "message_id", 0))
        # Bounded: with no asynchronous operations window the peer has one request outstanding; a
        # peer that sends more waits here, which stops our reading and so its sending. Unless the
        # worker has died (its writes timed out): then nothing will take the request, and the
        # association ends instead of waiting forever.
        worker = self._worker
        if worker is not None and not worker.done() and not self._queue.full():
            self._queue.put_nowait((request, op))  # the usual case: the worker is waiting
            return
        put = asyncio.ensure_future(self._queue.put((request, op)))
        if worker is None:
            await put
            return
        done, _pending = await asyncio.wait({put, worker}, return_when=asyncio.FIRST_COMPLETED)
        if put not in done:
            put.cancel()
            log.warning("association_worker_ended", detail="request not taken")
            if self._channel is not None:
                self._channel.abort_transport()

    async def _work(self, channel: Channel) -> None:
        while True:
            request, op = await self._queue.get()
            self._current = op
            try:
                await self._handle(channel, request, op)
            except WriteTimeout:
                # The peer stopped reading what an operation sends (a C-GET to a client that
                # never reads): the association is over, not just this operation. Cutting the
                # transport makes the read loop see the end and clean up.
                log.warning("association_write_timeout", seconds=self._server.dimse_timeout)
                channel.abort_transport()
                return
            except IncompleteMessage:
                return  # a C-GET sub-operation's file failed part-sent: aborted, and logged
            except (ConnectionError, OSError) as e:
                log.warning("association_write_failed", error=str(e))
                channel.abort_transport()
                return
            finally:
                self._current = None
                self._queue.task_done()
            if self._server.draining:
                await self._abort(channel)
                return

    async def _handle(self, channel: Channel, request: Request, op: _Operation) -> None:
        command = request.command
        kind = type(command).__name__
        handler = self._server.handlers.get((request.context.abstract_syntax, type(command)))
        started = time.perf_counter()
        operation = _OPERATIONS.get(type(command))
        allowed = self._server.security.operations.get(request.calling_ae_title)
        if operation is not None and allowed is not None and operation not in allowed:
            log.warning("dimse_not_authorized", command=kind, operation=operation)
            metrics.ACCESS_REFUSED.labels("operation").inc()
            await _refuse(channel, request, op, status.REFUSED_NOT_AUTHORIZED)
            return
        if handler is None:
            log.warning(
                "dimse_unsupported", command=kind, sop_class=request.context.abstract_syntax
            )
            await _refuse(channel, request, op)
            return
        responder = _Responder(self, channel, op)
        try:
            await handler(request, responder)
        except (WriteTimeout, ConnectionError):
            raise
        except Exception:
            log.exception("dimse_handler_failed", command=kind)
            await _refuse(channel, request, op, status.PROCESSING_FAILURE)
            return
        elapsed = time.perf_counter() - started
        metrics.observe_operation(kind, responder.last_status, elapsed)
        # Services log their own outcome (c_store_done, ...); this line is for debugging.
        log.debug(
            "dimse_done",
            command=kind,
            status=f"{responder.last_status:04X}" if responder.last_status is not None else None,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _discard_incoming(self) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None and not isinstance(incoming[1], bytearray):
            # Aborted or closed mid-dataset: nothing of it may be stored, let alone acknowledged.
            await incoming[1].discard()
            log.warning("dataset_discarded", reason="association ended mid-dataset")

    async def _wait_idle(self) -> bool:
        """Wait (DIMSE timeout) for the running and queued operations; False if they did not end."""
        if self._worker is not None and not self._worker.done():
            try:
                async with asyncio.timeout(self._server.dimse_timeout):
                    await self._queue.join()
            except TimeoutError:
                log.warning("release_while_busy")
                return False
        return True

    async def _stop_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker

    async def _abort(
        self, channel: Channel, reason: AbortReason = AbortReason.NOT_SPECIFIED
    ) -> None:
        conn = channel.connection
        if conn.closed:
            return
        try:
            conn.abort(reason)
        except LocalProtocolError:
            # No association yet (Sta2): PS3.8 has no abort to send, only a transport to close.
            channel.abort_transport()
            return
        await channel.flush_quietly()
        # We do not wait out the ARTIM timer for the peer to close: we are done with it either way.
        channel.abort_transport()

    # -- shutdown --------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._current is not None or self._incoming is not None

    async def drain(self) -> None:
        """Called at shutdown: end now if idle; otherwise the worker ends after its operation."""
        if not self.busy and self._channel is not None:
            await self._abort(self._channel)


async def _refuse(
    channel: Channel, request: Request, op: _Operation, code: int = status.SOP_CLASS_NOT_SUPPORTED
) -> None:
    response = failure_response(request.command, code)
    if response is not None:
        await channel.send_message(op.context_id, response)


_OPERATIONS: dict[type, str] = {CStoreRQ: "store", CFindRQ: "find", CGetRQ: "get", CMoveRQ: "move"}


def _rj_fields(rj: AssociateRJ) -> dict[str, object]:
    return {"result": int(rj.result), "source": int(rj.source), "reason": int(rj.reason)}
