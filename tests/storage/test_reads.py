"""The read pool behind C-FIND: paging, a connection per query, interruption by should_stop and by
cancellation, reads of the index not blocked by open queries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dicomd.storage.index import QUERY_CONNECTIONS, Index
from dicomd.storage.reads import QueryStopped
from tests.query.data import load, standard_instances

# A statement that runs for minutes unless interrupted.
ENDLESS = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
    "SELECT x FROM c WHERE x < 0 LIMIT 1"
)


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[Index]:
    idx = await Index.open(tmp_path / "index.sqlite")
    await load(idx, standard_instances())
    try:
        yield idx
    finally:
        await idx.close()


async def test_pages(index: Index) -> None:
    async with index.query("SELECT sop_instance_uid FROM instance ORDER BY pk") as rows:
        first = await rows.fetch(4)
        second = await rows.fetch(4)
        rest = await rows.fetch(100)
        assert await rows.fetch(100) == []
    assert [len(first), len(second), len(rest)] == [4, 4, 3]
    assert len({r[0] for r in first + second + rest}) == 11


async def test_parameters_and_functions(index: Index) -> None:
    index.add_sql_function("twice", 1, lambda x: x * 2)
    async with index.query("SELECT twice(count(*)) FROM instance WHERE pk > ?", (5,)) as rows:
        assert await rows.fetch(1) == [(12,)]


async def test_should_stop_interrupts_a_long_fetch(index: Index) -> None:
    stop = False
    started = time.perf_counter()

    async def later() -> None:
        nonlocal stop
        await asyncio.sleep(0.2)
        stop = True

    task = asyncio.create_task(later())
    with pytest.raises(QueryStopped):
        async with index.query(ENDLESS, should_stop=lambda: stop) as rows:
            await rows.fetch(1)
    await task
    assert time.perf_counter() - started < 3.0
    # The connection went back to the pool in a usable state.
    async with index.query("SELECT count(*) FROM patient") as rows:
        assert await rows.fetch(1) == [(4,)]


async def test_cancellation_interrupts_and_frees_the_connection(index: Index) -> None:
    async def run() -> None:
        async with index.query(ENDLESS) as rows:
            await rows.fetch(1)

    task = asyncio.create_task(run())
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - started < 3.0
    for _ in range(QUERY_CONNECTIONS + 1):  # every connection is back and usable
        async with index.query("SELECT 1") as rows:
            assert await rows.fetch(1) == [(1,)]


async def test_open_queries_do_not_block_other_reads_or_writes(index: Index) -> None:
    from tests.query.data import instance, record_of

    async with (
        index.query("SELECT pk FROM instance") as a,
        index.query("SELECT pk FROM study") as b,
    ):
        assert await a.fetch(1) and await b.fetch(1)
        async with asyncio.timeout(5):
            assert await index.get("1.2.9.1.1.1") is not None
            ds = instance(
                PatientID="NEW",
                StudyInstanceUID="9.9",
                SeriesInstanceUID="9.9.1",
                SOPInstanceUID="9.9.1.1",
                SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
            )
            await index.put(record_of(ds), policy="keep")
        # The open statement is a snapshot: it does not see the new row.
        rest = await a.fetch(100)
        assert len(rest) == 10
    async with index.query("SELECT count(*) FROM instance") as rows:
        assert await rows.fetch(1) == [(12,)]


async def test_more_queries_than_connections_wait_their_turn(index: Index) -> None:
    entered = 0
    release = asyncio.Event()

    async def hold() -> None:
        nonlocal entered
        async with index.query("SELECT 1") as rows:
            await rows.fetch(1)
            entered += 1
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(QUERY_CONNECTIONS + 2)]
    await asyncio.sleep(0.3)
    assert entered == QUERY_CONNECTIONS
    release.set()
    await asyncio.gather(*tasks)
    assert entered == QUERY_CONNECTIONS + 2


async def test_read_only(index: Index) -> None:
    import sqlite3

    with pytest.raises(sqlite3.OperationalError):
        async with index.query("DELETE FROM patient") as rows:
            await rows.fetch(1)


async def test_read_ahead_pages(index: Index) -> None:
    """fetch(n, then=m): the next m rows are read in the background; the pages are unchanged."""
    async with index.query("SELECT sop_instance_uid FROM instance ORDER BY pk") as rows:
        first = await rows.fetch(2, then=4)
        second = await rows.fetch(100, then=4)  # the page read ahead: 4 rows, not 100
        third = await rows.fetch(4, then=4)
        last = await rows.fetch(4, then=4)
        assert await rows.fetch(4, then=4) == []
    pages = first + second + third + last
    assert [len(first), len(second), len(third), len(last)] == [2, 4, 4, 1]
    async with index.query("SELECT sop_instance_uid FROM instance ORDER BY pk") as rows:
        everything = await rows.fetch(100)
    assert pages == everything


async def test_closing_with_a_page_read_ahead_interrupts_it(index: Index) -> None:
    """A caller that stops early (C-CANCEL, a match limit) does not wait for a long read-ahead."""
    started = time.perf_counter()
    sql = "SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT * FROM (" + ENDLESS + ")"
    async with index.query(sql) as rows:
        assert await rows.fetch(1, then=1) == [(1,)]
        await asyncio.sleep(0.1)  # the read-ahead is now scanning
    assert time.perf_counter() - started < 3.0
    async with index.query("SELECT count(*) FROM patient") as rows:
        assert await rows.fetch(1) == [(4,)]


async def test_should_stop_interrupts_a_page_read_ahead(index: Index) -> None:
    stop = False
    sql = "SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT * FROM (" + ENDLESS + ")"
    with pytest.raises(QueryStopped):
        async with index.query(sql, should_stop=lambda: stop) as rows:
            assert await rows.fetch(1, then=1) == [(1,)]
            stop = True
            await rows.fetch(1)
    async with index.query("SELECT count(*) FROM patient") as rows:
        assert await rows.fetch(1) == [(4,)]
