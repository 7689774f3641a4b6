"""Storage SOP Classes as SCP (PS3.4 Annex B): stream, verify, persist, index, then answer.

Owns: the order of the durable path and the mapping of every failure to its C-STORE status, in one
place (PS3.4 B.2.3):

    fragments -> spool file (written from a thread, a bounded buffer at a time)
    last fragment -> in one worker thread: parse the header (bounded), check the UIDs against the
        command, fsync, atomic rename into the hashed path, fsync the directory, index row
        committed (group commit, led by this thread or shared with concurrent stores)
    -> only then Success.

File before index: a crash leaves at worst an orphan file that start-up adopts, never an index row
that points at nothing. A dataset is never decoded whole: only its header, stopping before pixel data.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import structlog

from dicomd import metrics
from dicomd.dimse import status
from dicomd.dimse.messages import CStoreRQ, CStoreRSP, Message
from dicomd.services.base import Request, Responder
from dicomd.storage.files import (
    BelowReserve,
    FileMeta,
    FileStore,
    OutOfSpace,
    Spool,
    StorageError,
)
from dicomd.storage.index import Index, IndexUnavailable, PutResult
from dicomd.storage.record import InstanceRecord, RecordError, record_from_dataset
from dicomd.storage.scan import ScanError, scan, scan_bytes
from dicomd.transfer_syntaxes import EXPLICIT_VR_BE
from dicomd.ul.negotiation import AcceptedContext

log = structlog.get_logger("dicomd.store")

# Fragments are gathered up to this size before a thread writes them out: small instances reach the
# disk in one write, large ones never hold more than this in memory.
WRITE_CHUNK = 1 << 20

# Worker threads for the durable path of concurrent stores (each blocks on fsync and on the group
# commit); its own pool, so stores waiting on the disk never hold up other worker-thread users.
STORE_THREADS = 16

DuplicatePolicy = Literal["keep", "replace", "reject"]
_R = TypeVar("_R")


class _Refused(Exception):
    """A C-STORE outcome other than Success, with its status and Error Comment."""

    def __init__(self, code: int, comment: str) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment


class SpoolSink:
    """A C-STORE dataset on its way to disk. Errors are remembered, not raised: the association
    must keep reading the rest of the dataset and then answer with a failure status."""

    def __init__(self, files: FileStore, meta: FileMeta) -> None:
        self.meta = meta
        self._files = files
        self._buffer = bytearray()
        self.spool: Spool | None = None
        self.error: _Refused | None = None
        self.received = 0
        # The whole dataset, when it reached the spool in a single write: scanned from memory.
        self.whole: bytes | bytearray | None = None

    async def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.error is not None:
            return  # already failed: drain the rest of the dataset without keeping it
        self._buffer += data
        if len(self._buffer) >= WRITE_CHUNK:
            chunk, self._buffer = self._buffer, bytearray()
            await asyncio.to_thread(self._write_sync, chunk)

    def _write_sync(self, chunk: bytes | bytearray) -> None:
        try:
            if self.spool is None:
                self.spool = self._files.create_spool(self.meta)
            self.spool.write(chunk)
        except BelowReserve as e:
            self._fail(_Refused(status.OUT_OF_RESOURCES, f"store full: {e}"))
        except OutOfSpace:
            self._fail(_Refused(status.OUT_OF_RESOURCES, "out of disk space"))
        except StorageError as e:
            self._fail(_Refused(status.OUT_OF_RESOURCES, f"storage error: {e}"))

    def _fail(self, error: _Refused) -> None:
        self.error = error
        self._buffer = bytearray()
        if self.spool is not None:
            self.spool.discard()
            self.spool = None

    def flush_sync(self) -> Spool:
        """Write what is buffered; the spool holds the whole dataset afterwards (worker thread)."""
        if self._buffer or self.spool is None:
            chunk, self._buffer = self._buffer, bytearray()
            if self.spool is None:
                self.whole = chunk
            self._write_sync(chunk)
        if self.error is not None:
            raise self.error
        assert self.spool is not None
        return self.spool

    async def discard(self) -> None:
        self._buffer = bytearray()
        spool, self.spool = self.spool, None
        if spool is not None:
            await asyncio.to_thread(spool.discard)


class StoreService:
    def __init__(
        self,
        files: FileStore,
        index: Index,
        *,
        duplicate_policy: DuplicatePolicy,
        implementation_class_uid: str,
        implementation_version_name: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._files = files
        self._index = index
        self._policy = duplicate_policy
        self._impl_uid = implementation_class_uid
        self._impl_version = implementation_version_name
        self._clock = clock
        # One store at a time per SOP Instance UID: the file path and the index row are both keyed
        # by it, and two associations sending the same instance must not interleave.
        self._locks: dict[str, list[Any]] = {}  # uid -> [lock, users]
        self._in_flight: set[asyncio.Future[str]] = set()
        self._executor = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="dicomd-store")

    async def open_sink(
        self, context: AcceptedContext, command: Message, calling_ae_title: str
    ) -> SpoolSink:
        assert isinstance(command, CStoreRQ)
        meta = FileMeta(
            sop_class_uid=command.affected_sop_class_uid,
            sop_instance_uid=command.affected_sop_instance_uid,
            transfer_syntax_uid=context.transfer_syntax,
            implementation_class_uid=self._impl_uid,
            implementation_version_name=self._impl_version,
            source_ae_title=calling_ae_title,
        )
        return SpoolSink(self._files, meta)

    async def handle(self, request: Request, responder: Responder) -> None:
        command = request.command
        assert isinstance(command, CStoreRQ)
        sink = request.sink
        assert isinstance(sink, SpoolSink)
        started = time.perf_counter()
        uid = command.affected_sop_instance_uid
        outcome = "stored"
        try:
            if command.affected_sop_class_uid != request.context.abstract_syntax:
                raise _Refused(
                    status.SOP_CLASS_NOT_SUPPORTED,
                    "Affected SOP Class UID differs from the presentation context",
                )
            outcome = await self._finish(request, sink, command)
            code, comment = status.SUCCESS, None
            if outcome != "kept-existing":
                metrics.STORED_INSTANCES.inc()
                metrics.STORED_BYTES.inc(sink.received)
        except _Refused as e:
            await sink.discard()
            code, comment, outcome = e.code, e.comment, "refused"
        except BaseException:
            await sink.discard()
            raise
        await responder.respond(
            CStoreRSP(
                message_id_being_responded_to=command.message_id,
                affected_sop_class_uid=command.affected_sop_class_uid,
                affected_sop_instance_uid=uid,
                status=code,
                error_comment=comment[:64] if comment else None,
            )
        )
        # A refusal (out of space, an I/O error, a dataset that does not match its command) is a
        # warning: an administrator who logs warnings and up must see a full disk.
        (log.warning if outcome == "refused" else log.info)(
            "c_store_done",
            sop_instance_uid=uid,
            sop_class_uid=command.affected_sop_class_uid,
            status=f"{code:04X}",
            outcome=outcome,
            comment=comment,
            bytes=sink.received,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _finish(self, request: Request, sink: SpoolSink, command: CStoreRQ) -> str:
        # Shielded: once the dataset is complete, an abort or a shutdown of the association must not
        # stop half-way between the rename and the index commit. The store finishes on its own;
        # the peer, having no answer, will send the instance again.
        task = asyncio.ensure_future(self._store(request, sink, command))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_log_unanswered)
            raise

    async def drain(self) -> None:
        """Wait for stores that outlived their association (call before closing the index)."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def close(self) -> None:
        """drain(), then let the worker threads go."""
        await self.drain()
        self._executor.shutdown(wait=False)

    async def _store(self, request: Request, sink: SpoolSink, command: CStoreRQ) -> str:
        try:
            return await self._store_locked(request, sink, command)
        except BaseException:
            await sink.discard()  # nothing half-written stays in tmp/
            raise

    async def _store_locked(self, request: Request, sink: SpoolSink, command: CStoreRQ) -> str:
        uid = command.affected_sop_instance_uid
        async with self._instance_lock(uid):
            received_at = self._clock().isoformat(timespec="microseconds")
            # One trip to a worker thread in the usual case: the file's path is a function of the
            # UID, so "is it stored already?" is a stat there, and the index is asked only when
            # the answer is yes.
            keep_existing = self._policy != "replace"
            record, result = await self._in_thread(
                self._persist_sync, sink, command, request, received_at, keep_existing
            )
            if result is None:
                existing = await self._index.get(uid)
                if existing is not None:
                    if self._policy == "reject":
                        raise _Refused(status.DUPLICATE_SOP_INSTANCE, "SOP Instance already stored")
                    await sink.discard()
                    return "kept-existing"
                # A file without an index row (left by a crash): this instance takes its place.
                result = await self._in_thread(self._install_sync, sink, uid, record)
            return "replaced" if result is PutResult.REPLACED else "stored"

    async def _in_thread(self, fn: Callable[..., _R], *args: Any) -> _R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @contextlib.asynccontextmanager
    async def _instance_lock(self, uid: str) -> AsyncIterator[None]:
        entry = self._locks.get(uid)
        if entry is None:
            entry = self._locks[uid] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[uid]

    def _persist_sync(
        self,
        sink: SpoolSink,
        command: CStoreRQ,
        request: Request,
        received_at: str,
        keep_existing: bool,
    ) -> tuple[InstanceRecord, PutResult | None]:
        """Worker thread: header check, fsync + rename + directory fsync, index row committed.
        With `keep_existing`, an instance whose file exists is not installed (its result is
        None)."""
        spool = sink.flush_sync()
        ts = sink.meta.transfer_syntax_uid
        try:
            if sink.whole is not None:
                scanned = scan_bytes(sink.whole, ts)
            else:
                with open(spool.path, "rb") as f:
                    scanned = scan(f, spool.dataset_offset, spool.size, ts)
        except ScanError as e:
            raise _Refused(status.CANNOT_UNDERSTAND, f"cannot parse dataset: {e}") from e
        except OSError as e:
            raise _Refused(status.OUT_OF_RESOURCES, f"storage error: {e.strerror}") from e
        try:
            # Built before installing, so a dataset we cannot index never lands in the store.
            # The pydicom Dataset is made only if the record needs it (see record.py).
            record = record_from_dataset(
                scanned.dataset,
                transfer_syntax_uid=sink.meta.transfer_syntax_uid,
                relpath="",
                size=0,
                sha256="",
                received_at=received_at,
                calling_ae_title=request.calling_ae_title,
                attributes=scanned.blob,
                attributes_transfer_syntax=scanned.blob_transfer_syntax,
                raw=scanned.elements,
                little_endian=scanned.blob_transfer_syntax != EXPLICIT_VR_BE,
            )
        except RecordError as e:
            raise _Refused(status.DATASET_DOES_NOT_MATCH_SOP_CLASS, str(e)) from e
        # PS3.4 B.2.3: the dataset's SOP Class and Instance UIDs must be the command's (A900).
        if record.sop_class_uid != command.affected_sop_class_uid:
            raise _Refused(
                status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"SOP Class UID in dataset is {record.sop_class_uid!r}, command says another",
            )
        if record.sop_instance_uid != command.affected_sop_instance_uid:
            raise _Refused(
                status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOP Instance UID in dataset differs from the command",
            )
        uid = command.affected_sop_instance_uid
        if keep_existing and self._files.path(self._files.relpath_for(uid)).exists():
            return record, None
        return record, self._install_sync(sink, uid, record)

    def _install_sync(self, sink: SpoolSink, uid: str, record: InstanceRecord) -> PutResult:
        """Worker thread: install the spool under its hashed path, then commit its index row (on
        this thread too: a lone store costs no hand-off to a writer; concurrent ones share a
        group commit, see storage/index.py)."""
        assert sink.spool is not None
        try:
            stored = self._files.install(sink.spool, uid)
        except OutOfSpace as e:
            raise _Refused(status.OUT_OF_RESOURCES, "out of disk space") from e
        except StorageError as e:
            raise _Refused(status.OUT_OF_RESOURCES, f"storage error: {e}") from e
        sink.spool = None  # installed: no longer ours to discard
        record = replace(record, relpath=stored.relpath, size=stored.size, sha256=stored.sha256)
        try:
            return self._index.put_blocking(record, policy=self._policy)
        except IndexUnavailable as e:
            if self._policy != "replace":
                # The file is new (or replaced an orphan): never indexed, never acknowledged,
                # so it is not left for start-up to adopt. Under "replace" it may have
                # overwritten an indexed file; reconcile re-reads that one.
                with contextlib.suppress(StorageError):
                    self._files.remove(stored.relpath)
            raise _Refused(status.OUT_OF_RESOURCES, f"index unavailable: {e}") from e


def _log_unanswered(task: asyncio.Future[str]) -> None:
    if task.cancelled():
        return
    error = task.exception()
    log.warning(
        "c_store_unanswered",
        outcome=None if error is not None else task.result(),
        error=str(error) if error is not None else None,
    )
