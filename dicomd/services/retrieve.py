"""C-GET and C-MOVE SCP (PS3.4 C.4.2, C.4.3): one sub-operation loop, two ways to send.

Owns: resolving a retrieve identifier to stored instances (unique keys only, PS3.4 C.4.2.2.1), the
sub-operation loop with its counts, pending responses, cancel and final status (PS3.4 C.4.2.1.5,
C.4.3.1.4), choosing a presentation context (and a conversion when the stored syntax was not
accepted), and a C-MOVE's sub-operations as a job for a Mover: LocalMover runs them on the event loop
it is called from, opening the destination's association through a callable the runner gives us
(services never import `net`); the runner may give a Mover that runs them in another process.

Stored files go out as they are on disk — streamed, not decoded — whenever the stored transfer syntax
was accepted; that is also what makes a retrieved dataset byte-identical to the one received.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pydicom
import structlog
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomd.config import RemoteAE
from dicomd.dimse import status
from dicomd.dimse.messages import CGetRQ, CGetRSP, CMoveRQ, CMoveRSP, CStoreRQ, CStoreRSP, Message
from dicomd.query.identifier import QueryError, read_identifier
from dicomd.services.base import (
    DatasetSource,
    FileSlice,
    IncompleteMessage,
    OpenOutbound,
    Outbound,
    Request,
    Responder,
    ResponseTimeout,
)
from dicomd.services.sop_classes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
)
from dicomd.storage.files import PART10_HEAD, FileStore, dataset_offset
from dicomd.storage.index import Index
from dicomd.ul.negotiation import AcceptedContext, ProposedContext

log = structlog.get_logger("dicomd.retrieve")

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_STUDY_ONLY_MOVE = "1.2.840.10008.5.1.4.1.2.3.2"  # retired, still used
PATIENT_STUDY_ONLY_GET = "1.2.840.10008.5.1.4.1.2.3.3"
GET_SOP_CLASSES = (PATIENT_ROOT_GET, STUDY_ROOT_GET, PATIENT_STUDY_ONLY_GET)
MOVE_SOP_CLASSES = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE, PATIENT_STUDY_ONLY_MOVE)

# Levels each model has (PS3.4 C.6.1, C.6.2, C.6.3).
_LEVELS = {
    "patient": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "study": ("STUDY", "SERIES", "IMAGE"),
    "patient-study": ("PATIENT", "STUDY"),
}
_MODEL = {
    PATIENT_ROOT_GET: "patient",
    PATIENT_ROOT_MOVE: "patient",
    STUDY_ROOT_GET: "study",
    STUDY_ROOT_MOVE: "study",
    PATIENT_STUDY_ONLY_GET: "patient-study",
    PATIENT_STUDY_ONLY_MOVE: "patient-study",
}
# Unique key of each level, its index column, and the keyword for error comments.
_UNIQUE = {
    "PATIENT": (0x00100020, "p.patient_id", "PatientID"),
    "STUDY": (0x0020000D, "st.study_instance_uid", "StudyInstanceUID"),
    "SERIES": (0x0020000E, "se.series_instance_uid", "SeriesInstanceUID"),
    "IMAGE": (0x00080018, "i.sop_instance_uid", "SOPInstanceUID"),
}
_UNCOMPRESSED = (EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE)
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058
MAX_INSTANCES = 1_000_000  # one retrieve; beyond this the request is refused (A701/A702)


@dataclass(frozen=True, slots=True)
class Target:
    """A stored instance to send."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    relpath: str
    size: int


# An instance ready to go: the accepted context to send it on, and its data set.
_Loaded = tuple[AcceptedContext, DatasetSource]


class _Sender(Protocol):
    """Where sub-operations go: this association (C-GET) or the destination's (C-MOVE)."""

    @property
    def contexts(self) -> Mapping[int, AcceptedContext]: ...

    def next_message_id(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    async def request(
        self, context_id: int, message: Message, dataset: DatasetSource
    ) -> Message: ...


@dataclass
class Counts:
    remaining: int
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_uids: list[str] = field(default_factory=list)

    def add(self, outcome: str, sop_instance_uid: str) -> None:
        """Count one finished sub-operation ("completed", "warning", or anything else: failed)."""
        if outcome == "completed":
            self.completed += 1
        elif outcome == "warning":
            self.warning += 1
        else:
            self.failed += 1
            self.failed_uids.append(sop_instance_uid)

    def fail_rest(self, targets: Sequence[Target]) -> None:
        """Count the sub-operations that will not be attempted as failed; none remain."""
        for target in targets:
            self.add("failed", target.sop_instance_uid)
        self.remaining = 0


@dataclass(frozen=True, slots=True)
class MoveJob:
    """A C-MOVE's sub-operations, for a Mover: where to, what, in what order, and for whom."""

    destination: RemoteAE
    targets: Sequence[Target]
    originator: tuple[str, int]  # Move Originator AE Title and Message ID (PS3.7 9.1.1.1)
    pending_interval: float


# Called with the counts so far, at most every pending_interval while sub-operations remain.
Report = Callable[[Counts], Awaitable[None]]


class Cancel(Protocol):
    """Whether a C-CANCEL-RQ has come for the retrieve (the operation's Responder is one)."""

    @property
    def cancel_requested(self) -> bool: ...

    async def wait_cancel(self) -> None: ...


class Mover(Protocol):
    async def move(
        self, job: MoveJob, counts: Counts, report: Report, cancel: Cancel
    ) -> str | None:
        """Run `job`'s sub-operations in order, adding each outcome to `counts` (none is left
        remaining unless cancelled); returns an Error Comment for the final response, or None.
        Raises MoverLost when the mover ends before the job does."""
        ...


class MoverLost(Exception):
    """A mover ended with a job under way. The counts hold the outcomes it had reported: those
    of the targets before the first one not counted (sub-operations run in order)."""


class LocalMover:
    """A C-MOVE's sub-operations on the calling event loop: over one association to the
    destination, and a new one for what is left when a data set failed half-sent."""

    def __init__(
        self,
        resolve: Callable[[str], Path],
        open_outbound: OpenOutbound,
        *,
        read_inline: bool = False,
    ) -> None:
        self._sub_operations = SubOperations(resolve, read_inline=read_inline)
        self._open_outbound = open_outbound

    async def move(
        self, job: MoveJob, counts: Counts, report: Report, cancel: Cancel
    ) -> str | None:
        unsent = job.targets
        while unsent and not cancel.cancel_requested:
            # A new association for what is left when the last one was aborted under a data set
            # that failed half-sent (see SubOperations.run): one damaged file does not fail the rest.
            try:
                outbound = await self._open_outbound(job.destination, _proposals(unsent))
            except Exception as e:
                log.warning(
                    "c_move_destination_failed", destination=job.destination.ae_title, error=str(e)
                )
                counts.fail_rest(unsent)
                return str(e)[:64]
            try:
                unsent = await self._sub_operations.run(
                    unsent,
                    counts,
                    outbound,
                    originator=job.originator,
                    interval=job.pending_interval,
                    cancel=cancel,
                    report=report,
                )
            finally:
                await _close(outbound)
        return None


class RetrieveService:
    def __init__(
        self,
        files: FileStore,
        index: Index,
        *,
        ae_title: str,
        remote_ae: Mapping[str, RemoteAE] | None,
        mover: Mover | None,
        pending_interval: float,
    ) -> None:
        self._sub_operations = SubOperations(files.path)
        self._pending_interval = pending_interval
        self._index = index
        self._ae_title = ae_title
        self._remote_ae = dict(remote_ae or {})
        self._mover = mover

    def set_remotes(self, remote_ae: Mapping[str, RemoteAE]) -> None:
        """Replace the C-MOVE destination table (configuration reload)."""
        self._remote_ae = dict(remote_ae)

    def set_pending_interval(self, seconds: float) -> None:
        """Replace the interval between Pending responses (configuration reload); retrieves
        already running keep theirs."""
        self._pending_interval = seconds

    # -- C-GET -----------------------------------------------------------------------------------

    async def handle_get(self, request: Request, responder: Responder) -> None:
        command = request.command
        assert isinstance(command, CGetRQ)
        started = time.perf_counter()
        try:
            targets = await self._resolve(request)
        except QueryError as e:
            await responder.respond(_get_rsp(command, e.code, comment=e.comment))
            return
        counts = Counts(remaining=len(targets))
        await self._sub_operations.run(
            targets,
            counts,
            _GetSender(responder),
            originator=None,
            interval=self._pending_interval,
            cancel=responder,
            report=_pending_reporter(command, responder, _get_rsp),
        )
        await self._finish(
            command, counts, responder, _get_rsp, started, "c_get_done", request.context
        )

    # -- C-MOVE ----------------------------------------------------------------------------------

    async def handle_move(self, request: Request, responder: Responder) -> None:
        command = request.command
        assert isinstance(command, CMoveRQ)
        started = time.perf_counter()
        destination = self._remote_ae.get(command.move_destination)
        if destination is None or self._mover is None:
            log.warning("c_move_unknown_destination", destination=command.move_destination)
            await responder.respond(
                _move_rsp(
                    command,
                    status.MOVE_DESTINATION_UNKNOWN,
                    comment=f"unknown move destination {command.move_destination!r}",
                )
            )
            return
        try:
            targets = await self._resolve(request)
        except QueryError as e:
            await responder.respond(_move_rsp(command, e.code, comment=e.comment))
            return
        counts = Counts(remaining=len(targets))
        job = MoveJob(
            destination,
            targets,
            (request.calling_ae_title, command.message_id),
            self._pending_interval,  # a reload does not change a retrieve under way
        )
        try:
            comment = (
                await self._mover.move(
                    job, counts, _pending_reporter(command, responder, _move_rsp), responder
                )
                if targets
                else None  # nothing to send: no association to the destination
            )
        except MoverLost as e:
            done = counts.completed + counts.failed + counts.warning
            log.error("c_move_mover_lost", error=str(e), failed=len(targets) - done)
            counts.fail_rest(targets[done:])
            comment = "sub-operations stopped: mover process lost"
        await self._finish(
            command,
            counts,
            responder,
            _move_rsp,
            started,
            "c_move_done",
            request.context,
            comment=comment,
        )

    async def _resolve(self, request: Request) -> list[Target]:
        command = request.command
        assert isinstance(command, CGetRQ | CMoveRQ)
        model = _MODEL[request.context.abstract_syntax]
        if request.dataset is None:
            raise QueryError(status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "no identifier")
        ds = await asyncio.to_thread(
            read_identifier, request.dataset, request.context.transfer_syntax
        )
        sql, params = _retrieve_sql(ds, model)
        targets: list[Target] = []
        async with self._index.query(sql, params) as rows:
            while batch := await rows.fetch(1000):
                targets.extend(Target(*row) for row in batch)
                if len(targets) > MAX_INSTANCES:
                    raise QueryError(status.OUT_OF_RESOURCES_SUBOPS, "too many instances")
        return targets

    async def _finish(
        self,
        command: CGetRQ | CMoveRQ,
        counts: Counts,
        responder: Responder,
        factory: _RspFactory,
        started: float,
        event: str,
        context: AcceptedContext,
        comment: str | None = None,
    ) -> None:
        cancelled = responder.cancel_requested and counts.remaining > 0
        if cancelled:
            code = status.CANCEL
        elif counts.failed == 0 and counts.warning == 0:
            code = status.SUCCESS
        elif counts.completed == 0 and counts.warning == 0:
            code = status.OUT_OF_RESOURCES_SUBOPS  # every sub-operation failed (A702)
        else:
            code = status.SUBOPS_WARNING  # B000: some failed or warned
        identifier = None
        if counts.failed_uids:
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = counts.failed_uids
            identifier = _encode(ds, context.transfer_syntax)
        await responder.respond(
            factory(
                command,
                code,
                # PS3.4 C.4.2.1.5: the final response has no remaining count, except after a cancel.
                remaining=counts.remaining if cancelled else None,
                completed=counts.completed,
                failed=counts.failed,
                warning=counts.warning,
                comment=comment,
                has_dataset=identifier is not None,
            ),
            identifier,
        )
        log.info(
            event,
            status=f"{code:04X}",
            completed=counts.completed,
            failed=counts.failed,
            warning=counts.warning,
            remaining=counts.remaining,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )


class SubOperations:
    """The sub-operation loop of C-GET and C-MOVE: instances read in runs, sent one at a time
    over a sender, their outcomes counted (PS3.4 C.4.2.3.1, C.4.3.3.1)."""

    def __init__(self, resolve: Callable[[str], Path], *, read_inline: bool = False) -> None:
        """`read_inline`: read stored files on the event loop rather than in a worker thread,
        for a loop that does nothing but sub-operations (a mover process's): there a thread trip
        costs more than the read (a mover used 30% less CPU per instance without it, and two
        moves ran 10-20% faster). A read is bounded (LOAD_BYTES a run, larger files streamed)
        and from the page cache most of the time. Conversions, which decode, still go to a
        thread. The server's own loop keeps every read off it: its other associations must not
        wait on a disk."""
        self._resolve = resolve  # an index relpath -> the stored file's path
        self._read_inline = read_inline

    async def run(
        self,
        targets: Sequence[Target],
        counts: Counts,
        sender: _Sender,
        *,
        originator: tuple[str, int] | None,
        interval: float,
        cancel: Cancel,
        report: Report,
    ) -> Sequence[Target]:
        """Send `targets` as sub-operations, adding their outcomes to `counts`. Returns the
        targets not sent because a C-MOVE sub-association was aborted under a data set that
        failed half-sent (the caller may send them on a new association); C-GET raises
        IncompleteMessage instead, its association being the SCU's own."""
        # Instances are read in runs, one trip to a worker thread per run (see _run_end), and the
        # next run is read while this one is sent and acknowledged: the sub-operations are one at
        # a time (PS3.7 asynchronous operations are not negotiated), so a read per instance would
        # add a thread trip and the file's read to each one's latency, and a trip per instance
        # costs the event loop as much as a sub-operation's own messages.
        next_run = 0  # index in targets of the first instance not yet being read

        def read_next_run() -> asyncio.Task[list[_Loaded | None]] | None:
            nonlocal next_run
            if next_run == len(targets):
                return None
            start, next_run = next_run, _run_end(targets, next_run)
            return asyncio.ensure_future(self._load(targets[start:next_run], sender))

        ahead: asyncio.Task[list[_Loaded | None]] | None = None
        run: list[_Loaded | None] = []
        run_start = 0  # index in targets of run[0]
        clock = asyncio.get_running_loop().time
        last_response = clock()
        try:
            for i, target in enumerate(targets):
                if cancel.cancel_requested:
                    break
                if i - run_start == len(run):
                    loading = ahead or read_next_run()
                    assert loading is not None  # targets[i] is in no run read yet
                    ahead = read_next_run()
                    run, run_start = await loading, i
                counts.remaining -= 1
                loaded, run[i - run_start] = run[i - run_start], None  # memory goes as it is sent
                outcome = "failed"
                if loaded is not None:
                    try:
                        outcome = await self._sub_operation(target, sender, originator, *loaded)
                    except IncompleteMessage as e:
                        # The association that carries the sub-operations was aborted half-way
                        # through this one's data set: it fails, and the rest cannot go there.
                        counts.add("failed", target.sop_instance_uid)
                        if originator is not None:
                            log.warning(
                                "sub_association_aborted",
                                sop_instance_uid=target.sop_instance_uid,
                                error=str(e),
                                unsent=len(targets) - i - 1,
                            )
                            return targets[i + 1 :]
                        # C-GET: that association is the SCU's own; no response can follow.
                        counts.fail_rest(targets[i + 1 :])
                        log.warning(
                            "sub_operations_abandoned",
                            sop_instance_uid=target.sop_instance_uid,
                            error=str(e),
                            failed=len(targets) - i,
                        )
                        raise
                counts.add(outcome, target.sop_instance_uid)
                if outcome == "failed" and counts.remaining and sender.closed:
                    # C-MOVE: the destination ended the sub-association itself (A-ABORT, or the
                    # connection dropped), or we aborted it at a DIMSE timeout. C-GET: the SCU
                    # left a C-STORE unanswered past the DIMSE timeout. What is left fails at
                    # once, without reading it or a log line each. No new association: the
                    # destination ended that one, or it stopped answering.
                    log.warning(
                        "sub_association_lost"
                        if originator is not None
                        else "sub_operations_unanswered",
                        sop_instance_uid=target.sop_instance_uid,
                        failed=counts.remaining,
                    )
                    counts.fail_rest(targets[i + 1 :])
                    break
                if counts.remaining and clock() - last_response >= interval:
                    # PS3.4 C.4.2.3.1: pending responses carry the counts; they are optional,
                    # reported at most every `interval` seconds.
                    last_response = clock()
                    await report(counts)
        finally:
            if ahead is not None:
                ahead.cancel()  # cancelled, or its result dropped: one run's worth at most
                ahead.add_done_callback(_consume)
        return ()

    async def _load(self, targets: Sequence[Target], sender: _Sender) -> list[_Loaded | None]:
        """For each target, the context to send it on and its data set, read (and converted) in
        one trip to a thread for them all (or read_inline, see __init__); None (logged) when no accepted context takes it or the
        file cannot be read."""
        choices = [_choose_context(sender.contexts, target) for target in targets]
        jobs: list[tuple[Target, str | None] | None] = []
        for target, choice in zip(targets, choices, strict=True):
            if choice is None:
                log.info("sub_operation_no_context", sop_instance_uid=target.sop_instance_uid)
            jobs.append(None if choice is None else (target, choice[1]))
        if self._read_inline and all(job is None or job[1] is None for job in jobs):
            read = _read_run(self._resolve, jobs)
        else:
            read = await asyncio.to_thread(_read_run, self._resolve, jobs)
        loaded: list[_Loaded | None] = []
        for target, choice, source in zip(targets, choices, read, strict=True):
            if isinstance(source, Exception):
                log.warning(
                    "sub_operation_unreadable",
                    sop_instance_uid=target.sop_instance_uid,
                    error=str(source),
                )
            if choice is None or isinstance(source, Exception):
                loaded.append(None)
            else:
                loaded.append((choice[0], source))
        return loaded

    async def _sub_operation(
        self,
        target: Target,
        sender: _Sender,
        originator: tuple[str, int] | None,
        context: AcceptedContext,
        source: DatasetSource,
    ) -> str:
        rq = CStoreRQ(
            message_id=sender.next_message_id(),
            affected_sop_class_uid=target.sop_class_uid,
            affected_sop_instance_uid=target.sop_instance_uid,
            move_originator_ae_title=originator[0] if originator else None,
            move_originator_message_id=originator[1] if originator else None,
        )
        try:
            rsp = await sender.request(context.context_id, rq, source)
        except IncompleteMessage:
            raise  # see run()
        except Exception as e:  # the destination went away, timed out, or broke the protocol
            log.warning(
                "sub_operation_failed", sop_instance_uid=target.sop_instance_uid, error=str(e)
            )
            return "failed"
        if not isinstance(rsp, CStoreRSP):
            return "failed"
        category = status.category(rsp.status)
        if category is status.StatusCategory.SUCCESS:
            return "completed"
        if category is status.StatusCategory.WARNING:
            return "warning"
        return "failed"


class _RspFactory(Protocol):
    def __call__(
        self,
        command: CGetRQ | CMoveRQ,
        code: int,
        *,
        remaining: int | None = None,
        completed: int | None = None,
        failed: int | None = None,
        warning: int | None = None,
        comment: str | None = None,
        has_dataset: bool = False,
    ) -> Message: ...


def _response(
    cls: type[CGetRSP] | type[CMoveRSP],
) -> _RspFactory:
    """A builder of `cls` responses (C-GET-RSP and C-MOVE-RSP have the same fields)."""

    def build(
        command: CGetRQ | CMoveRQ,
        code: int,
        *,
        remaining: int | None = None,
        completed: int | None = None,
        failed: int | None = None,
        warning: int | None = None,
        comment: str | None = None,
        has_dataset: bool = False,
    ) -> Message:
        return cls(
            command.message_id,
            command.affected_sop_class_uid,
            code,
            has_dataset,
            remaining,
            completed,
            failed,
            warning,
            comment[:64] if comment else None,
        )

    return build


_get_rsp = _response(CGetRSP)
_move_rsp = _response(CMoveRSP)


def _pending_reporter(
    command: CGetRQ | CMoveRQ, responder: Responder, factory: _RspFactory
) -> Report:
    """Reports counts as a Pending response: counts only, never an identifier (PS3.4 C.4.2.3.1)."""

    async def report(counts: Counts) -> None:
        await responder.respond(
            factory(
                command,
                status.PENDING,
                remaining=counts.remaining,
                completed=counts.completed,
                failed=counts.failed,
                warning=counts.warning,
            )
        )

    return report


class _GetSender:
    """C-GET's sub-operations go back over the request's own association, on contexts where the
    SCU took the SCP role (PS3.4 C.4.3.3, role selection PS3.7 D.3.3.4)."""

    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self._contexts: Mapping[int, AcceptedContext] | None = None
        self._unanswered = False

    @property
    def contexts(self) -> Mapping[int, AcceptedContext]:
        # Negotiated once for the association: worked out at the first sub-operation, not each.
        if self._contexts is None:
            self._contexts = {
                k: c for k, c in self._responder.contexts.items() if c.requestor_is_scp
            }
        return self._contexts

    def next_message_id(self) -> int:
        return self._responder.next_message_id()

    @property
    def closed(self) -> bool:
        """True once a sub-operation went unanswered for the DIMSE timeout: the SCU is not
        taking C-STOREs, so none is sent after it, and the C-GET ends with its final response
        (the association stays up: that response is still owed). When the association itself
        ends, the runner stops this retrieve with it."""
        return self._unanswered

    async def request(self, context_id: int, message: Message, dataset: DatasetSource) -> Message:
        try:
            return await self._responder.request(context_id, message, dataset)
        except ResponseTimeout:
            self._unanswered = True
            raise


def _retrieve_sql(ds: Dataset, model: str) -> tuple[str, list[object]]:
    """The instances a retrieve identifier names (unique keys only, PS3.4 C.4.2.2.1)."""
    level_element = ds.get(0x00080052)  # Query/Retrieve Level
    level = str(level_element.value).strip().upper() if level_element is not None else ""
    levels = _LEVELS[model]
    if level not in levels:
        raise QueryError(
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"Query/Retrieve Level {level!r} is not one of {', '.join(levels)}",
            (0x00080052,),
        )
    conditions: list[str] = []
    params: list[object] = []
    for name in levels[: levels.index(level) + 1]:
        tag, column, keyword = _UNIQUE[name]
        element = ds.get(tag)
        values = _values(element.value) if element is not None else []
        if name == level:
            if not values:
                raise QueryError(
                    status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                    f"{keyword} is required at the {level} level",
                    (tag,),
                )
            # A list of UIDs is allowed at the retrieve level (PS3.4 C.4.2.2.1).
            conditions.append(f"{column} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(values))
        elif values:
            # Keys above the level narrow the request when given (hierarchical, single value).
            conditions.append(f"{column} = ?")
            params.append(values[0])
    sql = (
        "SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.relpath, i.size"
        " FROM instance AS i JOIN series AS se ON se.pk = i.series_pk"
        " JOIN study AS st ON st.pk = se.study_pk JOIN patient AS p ON p.pk = st.patient_pk"
        f" WHERE {' AND '.join(conditions)}"
        " ORDER BY st.pk, se.series_number, se.pk, i.instance_number, i.pk"
    )
    return sql, params


def _values(value: object) -> list[str]:
    items = value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    return [str(v).strip() for v in items if v is not None and str(v).strip()]


def _choose_context(
    contexts: Mapping[int, AcceptedContext], target: Target
) -> tuple[AcceptedContext, str | None] | None:
    """The context to send `target` on, and the syntax to convert to (None: send as stored)."""
    candidates = [c for c in contexts.values() if c.abstract_syntax == target.sop_class_uid]
    for ctx in candidates:
        if ctx.transfer_syntax == target.transfer_syntax_uid:
            return ctx, None
    for ctx in candidates:
        if ctx.transfer_syntax in _UNCOMPRESSED:
            return ctx, ctx.transfer_syntax  # convert (or decompress, if a codec is installed)
    return None


def _proposals(targets: Sequence[Target]) -> list[ProposedContext]:
    """C-MOVE's outbound contexts: one per (SOP class, stored syntax), plus an uncompressed
    fallback per SOP class, within PS3.8's 128 presentation contexts."""
    proposals: dict[tuple[str, tuple[str, ...]], None] = {}
    for t in targets:
        proposals[(t.sop_class_uid, (t.transfer_syntax_uid,))] = None
    for sop in dict.fromkeys(t.sop_class_uid for t in targets):
        proposals[(sop, (EXPLICIT_VR_LE, IMPLICIT_VR_LE))] = None
    contexts = [ProposedContext(sop, ts) for sop, ts in proposals]
    return contexts[:128]


# A stored file up to this size is read whole where its dataset offset is found: one trip to a
# thread per sub-operation. Larger ones are streamed by the sender, a chunk at a time.
PRELOAD = 1 << 20


# A run of instances read in one trip to a thread holds at most this many of them, and files of at
# most LOAD_BYTES in all (one file at least, whatever its size): with the next run read ahead, a
# retrieve holds two runs' worth in memory. Sixteen small instances per trip halve the CPU that
# sending them costs; larger runs of large files cost more than they save (page faults on
# fresh buffers), hence the byte bound.
LOAD_COUNT = 16
LOAD_BYTES = 1 << 20


def _run_end(targets: Sequence[Target], start: int) -> int:
    """Where the run of instances to read from `start` ends (exclusive). A file is counted at its
    full size even when it is larger than PRELOAD and will be streamed: whether it must be
    converted (and so held whole) is known only once its context is chosen."""
    held = 0
    end = start
    while end < len(targets) and end - start < LOAD_COUNT:
        held += targets[end].size
        if held > LOAD_BYTES and end > start:
            break
        end += 1
    return end


def _read_run(
    resolve: Callable[[str], Path], jobs: Sequence[tuple[Target, str | None] | None]
) -> list[DatasetSource | Exception]:
    """(worker thread) Each job's data set: read as stored (syntax None), or converted to the
    syntax given; the error instead where its file cannot be read or converted (that
    sub-operation fails). None where the job is None (no context took the instance)."""
    read: list[DatasetSource | Exception] = []
    for job in jobs:
        if job is None:
            read.append(None)
            continue
        target, convert_to = job
        path = resolve(target.relpath)
        try:
            if convert_to is None:
                read.append(_file_slice(path, target.size))
            else:
                read.append(_convert(path, target.size, target.transfer_syntax_uid, convert_to))
        except (OSError, ValueError, NotImplementedError, RuntimeError) as e:
            read.append(e)
    return read


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a read ahead that is not used is not an error


def _file_slice(path: Path, indexed_size: int) -> FileSlice:
    """The dataset part of a stored Part 10 file (after the File Meta group, PS3.10 7.1); read
    at once when the file is at most PRELOAD bytes (most instances), else left to be streamed.
    A file whose size is not the index's (truncated on disk) raises OSError before anything of
    it is sent: its sub-operation fails, and the association carries on with the next one.

    Plain os calls, not open(): a buffered file object adds an ioctl, lseeks and a second fstat,
    and each system call lets go of the GIL and must win it back from the event loop."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        _check_size(path, size, indexed_size)
        if size <= PRELOAD:
            whole = os.read(fd, size + 1)  # one byte more: a file that grew is caught below
            if len(whole) != size:
                raise OSError(f"{path} changed while being read")
            offset = dataset_offset(whole[:PART10_HEAD])
            return FileSlice(path, offset, size - offset, memoryview(whole)[offset:])  # no copy
        head = os.read(fd, PART10_HEAD)
    finally:
        os.close(fd)
    offset = dataset_offset(head)
    return FileSlice(path, offset, size - offset)


def _check_size(path: Path, size: int, indexed_size: int) -> None:
    if size != indexed_size:
        raise OSError(f"{path.name} is {size} bytes, the index says {indexed_size}")


def _convert(path: Path, indexed_size: int, source_ts: str, target_ts: str) -> bytes:
    """The stored dataset re-encoded in `target_ts` (worker thread; whole dataset in memory).

    Between the uncompressed syntaxes and Deflated only, or from a compressed one when pydicom has a
    decoder for it installed; anything else raises and the sub-operation counts as failed."""
    with open(path, "rb") as f:  # one open for the size check and the read
        _check_size(path, os.fstat(f.fileno()).st_size, indexed_size)
        ds = pydicom.dcmread(f)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()  # raises when no codec is installed for this syntax
    return _encode(ds, target_ts)


def _encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """`ds` encoded in `transfer_syntax` (a converted instance, or a response identifier)."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    fp.is_little_endian = transfer_syntax != EXPLICIT_VR_BE
    write_dataset(fp, ds)
    data = fp.getvalue()
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data


async def _close(outbound: Outbound) -> None:
    try:
        async with asyncio.timeout(10):
            await outbound.release()
    except Exception:
        await outbound.abort()
