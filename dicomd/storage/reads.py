"""Long reads of the index (C-FIND): a small pool of read-only connections, rows fetched page by page.

Owns: the connections a query runs on, the SQL functions registered on them, and stopping a query
that runs too long for its caller (a C-CANCEL, an aborted association).
Must not know: DICOM, what the SQL means (the query package builds it), the network.

Why a pool: aiosqlite runs every call of a connection on one thread, in order, so a C-FIND that holds
the index's single reader while it streams thousands of responses would make every other read wait
behind it. Each query here takes a connection of its own for its lifetime, up to `size` at once (a
further query waits for one to be free); the index's own reader (store, repair) is never among them.

Why a cursor rather than keyset pagination: one statement, stepped `fetch(n)` rows at a time, streams
in whatever order the query planner found cheapest (the StudyDate index for a date range, the
PatientName index for a prefix) without sorting; keyset pagination needs an ORDER BY a unique key,
which turns a range scan into a sort of the whole range for every page. The cost: the statement keeps
one read transaction open (a consistent snapshot, which is a feature; a WAL checkpoint cannot pass it
until it ends), so the caller must not keep a query open indefinitely: `query()` is a context
manager, and its exit resets the statement whatever happens.

Stopping: a page can take long to fill (a wildcard over a million rows that match rarely). While a
fetch runs, `should_stop()` is polled every POLL_INTERVAL seconds; when it turns true, or when the
calling task is cancelled, the connection is interrupted (sqlite3_interrupt, which is thread safe),
the statement fails at its next step, and `fetch()` raises QueryStopped (or the cancellation).

Read-ahead: `fetch(n, then=m)` starts reading the next m rows on the connection's thread as soon as
it returns, so that the statement advances while the caller turns the page into responses; at most
one page is read ahead, and a query closed with a page still being read interrupts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import aiosqlite

__all__ = ["POLL_INTERVAL", "QueryStopped", "ReadPool", "Rows"]

POLL_INTERVAL: Final = 0.02  # seconds between checks of should_stop() while a fetch runs
_T = TypeVar("_T")
SqlFunction = Callable[..., Any]


class QueryStopped(Exception):
    """The query was interrupted because its caller asked to stop."""


class Rows:
    """The rows of one running query; fetch() pages through them."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self._conn = conn
        self._should_stop = should_stop
        self._cursor: aiosqlite.Cursor | None = None
        self._done = False
        self._pending: asyncio.Future[Iterable[sqlite3.Row]] | None = None
        self._pending_size = 0
        self.interrupted = False

    async def _start(self, sql: str, params: Sequence[Any]) -> None:
        # sqlite3's execute() steps the statement to its first row, which can be the long part.
        self._cursor = await self._guarded(self._conn.execute(sql, params))

    async def fetch(self, n: int, *, then: int = 0) -> list[tuple[Any, ...]]:
        """Up to n more rows (tuples); an empty list once the query has no more.

        With `then`, the next `then` rows are fetched on the connection's thread while the caller
        works on these (SQLite steps the statement without holding the GIL, so the next page is
        read while this one is encoded); the next fetch() returns that page, whatever its n.
        """
        if self._done or self._cursor is None:
            return []
        pending, self._pending = self._pending, None
        if pending is not None:
            n = self._pending_size
            page = await self._guarded(pending)
        else:
            page = await self._guarded(self._cursor.fetchmany(n))
        rows: list[tuple[Any, ...]] = list(page)  # type: ignore[arg-type]  # no row factory: tuples
        if len(rows) < n:
            self._done = True
        elif then > 0:
            self._pending_size = then
            self._pending = asyncio.ensure_future(self._cursor.fetchmany(then))
        return rows

    async def _close(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            # A page being read in the background (the caller stopped early: C-CANCEL, a match
            # limit): interrupt it if it still runs, so that closing does not wait for a long scan.
            if not pending.done():
                await self._interrupt()
            await asyncio.wait({pending})
            if not pending.cancelled():
                pending.exception()  # retrieved: an interrupted page is not an error here
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            # Resets the statement: its read transaction ends and the connection is reusable.
            with contextlib.suppress(sqlite3.Error, ValueError):
                await cursor.close()

    async def _guarded(self, op: Awaitable[_T]) -> _T:
        task = asyncio.ensure_future(op)
        try:
            while True:
                done, _ = await asyncio.wait(
                    {task}, timeout=POLL_INTERVAL if self._should_stop is not None else None
                )
                if done:
                    break
                if self._should_stop is not None and self._should_stop():
                    await self._interrupt()
                    await asyncio.wait({task})
                    break
        except asyncio.CancelledError:
            # The caller is going away (abort, shutdown): free the connection's thread now rather
            # than after the statement finishes on its own.
            if not task.done():
                await self._interrupt()
            await asyncio.wait({task})
            # The thread may have finished execute() before the interrupt landed, its cursor (an
            # active statement, which keeps SQLite's interrupt flag set) not yet delivered to us:
            # adopt it, so that _close() resets it and the connection goes back clean.
            if not task.cancelled() and task.exception() is None:
                result = task.result()
                if isinstance(result, aiosqlite.Cursor) and self._cursor is None:
                    self._cursor = result
            raise
        try:
            return task.result()
        except sqlite3.OperationalError as exc:
            if self._should_stop is not None and self._should_stop():
                self._done = True
                raise QueryStopped(str(exc)) from exc
            raise

    async def _interrupt(self) -> None:
        # aiosqlite's interrupt() calls sqlite3_interrupt at once, not through the busy thread.
        self.interrupted = True
        with contextlib.suppress(ValueError, sqlite3.Error):  # closed meanwhile
            await self._conn.interrupt()


async def _usable(conn: aiosqlite.Connection) -> bool:
    """After an interrupt: whether the connection runs statements again (SQLite clears its
    interrupt flag once no statement is active; one we failed to reset would keep it set)."""
    try:
        await conn.execute_fetchall("SELECT 1")
    except (sqlite3.Error, ValueError):
        return False
    return True


class ReadPool:
    """Up to `size` read-only connections to the index at `path`, opened when first needed."""

    def __init__(self, path: Path, *, size: int = 4, busy_timeout: float = 5.0) -> None:
        if size < 1:
            raise ValueError("a read pool needs at least one connection")
        self._path = path
        self._busy_timeout = busy_timeout
        self._slots = asyncio.Semaphore(size)
        self._idle: list[aiosqlite.Connection] = []
        self._functions: dict[str, tuple[int, SqlFunction]] = {}
        self._registered: dict[int, set[str]] = {}
        self._closed = False

    def add_function(self, name: str, nargs: int, fn: SqlFunction) -> None:
        """Make the SQL function `name` available to every query (registered on each connection).

        `fn` runs on a connection's thread for each row it is applied to; an exception in it fails
        the query, so it should be total.
        """
        self._functions[name] = (nargs, fn)

    @contextlib.asynccontextmanager
    async def query(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        should_stop: Callable[[], bool] | None = None,
        text_as_bytes: bool = False,
    ) -> AsyncIterator[Rows]:
        """Run `sql` on a connection of the pool; the connection is held until the block exits.

        With `text_as_bytes`, TEXT values come as their UTF-8 bytes (sqlite3's text_factory),
        for a caller that would only encode them again.
        """
        async with self._slots:
            conn = await self._acquire()
            # Read when sqlite3 builds each row; the connection is ours alone until we give it back.
            conn.text_factory = bytes if text_as_bytes else str
            rows = Rows(conn, should_stop)
            try:
                await rows._start(sql, params)
                yield rows
            finally:
                await rows._close()
                if self._closed or (rows.interrupted and not await _usable(conn)):
                    with contextlib.suppress(Exception):
                        await conn.close()
                else:
                    self._idle.append(conn)

    async def _acquire(self) -> aiosqlite.Connection:
        if self._closed:
            raise sqlite3.ProgrammingError("the index is closed")
        if self._idle:
            conn = self._idle.pop()
        else:
            conn = await aiosqlite.connect(
                self._path, isolation_level=None, timeout=self._busy_timeout
            )
            try:
                await conn.execute(f"PRAGMA busy_timeout = {round(self._busy_timeout * 1000)}")
                await conn.execute("PRAGMA query_only = ON")
            except BaseException:
                await conn.close()
                raise
        registered = self._registered.setdefault(id(conn), set())
        for name, (nargs, fn) in self._functions.items():
            if name not in registered:
                await conn.create_function(name, nargs, fn, deterministic=True)
                registered.add(name)
        return conn

    async def close(self) -> None:
        """Close the idle connections; a query still running closes its own when it ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()
