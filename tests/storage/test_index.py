"""The instance index: schema and migrations, put/get and the three policies, moving instances and
cleaning up empty parents, group commit (fewer transactions than puts, each put returning only after
its commit), a locked database, streaming iteration, closing.

A second, plain sqlite3 connection is the oracle for what is committed: it sees only committed rows.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import pytest

from dicomd.storage import index as index_module
from dicomd.storage.index import (
    Index,
    IndexUnavailable,
    PutResult,
    StoredInstance,
)
from dicomd.storage.record import InstanceRecord
from dicomd.storage.schema import (
    COUNTER_COLUMNS,
    INSTANCE_COLUMNS,
    MIGRATIONS,
    PATIENT_COLUMNS,
    SERIES_COLUMNS,
    STUDY_COLUMNS,
    SchemaError,
    migrate,
)

T = TypeVar("T")

INT_FIELDS = {"series_number", "instance_number", "number_of_frames", "rows", "columns"}


def make_record(n: int, **overrides: Any) -> InstanceRecord:
    """Instance n of patient P1 / study 1.2.1 / series 1.2.1.1 unless overridden."""
    values: dict[str, Any] = {
        f.name: None if f.name in INT_FIELDS else "" for f in dataclasses.fields(InstanceRecord)
    }
    values.update(
        patient_id="P1",
        patient_name="Doe^Jane",
        study_instance_uid="1.2.1",
        study_date="20240501",
        study_description="CT HEAD",
        series_instance_uid="1.2.1.1",
        modality="CT",
        series_number=1,
        sop_instance_uid=f"1.2.1.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        instance_number=n,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        relpath=f"objects/{n:02x}/{n:064x}.dcm",
        size=1000 + n,
        sha256=f"{n:064x}",
        received_at="2024-05-01T12:00:00.000000+00:00",
        calling_ae_title="MODALITY",
        attributes=b"",
    )
    values.update(overrides)
    return InstanceRecord(**values)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "index.sqlite"


@pytest.fixture
async def index(db_path: Path) -> AsyncIterator[Index]:
    idx = await Index.open(db_path)
    try:
        yield idx
    finally:
        await idx.close()


@contextmanager
def oracle(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection in autocommit mode: it sees committed rows only."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        yield conn


def scalar(conn: sqlite3.Connection, sql: str, *args: Any) -> Any:
    return conn.execute(sql, args).fetchone()[0]


def table_counts(path: Path) -> tuple[int, int, int, int]:
    with oracle(path) as conn:
        return tuple(
            scalar(conn, f"SELECT count(*) FROM {table}")
            for table in ("patient", "study", "series", "instance")
        )


# --- schema --------------------------------------------------------------------------------------


async def test_new_database_is_at_the_latest_version_in_wal_mode(
    index: Index, db_path: Path
) -> None:
    with oracle(db_path) as conn:
        assert scalar(conn, "PRAGMA user_version") == len(MIGRATIONS) == 2
        assert scalar(conn, "PRAGMA journal_mode") == "wal"


async def test_every_record_field_is_one_column_at_its_level(index: Index, db_path: Path) -> None:
    with oracle(db_path) as conn:
        columns = {
            table: [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
            for table in ("patient", "study", "series", "instance")
        }
    assert columns["patient"] == ["pk", *PATIENT_COLUMNS, *COUNTER_COLUMNS["patient"]]
    assert columns["study"] == ["pk", "patient_pk", *STUDY_COLUMNS, *COUNTER_COLUMNS["study"]]
    assert columns["series"] == ["pk", "study_pk", *SERIES_COLUMNS, *COUNTER_COLUMNS["series"]]
    assert columns["instance"] == ["pk", "series_pk", *INSTANCE_COLUMNS]
    level_columns = [*PATIENT_COLUMNS, *STUDY_COLUMNS, *SERIES_COLUMNS, *INSTANCE_COLUMNS]
    assert sorted(level_columns) == sorted(f.name for f in dataclasses.fields(InstanceRecord))
    assert {"attributes", "relpath", "sha256", "received_at", "calling_ae_title"} <= set(
        INSTANCE_COLUMNS
    )


async def test_connection_pragmas(index: Index) -> None:
    # The connections are private; the PRAGMAs are per connection and cannot be seen from outside.
    def pragma(name: str) -> Any:
        return lambda conn: conn.execute(f"PRAGMA {name}").fetchall()

    assert await index.call_writer(pragma("synchronous")) == [(2,)]  # FULL
    assert await index.call_writer(pragma("foreign_keys")) == [(1,)]
    assert await index.call_writer(pragma("busy_timeout")) == [(5000,)]
    reader = index._reader
    assert list(await reader.execute_fetchall("PRAGMA query_only")) == [(1,)]


async def test_synchronous_normal_and_busy_timeout(db_path: Path) -> None:
    idx = await Index.open(db_path, synchronous="NORMAL", busy_timeout=0.25)
    try:
        synchronous = await idx.call_writer(lambda c: c.execute("PRAGMA synchronous").fetchall())
        assert synchronous == [(1,)]
        timeout = await idx.call_writer(lambda c: c.execute("PRAGMA busy_timeout").fetchall())
        assert timeout == [(250,)]
    finally:
        await idx.close()


async def test_bad_arguments_are_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        await Index.open(db_path, synchronous="OFF")
    with pytest.raises(ValueError, match="busy_timeout"):
        await Index.open(db_path, busy_timeout=-1)


async def test_an_unopenable_path_is_index_unavailable(tmp_path: Path) -> None:
    with pytest.raises(IndexUnavailable, match="cannot open"):
        await Index.open(tmp_path / "missing-dir" / "index.sqlite")


@pytest.mark.parametrize(
    "query",
    [
        "SELECT pk FROM patient WHERE patient_id = ?",
        "SELECT pk FROM patient WHERE patient_name = ?",
        "SELECT pk FROM patient WHERE patient_name LIKE ?",  # wildcard matching, prefix
        "SELECT pk FROM study WHERE study_instance_uid = ?",
        "SELECT pk FROM study WHERE study_date BETWEEN ? AND ?",
        "SELECT pk FROM study WHERE accession_number = ?",
        "SELECT pk FROM study WHERE patient_pk = ?",
        "SELECT pk FROM series WHERE series_instance_uid = ?",
        "SELECT pk FROM series WHERE study_pk = ?",
        "SELECT DISTINCT study_pk FROM series WHERE modality = ?",
        "SELECT pk FROM instance WHERE sop_instance_uid = ?",
        "SELECT pk FROM instance WHERE series_pk = ?",
    ],
)
async def test_query_keys_are_indexed(index: Index, db_path: Path, query: str) -> None:
    arguments = ["SMI%" if "LIKE" in query else "x"] * query.count("?")
    with oracle(db_path) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {query}", arguments)]
    assert plan and all(step.startswith("SEARCH") for step in plan), plan


# --- migrations ----------------------------------------------------------------------------------


async def test_migrations_from_empty_and_idempotent_reopen(db_path: Path) -> None:
    async with aiosqlite.connect(db_path, isolation_level=None) as conn:
        assert list(await conn.execute_fetchall("PRAGMA user_version")) == [(0,)]
        assert await migrate(conn) == len(MIGRATIONS)
        assert await migrate(conn) == len(MIGRATIONS)  # nothing left to do
    idx = await Index.open(db_path)
    assert await idx.put(make_record(1), policy="replace") is PutResult.INSERTED
    await idx.close()
    idx = await Index.open(db_path)  # a database at the latest version, reopened
    try:
        assert await idx.get("1.2.1.1.1") is not None
        assert await idx.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}
    finally:
        await idx.close()
    with oracle(db_path) as conn:
        assert scalar(conn, "PRAGMA user_version") == len(MIGRATIONS)


async def test_later_migrations_apply_in_order(db_path: Path) -> None:
    migrations = [
        *MIGRATIONS,
        "ALTER TABLE instance ADD COLUMN note TEXT NOT NULL DEFAULT '';",
        "CREATE INDEX instance_note_idx ON instance (note);",
    ]
    async with aiosqlite.connect(db_path, isolation_level=None) as conn:
        assert await migrate(conn, MIGRATIONS) == len(MIGRATIONS)
        assert await migrate(conn, migrations) == len(MIGRATIONS) + 2
        assert await migrate(conn, migrations) == len(MIGRATIONS) + 2
    with oracle(db_path) as conn:
        assert scalar(conn, "PRAGMA user_version") == len(MIGRATIONS) + 2
        assert "note" in [row[1] for row in conn.execute("PRAGMA table_info(instance)")]


async def test_a_failing_migration_is_rolled_back_whole(db_path: Path) -> None:
    broken = [*MIGRATIONS, "CREATE TABLE extra (a INTEGER);\nCREATE TABLE patient (a INTEGER);"]
    async with aiosqlite.connect(db_path, isolation_level=None) as conn:
        with pytest.raises(SchemaError, match=f"version {len(broken)}"):
            await migrate(conn, broken)
        assert not conn.in_transaction
    with oracle(db_path) as conn:
        # every version before the broken one committed, the broken one not
        assert scalar(conn, "PRAGMA user_version") == len(MIGRATIONS)
        assert scalar(conn, "SELECT count(*) FROM sqlite_schema WHERE name = 'extra'") == 0


async def test_a_newer_database_is_refused(db_path: Path) -> None:
    with oracle(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(SchemaError, match="newer"):
        await Index.open(db_path)


# --- put / get / policies ------------------------------------------------------------------------


async def test_put_and_get(index: Index) -> None:
    assert await index.get("1.2.1.1.7") is None
    assert await index.put(make_record(7), policy="reject") is PutResult.INSERTED
    assert await index.get("1.2.1.1.7") == StoredInstance(
        sop_instance_uid="1.2.1.1.7",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        relpath=f"objects/07/{7:064x}.dcm",
        size=1007,
        sha256=f"{7:064x}",
        study_instance_uid="1.2.1",
        series_instance_uid="1.2.1.1",
    )
    assert await index.counts() == {"patients": 1, "studies": 1, "series": 1, "instances": 1}


async def test_all_record_fields_are_stored(index: Index, db_path: Path) -> None:
    record = make_record(
        3,
        rows=512,
        columns=256,
        number_of_frames=2,
        patient_name="Müller^Jürgen",
        request_attributes="RP1^SPS1",
        attributes=b"\x10\x00\x10\x00PN\x04\x00Ab^C",
        specific_character_set="ISO_IR 192",
    )
    await index.put(record, policy="replace")
    with oracle(db_path) as conn:
        row = conn.execute(
            "SELECT * FROM instance JOIN series ON series.pk = instance.series_pk"
            " JOIN study ON study.pk = series.study_pk JOIN patient ON patient.pk = study.patient_pk"
        )
        names = [d[0] for d in row.description]
        stored = dict(zip(names, row.fetchone(), strict=True))
    for f in dataclasses.fields(InstanceRecord):
        assert stored[f.name] == getattr(record, f.name), f.name


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("replace", PutResult.REPLACED), ("keep", PutResult.KEPT), ("reject", PutResult.REJECTED)],
)
async def test_policies_for_an_existing_instance(
    index: Index, db_path: Path, policy: Any, expected: PutResult
) -> None:
    await index.put(make_record(1), policy="replace")
    newer = make_record(1, relpath="objects/new.dcm", size=5, study_description="CT HEAD NEW")
    assert await index.put(newer, policy=policy) is expected
    stored = await index.get("1.2.1.1.1")
    assert stored is not None
    with oracle(db_path) as conn:
        assert scalar(conn, "SELECT count(*) FROM instance") == 1
        description = scalar(conn, "SELECT study_description FROM study")
    if policy == "replace":
        assert (stored.relpath, stored.size) == ("objects/new.dcm", 5)
        assert description == "CT HEAD NEW"
    else:  # untouched, parents included
        assert (stored.relpath, stored.size) == (make_record(1).relpath, 1001)
        assert description == "CT HEAD"


async def test_an_unknown_policy_is_refused(index: Index) -> None:
    with pytest.raises(ValueError, match="policy"):
        await index.put(make_record(1), policy="overwrite")  # type: ignore[arg-type]


async def test_the_same_instance_twice_in_one_batch(index: Index, db_path: Path) -> None:
    first, second = make_record(1), make_record(1, relpath="objects/second.dcm")
    results = await in_one_batch(
        index, index.put(first, policy="keep"), index.put(second, policy="keep")
    )
    assert results == [PutResult.INSERTED, PutResult.KEPT]
    results = await in_one_batch(
        index, index.put(first, policy="replace"), index.put(second, policy="replace")
    )
    assert results == [PutResult.REPLACED, PutResult.REPLACED]
    stored = await index.get("1.2.1.1.1")
    assert stored is not None and stored.relpath == "objects/second.dcm"  # the later one wins
    assert table_counts(db_path) == (1, 1, 1, 1)


async def test_higher_levels_refresh_from_the_newest_instance(index: Index, db_path: Path) -> None:
    await index.put(make_record(1, patient_birth_date="19700101"), policy="replace")
    await index.put(
        make_record(2, study_description="CT HEAD W/O", patient_name="Doe^Jane^M"),
        policy="replace",
    )
    # A newer instance without these attributes does not erase them.
    await index.put(
        make_record(3, study_description="", series_number=None, patient_name=""),
        policy="replace",
    )
    with oracle(db_path) as conn:
        assert scalar(conn, "SELECT study_description FROM study") == "CT HEAD W/O"
        assert scalar(conn, "SELECT patient_name FROM patient") == "Doe^Jane^M"
        assert scalar(conn, "SELECT patient_birth_date FROM patient") == "19700101"
        assert scalar(conn, "SELECT series_number FROM series") == 1


async def test_within_a_batch_the_last_nonempty_value_wins(index: Index, db_path: Path) -> None:
    await in_one_batch(
        index,
        index.put(make_record(1, study_description="FIRST", study_id="S1"), policy="replace"),
        index.put(make_record(2, study_description="SECOND", study_id=""), policy="replace"),
        index.put(make_record(3, study_description="", study_id=""), policy="replace"),
    )
    with oracle(db_path) as conn:
        assert conn.execute("SELECT study_description, study_id FROM study").fetchall() == [
            ("SECOND", "S1")
        ]


# --- moving and deleting -------------------------------------------------------------------------


async def test_replacing_into_another_series_cleans_empty_parents(
    index: Index, db_path: Path
) -> None:
    await index.put(make_record(1), policy="replace")
    await index.put(make_record(2), policy="replace")
    moved = make_record(
        1, patient_id="P2", study_instance_uid="1.2.2", series_instance_uid="1.2.2.1"
    )
    assert await index.put(moved, policy="replace") is PutResult.REPLACED
    # Instance 2 still holds the old series, study and patient.
    assert table_counts(db_path) == (2, 2, 2, 2)
    stored = await index.get("1.2.1.1.1")
    assert stored is not None and stored.series_instance_uid == "1.2.2.1"
    moved_back = make_record(
        2, patient_id="P2", study_instance_uid="1.2.2", series_instance_uid="1.2.2.1"
    )
    await index.put(moved_back, policy="replace")
    assert table_counts(db_path) == (1, 1, 1, 2)
    with oracle(db_path) as conn:
        assert scalar(conn, "SELECT patient_id FROM patient") == "P2"
        assert scalar(conn, "SELECT series_instance_uid FROM series") == "1.2.2.1"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


async def test_a_series_moved_to_another_study_leaves_no_empty_study(
    index: Index, db_path: Path
) -> None:
    await index.put(make_record(1), policy="replace")
    # A newer instance of the same series says it belongs to another study (and patient).
    await index.put(make_record(2, study_instance_uid="1.2.9", patient_id="P9"), policy="replace")
    assert table_counts(db_path) == (1, 1, 1, 2)
    with oracle(db_path) as conn:
        assert scalar(conn, "SELECT study_instance_uid FROM study") == "1.2.9"
        assert scalar(conn, "SELECT patient_id FROM patient") == "P9"


async def in_one_batch(index: Index, *calls: Awaitable[T]) -> list[T]:
    """Run the calls with the commit lock held until all of them are queued: what happens when
    they arrive while another transaction commits. They then share one transaction."""
    with index._commit_lock:
        tasks = [asyncio.ensure_future(call) for call in calls]
        await asyncio.sleep(0)  # each task runs to its first await: its operation is queued
        assert len(index._queue) == len(calls)
    return list(await asyncio.gather(*tasks))


async def test_conflicting_parents_inside_one_batch_leave_nothing_empty(
    index: Index, db_path: Path
) -> None:
    await in_one_batch(
        index,
        index.put(make_record(1, study_instance_uid="1.2.7", patient_id="P7"), policy="replace"),
        index.put(make_record(2, study_instance_uid="1.2.8", patient_id="P8"), policy="replace"),
    )
    assert index.stats.transactions == 1
    assert table_counts(db_path) == (1, 1, 1, 2)
    with oracle(db_path) as conn:
        assert scalar(conn, "SELECT study_instance_uid FROM study") == "1.2.8"


async def test_delete_removes_empty_parents_only(index: Index, db_path: Path) -> None:
    await index.put(make_record(1), policy="replace")
    await index.put(make_record(2), policy="replace")
    await index.put(make_record(3, series_instance_uid="1.2.1.2"), policy="replace")
    await index.delete("1.2.1.1.1")
    assert table_counts(db_path) == (1, 1, 2, 2)
    await index.delete("1.2.1.1.3")
    assert table_counts(db_path) == (1, 1, 1, 1)
    await index.delete("1.2.1.1.2")
    assert table_counts(db_path) == (0, 0, 0, 0)
    await index.delete("9.9.9")  # unknown: nothing to do
    assert await index.get("1.2.1.1.2") is None


async def test_concurrent_deletes_share_a_transaction(index: Index, db_path: Path) -> None:
    await asyncio.gather(*(index.put(make_record(n), policy="replace") for n in range(20)))
    before = index.stats.transactions
    await in_one_batch(index, *(index.delete(f"1.2.1.1.{n}") for n in range(20)))
    assert index.stats.transactions - before == 1
    assert table_counts(db_path) == (0, 0, 0, 0)


# --- group commit --------------------------------------------------------------------------------


async def test_concurrent_puts_share_transactions_and_return_after_commit(
    index: Index, db_path: Path
) -> None:
    before = index.stats.transactions
    with oracle(db_path) as conn:

        async def put_and_check(n: int) -> PutResult:
            result = await index.put(make_record(n), policy="replace")
            # put() has returned: the row must be visible to another connection, i.e. committed.
            uid = f"1.2.1.1.{n}"
            assert (
                scalar(conn, "SELECT count(*) FROM instance WHERE sop_instance_uid = ?", uid) == 1
            )
            return result

        results = await asyncio.gather(*(put_and_check(n) for n in range(200)))
    assert results == [PutResult.INSERTED] * 200
    transactions = index.stats.transactions - before
    assert 1 <= transactions <= 10, transactions
    assert index.stats.records == 200
    assert table_counts(db_path) == (1, 1, 1, 200)


async def test_a_batch_is_limited(index: Index, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "BATCH_LIMIT", 16)
    await asyncio.gather(*(index.put(make_record(n), policy="replace") for n in range(64)))
    assert index.stats.transactions >= 4


async def test_a_poison_record_fails_alone(index: Index, db_path: Path) -> None:
    poison = make_record(5, size=2**70)  # does not fit an SQLite integer
    results = await asyncio.gather(
        *(index.put(make_record(n) if n != 5 else poison, policy="replace") for n in range(10)),
        return_exceptions=True,
    )
    assert isinstance(results[5], OverflowError)
    assert [r for i, r in enumerate(results) if i != 5] == [PutResult.INSERTED] * 9
    assert table_counts(db_path) == (1, 1, 1, 9)


# --- locking and availability --------------------------------------------------------------------


async def test_locked_database_fails_the_batch_and_the_writer_survives(db_path: Path) -> None:
    idx = await Index.open(db_path, busy_timeout=0.2)
    try:
        await idx.put(make_record(0), policy="replace")
        with oracle(db_path) as locker:
            locker.execute("BEGIN EXCLUSIVE")
            results = await asyncio.gather(
                *(idx.put(make_record(n), policy="replace") for n in range(1, 6)),
                return_exceptions=True,
            )
            assert all(isinstance(r, IndexUnavailable) for r in results), results
            assert "locked" in str(results[0])
            # Reads go through the other connection and still work.
            assert await idx.get("1.2.1.1.0") is not None
            locker.execute("ROLLBACK")
        assert table_counts(db_path) == (1, 1, 1, 1)  # nothing of the failed batch committed
        assert idx.stats.failed_transactions >= 1
        assert await idx.put(make_record(1), policy="replace") is PutResult.INSERTED
    finally:
        await idx.close()


async def test_reads_do_not_wait_behind_a_blocked_write(db_path: Path) -> None:
    idx = await Index.open(db_path, busy_timeout=30)
    try:
        await idx.put(make_record(0), policy="replace")
        with oracle(db_path) as locker:
            locker.execute("BEGIN EXCLUSIVE")
            pending = asyncio.create_task(idx.put(make_record(1), policy="replace"))
            for _ in range(10):
                await asyncio.sleep(0)  # let the writer reach its BEGIN IMMEDIATE
            async with asyncio.timeout(5):
                assert await idx.get("1.2.1.1.0") is not None
                assert (await idx.counts())["instances"] == 1
            assert not pending.done()
            locker.execute("COMMIT")
        assert await pending is PutResult.INSERTED
    finally:
        await idx.close()


async def test_integrity_check(index: Index) -> None:
    await index.put(make_record(1), policy="replace")
    assert await index.integrity_check() == "ok"


# --- iteration and closing -----------------------------------------------------------------------


async def test_iter_instances_streams_page_by_page(
    index: Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_module, "ITER_PAGE", 10)
    await asyncio.gather(*(index.put(make_record(n), policy="replace") for n in range(25)))
    seen: list[str] = []
    async for item in index.iter_instances():
        if not seen:
            # Committed after the iteration began: a fetch-everything-first iteration misses it.
            await index.put(make_record(99), policy="replace")
        seen.append(item.sop_instance_uid)
    assert seen == [f"1.2.1.1.{n}" for n in [*range(25), 99]]


async def test_iter_instances_can_stop_early(index: Index) -> None:
    await asyncio.gather(*(index.put(make_record(n), policy="replace") for n in range(5)))
    iterator = index.iter_instances()
    first = await anext(iterator)
    await iterator.aclose()  # type: ignore[attr-defined]
    assert isinstance(first, StoredInstance)
    assert (await index.counts())["instances"] == 5


async def test_close_drains_pending_puts(db_path: Path) -> None:
    idx = await Index.open(db_path)
    tasks = [asyncio.create_task(idx.put(make_record(n), policy="replace")) for n in range(30)]
    await asyncio.sleep(0)  # the tasks enqueue; none has been written yet
    await idx.close()
    # Every put was committed by the time close() returned; the tasks resume after it.
    assert table_counts(db_path) == (1, 1, 1, 30)
    assert await asyncio.gather(*tasks) == [PutResult.INSERTED] * 30
    with pytest.raises(IndexUnavailable):
        await idx.put(make_record(31), policy="replace")
    await idx.close()  # idempotent


async def test_a_cancelled_put_is_still_written(index: Index, db_path: Path) -> None:
    task = asyncio.create_task(index.put(make_record(1), policy="replace"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The writer still writes it (its file is installed); a later put sees it.
    assert await index.put(make_record(2), policy="replace") is PutResult.INSERTED
    assert table_counts(db_path) == (1, 1, 1, 2)


async def test_parent_rows_are_rewritten_after_a_move_emptied_them(tmp_path: Path) -> None:
    """The writer skips unchanged parent rows; a parent deleted by a move must come back."""
    index = await Index.open(tmp_path / "i.sqlite")
    try:
        a = make_record(1, sop_instance_uid="1.1", series_instance_uid="9.1")
        await index.put(a, policy="replace")
        # Move the only instance of series 9.1 to 9.2: series 9.1 is deleted as empty.
        await index.put(
            make_record(1, sop_instance_uid="1.1", series_instance_uid="9.2"), policy="replace"
        )
        # A new instance of series 9.1, with the very row written the first time.
        await index.put(
            make_record(1, sop_instance_uid="1.2", series_instance_uid="9.1"), policy="keep"
        )
        got = await index.get("1.2")
        assert got is not None and got.series_instance_uid == "9.1"
        assert (await index.counts())["series"] == 2
    finally:
        await index.close()
