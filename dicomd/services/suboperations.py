"""The sub-operations of C-GET and C-MOVE (PS3.4 C.4.2.3.1, C.4.3.3.1): stored instances sent one
at a time as C-STOREs, their outcomes counted.

Owns: reading stored files in runs (one ahead of the one being sent), choosing the presentation
context for each (and converting when the stored syntax was not accepted), the C-STORE-RQ with the
Move Originator, counting outcomes, and, for C-MOVE, the destination's associations (LocalMover).
A mover process (net/mover_process.py) imports this module and not retrieve.py, and pydicom only
when it must convert: it stays a small process.

Stored files go out as they are on disk — streamed, not decoded — whenever the stored transfer
syntax was accepted; that is also what makes a retrieved dataset byte-identical to the one
received.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from dicomd.config import RemoteAE
from dicomd.dimse import status
from dicomd.dimse.messages import CStoreRQ, CStoreRSP, Message
from dicomd.services.base import DatasetSource, FileSlice, IncompleteMessage, OpenOutbound, Outbound
from dicomd.storage.files import PART10_HEAD, dataset_offset
from dicomd.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    deflate,
)
from dicomd.ul.negotiation import AcceptedContext, ProposedContext

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = structlog.get_logger("dicomd.retrieve")

_UNCOMPRESSED = (EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE)


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

    def fail_unfinished(self, targets: Sequence[Target]) -> int:
        """Count as failed every one of `targets` (all of a job's, in order) past those with an
        outcome: sub-operations run in order, so these are a prefix. Returns how many failed."""
        finished = self.completed + self.failed + self.warning
        self.fail_rest(targets[finished:])
        return len(targets) - finished


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
            # that failed half-sent (see SubOperations.run): one damaged file does not fail the
            # rest.
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
        one trip to a thread for them all (or on the loop with read_inline, see __init__); None
        (logged) when no accepted context takes it or the file cannot be read."""
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
    import pydicom  # here: a mover process loads it only if it converts

    with open(path, "rb") as f:  # one open for the size check and the read
        _check_size(path, os.fstat(f.fileno()).st_size, indexed_size)
        ds = pydicom.dcmread(f)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()  # raises when no codec is installed for this syntax
    return encode(ds, target_ts)


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """`ds` encoded in `transfer_syntax` (a converted instance, or a response identifier)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_implicit_VR = transfer_syntax == IMPLICIT_VR_LE
    fp.is_little_endian = transfer_syntax != EXPLICIT_VR_BE
    write_dataset(fp, ds)
    data = fp.getvalue()
    return deflate(data) if transfer_syntax == DEFLATED_EXPLICIT_VR_LE else data


async def _close(outbound: Outbound) -> None:
    try:
        async with asyncio.timeout(10):
            await outbound.release()
    except Exception:
        await outbound.abort()
