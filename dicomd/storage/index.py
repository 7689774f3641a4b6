"""The instance index: SQLite (through aiosqlite) with one group-commit writer.

Owns: the index database at run time: opening it (PRAGMAs, migrations from schema.py), writing
instance records, deleting them, and the few reads the store and the repair code need.
Must not know: DICOM parsing (record.py does it), files (files.py), the network, statuses.

Writes: group commit by leader and followers, on the callers' own threads. put_blocking() and
delete_blocking() are called from worker threads (a C-STORE calls it from the thread that has just
installed its file); each queues its operation and takes the commit lock. Whoever holds it is the
leader: it takes everything queued (up to BATCH_LIMIT operations of one kind), runs it as one
transaction (BEGIN IMMEDIATE ... COMMIT) and hands every operation of the batch its outcome. A
caller whose operation a leader has committed meanwhile finds it done when it gets the lock, and
returns. No caller returns before the COMMIT of its row has returned, so a C-STORE answered Success
after put returned answers for a committed row (with synchronous=FULL, a durable one); while one
transaction commits the next batch queues up, so one fsync is shared by every concurrent store,
with no timer. A lone store commits on its own thread, with no hand-off at all.

Why not a writer task on aiosqlite: aiosqlite runs each statement as its own trip to the
connection's thread and back through the event loop, a batch is 4 to 7 statements, and a thread
hand-off is far from free (a futex wake and often an inter-processor interrupt, on virtual machines
tens to hundreds of microseconds). The write connection is therefore a plain sqlite3 connection used
by one thread at a time under the commit lock. The schema is set up (migrations) through aiosqlite,
the reads stay on aiosqlite, and put()/delete() are the awaitable forms for the event loop. Every
statement is an executemany(), or a set-based statement over a JSON list of keys (json_each), with
parents found by natural-key subselects rather than by rowids fetched first.

A failing batch is rolled back and its callers get IndexUnavailable (for "database is locked"
after busy_timeout, a full disk, an I/O error); the writer carries on with the next batch. A batch
that fails for any other reason is retried one operation per transaction, so one poison record
cannot fail the stores that happened to share its transaction. A put() whose awaiting caller is
cancelled is still written: its file is already installed, and an indexed file beats an orphan.

Reads (get, iter_instances, counts) use a second, read-only connection, so they never wait behind
a group commit; in WAL mode a reader sees the last committed state while a writer writes.
C-FIND's statements (query()) run on a small pool of further read-only connections (reads.py),
one per running query, so a long result streamed to a slow peer holds up neither these reads nor
other queries.

put() semantics: the record upserts patient (key: patient_id + issuer_of_patient_id) -> study
(study_instance_uid) -> series (series_instance_uid) -> instance (sop_instance_uid). Higher levels
are refreshed from the newest instance, where a newer empty value does not erase an older non-empty
one (a presentation state without Study Description must not blank the study's). A study, series
or instance whose parent key changed is moved, and parents left empty are deleted, in the same
transaction. For an instance that exists (in the database, or earlier in the same batch):
"replace" rewrites it, "keep" and "reject" leave it (and its parents) untouched.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias, TypeVar, get_args

import aiosqlite

from dicomd.storage.reads import ReadPool, Rows
from dicomd.storage.record import InstanceRecord
from dicomd.storage.schema import (
    INSTANCE_COLUMNS,
    PATIENT_COLUMNS,
    SERIES_COLUMNS,
    STUDY_COLUMNS,
    migrate,
)

__all__ = [
    "BATCH_LIMIT",
    "Index",
    "IndexStats",
    "IndexUnavailable",
    "Policy",
    "PutResult",
    "StoredInstance",
]

Policy: TypeAlias = Literal["replace", "keep", "reject"]
_POLICIES: Final = frozenset(get_args(Policy))
_SYNCHRONOUS: Final = frozenset({"FULL", "NORMAL", "EXTRA"})

BATCH_LIMIT: Final = 256
ITER_PAGE: Final = 512  # rows per page of iter_instances
QUERY_CONNECTIONS: Final = 8  # concurrent query() statements (C-FIND), each on its own connection

_PATIENT_KEY: Final = ("patient_id", "issuer_of_patient_id")
# A record's parameters for each upsert below: the parent's natural key, then the level's columns.
_patient_row: Final = attrgetter(*PATIENT_COLUMNS)
_study_row: Final = attrgetter(*_PATIENT_KEY, *STUDY_COLUMNS)
_series_row: Final = attrgetter("study_instance_uid", *SERIES_COLUMNS)
_instance_row: Final = attrgetter("series_instance_uid", *INSTANCE_COLUMNS)


class IndexUnavailable(Exception):
    """The index could not take the write (locked past busy_timeout, disk full, I/O error, closed)."""


class PutResult(Enum):
    INSERTED = "inserted"
    REPLACED = "replaced"
    KEPT = "kept"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    relpath: str
    size: int
    sha256: str
    study_instance_uid: str
    series_instance_uid: str


@dataclass(frozen=True, slots=True)
class IndexStats:
    transactions: int  # committed write transactions
    failed_transactions: int  # rolled back
    records: int  # put() operations committed (inserted, replaced, kept or rejected)


# --- SQL -----------------------------------------------------------------------------------------


def _keep_nonempty(table: str, column: str) -> str:
    # NULLIF(x, '') is NULL for '' and for NULL, so one form serves text and integer columns.
    return f"{column} = COALESCE(NULLIF(excluded.{column}, ''), {table}.{column})"


def _upsert(
    table: str,
    columns: Sequence[str],
    conflict: Sequence[str],
    parent: tuple[str, str] | None,
    *,
    refresh: bool,
) -> str:
    """INSERT ... ON CONFLICT DO UPDATE for one level; `parent` = (fk column, subselect)."""
    names = list(columns)
    values = ["?"] * len(columns)
    updates = []
    if parent is not None:
        names.insert(0, parent[0])
        values.insert(0, f"({parent[1]})")
        updates.append(f"{parent[0]} = excluded.{parent[0]}")
    for column in columns:
        if column in conflict:
            continue
        updates.append(
            _keep_nonempty(table, column) if refresh else f"{column} = excluded.{column}"
        )
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(values)}) "
        f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {', '.join(updates)}"
    )


_UPSERT_PATIENT: Final = _upsert("patient", PATIENT_COLUMNS, _PATIENT_KEY, None, refresh=True)
_UPSERT_STUDY: Final = _upsert(
    "study",
    STUDY_COLUMNS,
    ("study_instance_uid",),
    ("patient_pk", "SELECT pk FROM patient WHERE patient_id = ? AND issuer_of_patient_id = ?"),
    refresh=True,
)
_UPSERT_SERIES: Final = _upsert(
    "series",
    SERIES_COLUMNS,
    ("series_instance_uid",),
    ("study_pk", "SELECT pk FROM study WHERE study_instance_uid = ?"),
    refresh=True,
)
# An instance row is replaced whole: it describes one file, the newest one.
_UPSERT_INSTANCE: Final = _upsert(
    "instance",
    INSTANCE_COLUMNS,
    ("sop_instance_uid",),
    ("series_pk", "SELECT pk FROM series WHERE series_instance_uid = ?"),
    refresh=False,
)

_JSON_KEYS: Final = "SELECT value FROM json_each(?{n})"

# What the batch's keys already are in the database, with their parent's key and the rowids of
# their ancestors (candidates for cleanup). Kind 0 instance, 1 series, 2 study.
_LOOKUP: Final = f"""
SELECT 0, i.sop_instance_uid, se.series_instance_uid, NULL, se.pk, st.pk, st.patient_pk
  FROM instance AS i
  JOIN series AS se ON se.pk = i.series_pk
  JOIN study AS st ON st.pk = se.study_pk
 WHERE i.sop_instance_uid IN ({_JSON_KEYS.format(n=1)})
UNION ALL
SELECT 1, se.series_instance_uid, st.study_instance_uid, NULL, NULL, st.pk, st.patient_pk
  FROM series AS se
  JOIN study AS st ON st.pk = se.study_pk
 WHERE se.series_instance_uid IN ({_JSON_KEYS.format(n=2)})
UNION ALL
SELECT 2, st.study_instance_uid, p.patient_id, p.issuer_of_patient_id, NULL, NULL, p.pk
  FROM study AS st
  JOIN patient AS p ON p.pk = st.patient_pk
 WHERE st.study_instance_uid IN ({_JSON_KEYS.format(n=3)})
"""

# Parents that may have been left empty: rowids (?1) and natural keys (?2). Bottom-up, so a
# series deleted here makes its study a candidate for the next statement.
_DELETE_EMPTY_SERIES: Final = f"""
DELETE FROM series
 WHERE pk IN ({_JSON_KEYS.format(n=1)}
              UNION SELECT pk FROM series WHERE series_instance_uid IN ({_JSON_KEYS.format(n=2)}))
   AND NOT EXISTS (SELECT 1 FROM instance WHERE instance.series_pk = series.pk)
"""
_DELETE_EMPTY_STUDIES: Final = f"""
DELETE FROM study
 WHERE pk IN ({_JSON_KEYS.format(n=1)}
              UNION SELECT pk FROM study WHERE study_instance_uid IN ({_JSON_KEYS.format(n=2)}))
   AND NOT EXISTS (SELECT 1 FROM series WHERE series.study_pk = study.pk)
"""
_DELETE_EMPTY_PATIENTS: Final = f"""
DELETE FROM patient
 WHERE pk IN ({_JSON_KEYS.format(n=1)}
              UNION SELECT pk FROM patient
                     WHERE (patient_id, issuer_of_patient_id) IN
                           (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
                              FROM json_each(?2)))
   AND NOT EXISTS (SELECT 1 FROM study WHERE study.patient_pk = patient.pk)
"""

_DELETE_LOOKUP: Final = f"""
SELECT se.pk, st.pk, st.patient_pk
  FROM instance AS i
  JOIN series AS se ON se.pk = i.series_pk
  JOIN study AS st ON st.pk = se.study_pk
 WHERE i.sop_instance_uid IN ({_JSON_KEYS.format(n=1)})
"""
_DELETE_INSTANCES: Final = (
    f"DELETE FROM instance WHERE sop_instance_uid IN ({_JSON_KEYS.format(n=1)})"
)

_STORED_COLUMNS: Final = """
       i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.relpath, i.size, i.sha256,
       st.study_instance_uid, se.series_instance_uid
  FROM instance AS i
  JOIN series AS se ON se.pk = i.series_pk
  JOIN study AS st ON st.pk = se.study_pk
"""
_GET: Final = f"SELECT {_STORED_COLUMNS} WHERE i.sop_instance_uid = ?"
# Keyset pagination: each page is a short statement of its own, so a long iteration holds no read
# transaction open (which would pin the WAL and show other reads on this connection a stale view).
_PAGE: Final = f"SELECT i.pk, {_STORED_COLUMNS} WHERE i.pk > ? ORDER BY i.pk LIMIT ?"


# --- the writer's queue --------------------------------------------------------------------------


_Outcome: TypeAlias = tuple[Any, BaseException | None]  # (result, error) of one operation
_T = TypeVar("_T")


@dataclass(slots=True)
class _Put:
    record: InstanceRecord
    policy: Policy
    outcome: _Outcome | None = None  # set by the leader that committed it, under the commit lock


@dataclass(slots=True)
class _Delete:
    sop_instance_uid: str
    outcome: _Outcome | None = None


_Op: TypeAlias = _Put | _Delete


def _put(record: InstanceRecord, policy: Policy) -> _Put:
    if policy not in _POLICIES:
        raise ValueError(f"policy must be one of {sorted(_POLICIES)}, not {policy!r}")
    return _Put(record, policy)


def _unavailable(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.Error):
        error = IndexUnavailable(f"index write failed: {exc}")
        error.__cause__ = exc
        return error
    return exc


def _keys(values: Iterable[Any]) -> str:
    """A JSON list of distinct keys, for json_each(); a composite key is a list itself."""
    distinct = dict.fromkeys(tuple(v) if isinstance(v, list | tuple) else v for v in values)
    return json.dumps(list(distinct))


def _merge(
    rows: dict[tuple[Any, ...], tuple[Any, ...]],
    key: tuple[Any, ...],
    row: tuple[Any, ...],
    parent_len: int,
) -> None:
    """Fold a newer row for `key` into `rows`, with the same rule as the SQL upsert."""
    old = rows.get(key)
    if old is None or old == row:  # the common case: the batch's instances share their parents
        rows[key] = row
        return
    rows[key] = row[:parent_len] + tuple(
        new if new not in ("", None) else prior
        for prior, new in zip(old[parent_len:], row[parent_len:], strict=True)
    )


async def _connect(path: Path, busy_timeout: float) -> aiosqlite.Connection:
    # isolation_level=None: no implicit BEGINs from the sqlite3 module; ours are explicit.
    conn = aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    try:
        return await conn
    except BaseException:
        # aiosqlite 0.22 stops its worker thread after a failed connect without waiting for it; a
        # process that exits right away would have the thread call into a closed event loop.
        thread = getattr(conn, "_thread", None)
        if isinstance(thread, threading.Thread) and thread.is_alive():
            await asyncio.to_thread(thread.join, 5.0)
        raise


def _open_writer(path: Path, busy_timeout: float, synchronous: str) -> sqlite3.Connection:
    """The write connection: used by one thread at a time, under the index's commit lock."""
    # isolation_level=None: no implicit BEGINs from the sqlite3 module; ours are explicit.
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=busy_timeout, check_same_thread=False
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        conn.close()
        raise
    return conn


class Index:
    """The open index; make it with `await Index.open(path)`, end it with `await close()`."""

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: aiosqlite.Connection,
        *,
        busy_timeout: float = 5.0,
    ) -> None:
        self.path = path
        # C-FIND's connections (reads.py): long queries never hold up `reader`.
        self._reads = ReadPool(path, size=QUERY_CONNECTIONS, busy_timeout=busy_timeout)
        self._reader = reader
        # The write side: the connection and everything below are used under _commit_lock, by
        # the leader of the moment; _queue and _closing under _queue_lock.
        self._commit_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: deque[_Op] = deque()
        self._closing = False
        self._closed = False
        self._writer_conn: sqlite3.Connection | None = writer
        self._transactions = 0
        self._failed = 0
        self._records = 0
        # The last row written for each parent (patient, study, series) key. The upserts are
        # idempotent, so a row equal to the last one written need not be written again: the
        # usual batch (slices of a series already stored) then writes its instance rows only.
        # Valid because this connection is the only writer; cleared on rollback and on delete.
        self._parent_rows: dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]] = {}
        self._pending_rows: dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]] = {}
        self._forget_parents = False

    @classmethod
    async def open(
        cls, path: Path, *, synchronous: str = "FULL", busy_timeout: float = 5.0
    ) -> Index:
        """Open (creating if needed) and migrate the index at `path`.

        `synchronous` is FULL (a commit survives power loss) or NORMAL (it may be lost, the
        database stays consistent); `busy_timeout` is how long, in seconds, a write waits for a
        lock another process holds before IndexUnavailable.
        """
        mode = synchronous.upper()
        if mode not in _SYNCHRONOUS:
            raise ValueError(
                f"synchronous must be one of {sorted(_SYNCHRONOUS)}, not {synchronous!r}"
            )
        if busy_timeout < 0:
            raise ValueError("busy_timeout must be >= 0")
        timeout_ms = round(busy_timeout * 1000)
        writer: sqlite3.Connection | None = None
        reader: aiosqlite.Connection | None = None
        try:
            setup = await _connect(path, busy_timeout)
            try:
                await setup.execute(f"PRAGMA busy_timeout = {timeout_ms}")
                rows = list(await setup.execute_fetchall("PRAGMA journal_mode = WAL"))
                if str(rows[0][0]).lower() != "wal":
                    raise IndexUnavailable(
                        f"cannot use WAL journal mode on {path} (got {rows[0][0]})"
                    )
                # The batch statements pass key lists as JSON (json_each): built in since SQLite
                # 3.38, an option before. Better refused here than on every put().
                await setup.execute_fetchall("SELECT json_valid('[]')")
                await migrate(setup)
            finally:
                await setup.close()
            writer = await asyncio.to_thread(_open_writer, path, busy_timeout, mode)
            reader = await _connect(path, busy_timeout)
            await reader.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            if reader is not None:
                await reader.close()
            if writer is not None:
                writer.close()
            if isinstance(exc, sqlite3.Error):
                raise IndexUnavailable(f"cannot open the index {path}: {exc}") from exc
            raise
        return cls(path, writer, reader, busy_timeout=busy_timeout)

    async def close(self) -> None:
        """Commit what is queued, close the connections; later writes get IndexUnavailable.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._queue_lock:
            self._closing = True
        try:
            await asyncio.to_thread(self._close_writer)
        finally:
            await self._reader.close()
            await self._reads.close()

    def _close_writer(self) -> None:
        with self._commit_lock:
            self._lead()  # whatever was queued before _closing was set
            conn, self._writer_conn = self._writer_conn, None
            if conn is not None:
                conn.close()

    @property
    def stats(self) -> IndexStats:
        return IndexStats(self._transactions, self._failed, self._records)

    async def call_writer(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run fn(write connection) under the commit lock (for checks and tests, not writes)."""

        def call() -> _T:
            with self._commit_lock:
                return fn(self._live_writer())

        return await asyncio.to_thread(call)

    # --- writes ----------------------------------------------------------------------------------

    def put_blocking(self, record: InstanceRecord, *, policy: Policy) -> PutResult:
        """Index `record` from a worker thread; returns once the transaction that wrote it has
        committed. Never call it on the event loop: it waits for the disk."""
        result: PutResult = self._submit(_put(record, policy))
        return result

    def delete_blocking(self, sop_instance_uid: str) -> None:
        """Remove the instance (if indexed) and any series, study, patient it leaves empty."""
        self._submit(_Delete(sop_instance_uid))

    async def put(self, record: InstanceRecord, *, policy: Policy) -> PutResult:
        """put_blocking() for the event loop. Operations are queued in the order of the calls, so
        puts gathered together share a transaction and keep their order."""
        op = _put(record, policy)
        self._enqueue(op)
        result: PutResult = await asyncio.to_thread(self._wait, op)
        return result

    async def delete(self, sop_instance_uid: str) -> None:
        """delete_blocking() for the event loop (queued in call order, like put())."""
        op = _Delete(sop_instance_uid)
        self._enqueue(op)
        await asyncio.to_thread(self._wait, op)

    def _submit(self, op: _Op) -> Any:
        self._enqueue(op)
        return self._wait(op)

    def _enqueue(self, op: _Op) -> None:
        with self._queue_lock:
            if self._closing:
                raise IndexUnavailable("the index is closed")
            self._queue.append(op)

    def _wait(self, op: _Op) -> Any:
        """Lead commits until `op` is committed (by us or by another leader); its outcome."""
        while op.outcome is None:
            with self._commit_lock:
                if op.outcome is None:
                    self._lead()
        result, error = op.outcome
        if error is not None:
            raise error
        return result

    def _lead(self) -> None:
        """Commit what is queued, a batch at a time (the caller holds the commit lock)."""
        while True:
            with self._queue_lock:
                if not self._queue:
                    return
                kind = type(self._queue[0])
                batch: list[_Op] = []
                while self._queue and len(batch) < BATCH_LIMIT and type(self._queue[0]) is kind:
                    batch.append(self._queue.popleft())
            if self._writer_conn is None:
                outcomes: list[_Outcome] = [(None, IndexUnavailable("the index is closed"))] * len(
                    batch
                )
            else:
                outcomes = self._run(batch)
            for op, outcome in zip(batch, outcomes, strict=True):
                op.outcome = outcome

    # --- under the commit lock -------------------------------------------------------------------

    def _live_writer(self) -> sqlite3.Connection:
        conn = self._writer_conn
        if conn is None:
            raise IndexUnavailable("the index is closed")
        return conn

    def _run(self, batch: list[_Op]) -> list[_Outcome]:
        """One transaction for the batch; each operation's result or error."""
        try:
            results = self._transaction(batch)
        except Exception as exc:
            self._rollback()
            self._failed += 1
            if len(batch) > 1 and not isinstance(exc, sqlite3.OperationalError):
                # Not the database's state but something in the batch: find the culprit.
                return [outcome for op in batch for outcome in self._run([op])]
            error = _unavailable(exc)
            return [(None, error)] * len(batch)
        return [(result, None) for result in results]

    def _rollback(self) -> None:
        self._pending_rows.clear()
        self._parent_rows.clear()
        self._forget_parents = False
        try:
            conn = self._live_writer()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except Exception:
            # Some errors (SQLITE_FULL, IOERR) have rolled back already; a connection that
            # cannot even roll back will fail the next BEGIN, and that batch reports it.
            pass

    def _transaction(self, batch: list[_Op]) -> list[Any]:
        conn = self._live_writer()
        conn.execute("BEGIN IMMEDIATE")
        if isinstance(batch[0], _Put):
            results: list[Any] = self._put_batch([op for op in batch if isinstance(op, _Put)])
        else:
            self._delete_batch([op.sop_instance_uid for op in batch if isinstance(op, _Delete)])
            results = [None] * len(batch)
        conn.execute("COMMIT")
        if self._forget_parents:
            self._parent_rows.clear()
            self._forget_parents = False
        else:
            self._parent_rows.update(self._pending_rows)
        self._pending_rows.clear()
        if len(self._parent_rows) > 100_000:
            self._parent_rows.clear()  # bounded: a cache miss only costs an upsert
        self._transactions += 1
        if isinstance(batch[0], _Put):
            self._records += len(batch)
        return results

    def _put_batch(self, ops: list[_Put]) -> list[PutResult]:
        conn = self._live_writer()
        records = [op.record for op in ops]
        found = conn.execute(
            _LOOKUP,
            (
                _keys(r.sop_instance_uid for r in records),
                _keys(r.series_instance_uid for r in records),
                _keys(r.study_instance_uid for r in records),
            ),
        ).fetchall()
        # Every parent each key has had: in the database, and in this batch's written records.
        parents: dict[tuple[int, str], set[tuple[Any, ...]]] = {}
        old_pks: tuple[set[int], set[int], set[int]] = (set(), set(), set())
        existing: set[str] = set()
        for kind, key, parent, parent2, series_pk, study_pk, patient_pk in found:
            parents[kind, key] = {(parent,) if kind < 2 else (parent, parent2)}
            for pks, pk in zip(old_pks, (series_pk, study_pk, patient_pk), strict=True):
                if pk is not None:
                    pks.add(pk)
            if kind == 0:
                existing.add(key)

        results: list[PutResult] = []
        written: list[InstanceRecord] = []
        for op in ops:
            uid = op.record.sop_instance_uid
            if uid not in existing:
                existing.add(uid)
                results.append(PutResult.INSERTED)
            elif op.policy == "replace":
                results.append(PutResult.REPLACED)
            else:
                results.append(PutResult.KEPT if op.policy == "keep" else PutResult.REJECTED)
                continue
            written.append(op.record)
        if not written:
            return results

        patients: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        studies: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        series: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        for r in written:
            patient_key = (r.patient_id, r.issuer_of_patient_id)
            _merge(patients, patient_key, _patient_row(r), 0)
            _merge(studies, (r.study_instance_uid,), _study_row(r), 2)
            _merge(series, (r.series_instance_uid,), _series_row(r), 1)
            parents.setdefault((0, r.sop_instance_uid), set()).add((r.series_instance_uid,))
            parents.setdefault((1, r.series_instance_uid), set()).add((r.study_instance_uid,))
            parents.setdefault((2, r.study_instance_uid), set()).add(patient_key)

        for level, sql, rows in (
            ("patient", _UPSERT_PATIENT, patients),
            ("study", _UPSERT_STUDY, studies),
            ("series", _UPSERT_SERIES, series),
        ):
            changed = [
                row for key, row in rows.items() if self._parent_rows.get((level, key)) != row
            ]
            if changed:
                conn.executemany(sql, changed)
            for key, row in rows.items():
                self._pending_rows[level, key] = row
        conn.executemany(_UPSERT_INSTANCE, [_instance_row(r) for r in written])
        # Something moved (in the database, or between records of this batch): parents it left may
        # be empty now. The common batch moves nothing and skips these statements.
        if any(len(seen) > 1 for seen in parents.values()):
            self._delete_empty(
                old_pks,
                (
                    [r.series_instance_uid for r in written],
                    [r.study_instance_uid for r in written],
                    [(r.patient_id, r.issuer_of_patient_id) for r in written],
                ),
            )
        return results

    def _delete_batch(self, uids: list[str]) -> None:
        self._parent_rows.clear()  # deletes may remove parents: forget what was written
        conn = self._live_writer()
        found = conn.execute(_DELETE_LOOKUP, (_keys(uids),)).fetchall()
        old_pks: tuple[set[int], set[int], set[int]] = (set(), set(), set())
        for row in found:
            for pks, pk in zip(old_pks, row, strict=True):
                pks.add(pk)
        conn.execute(_DELETE_INSTANCES, (_keys(uids),))
        if found:
            self._delete_empty(old_pks, ([], [], []))

    def _delete_empty(
        self,
        pks: tuple[set[int], set[int], set[int]],
        keys: tuple[list[str], list[str], list[tuple[str, str]]],
    ) -> None:
        # Parents may disappear here: nothing cached about this batch (or before it) holds.
        self._pending_rows.clear()
        self._parent_rows.clear()
        self._forget_parents = True
        conn = self._live_writer()
        series_keys, study_keys, patient_keys = keys
        for sql, level_pks, level_keys in (
            (_DELETE_EMPTY_SERIES, pks[0], _keys(series_keys)),
            (_DELETE_EMPTY_STUDIES, pks[1], _keys(study_keys)),
            (_DELETE_EMPTY_PATIENTS, pks[2], _keys(patient_keys)),
        ):
            conn.execute(sql, (json.dumps(sorted(level_pks)), level_keys))

    # --- reads -----------------------------------------------------------------------------------

    def add_sql_function(self, name: str, nargs: int, fn: Callable[..., Any]) -> None:
        """Register a (deterministic, total) SQL function for the statements of query()."""
        self._reads.add_function(name, nargs, fn)

    def query(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        should_stop: Callable[[], bool] | None = None,
        text_as_bytes: bool = False,
    ) -> AbstractAsyncContextManager[Rows]:
        """Run a read-only statement on a connection of its own; page with `await rows.fetch(n)`.

        The statement is one snapshot of the index, held until the block exits. When `should_stop()`
        turns true while a fetch runs, the statement is interrupted and fetch() raises QueryStopped.
        With `text_as_bytes`, TEXT values come as their UTF-8 bytes.
        """
        return self._reads.query(sql, params, should_stop=should_stop, text_as_bytes=text_as_bytes)

    async def get(self, sop_instance_uid: str) -> StoredInstance | None:
        rows = list(await self._reader.execute_fetchall(_GET, (sop_instance_uid,)))
        return StoredInstance(*rows[0]) if rows else None

    async def iter_instances(self) -> AsyncIterator[StoredInstance]:
        """Every indexed instance, in insertion order, a page at a time.

        Not a snapshot: rows committed during the iteration may or may not appear.
        """
        after = 0
        while True:
            rows = list(await self._reader.execute_fetchall(_PAGE, (after, ITER_PAGE)))
            for row in rows:
                yield StoredInstance(*row[1:])
            if len(rows) < ITER_PAGE:
                return
            after = rows[-1][0]

    async def counts(self) -> dict[str, int]:
        rows = list(
            await self._reader.execute_fetchall(
                "SELECT (SELECT count(*) FROM patient), (SELECT count(*) FROM study),"
                " (SELECT count(*) FROM series), (SELECT count(*) FROM instance)"
            )
        )
        patients, studies, series, instances = rows[0]
        return {"patients": patients, "studies": studies, "series": series, "instances": instances}

    async def integrity_check(self) -> str:
        rows = await self._reader.execute_fetchall("PRAGMA integrity_check")
        return "\n".join(str(row[0]) for row in rows)
