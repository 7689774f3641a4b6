"""C-MOVE sub-operations in mover processes: the Mover the server uses when
retrieve.move_processes > 0.

Why processes: a move's sub-operations are the heaviest work dicomd's event loop does (reading
each stored file and writing it to the destination, reading each C-STORE-RSP), and one event loop
runs on one core. On the server's own loop, two moves at once took as long as one after the other,
and every other association waited behind them. In mover processes, moves run on as many cores as
there are processes, and the server's loop only relays their counts as Pending responses.

The server still owns the C-MOVE: it resolves the identifier to the instances (the index is its
own), decides the destination, sends every response and takes the C-CANCEL. A mover gets the job
(destination, targets in order, originator) over a socketpair (mover_wire.py) and sends back the
counts at most every pending_interval, and at the end. Processes start when a move first needs one
(a server that never moves never has them) and stay until shutdown; a move goes to the least busy,
and a new process starts while every one has a move and fewer than the limit run. A process that
dies ends its moves: what it reported stands, the rest fails (MoverLost), and the next move starts
a new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
import subprocess
import sys
from collections import deque
from contextlib import suppress
from operator import attrgetter
from typing import Any

import structlog

from dicomd.config import Config
from dicomd.net import mover_wire as wire
from dicomd.services.suboperations import Cancel, Counts, MoveJob, MoverLost, Report, Target

log = structlog.get_logger("dicomd.movers")

# Pending responses held for a move whose originator reads them slowly (see _Job).
PENDING_BACKLOG = 64

# A Target as the tuple of its fields in declaration order, which the mover process turns back
# into Target(*fields): plain tuples pickle smaller and faster than dataclass instances.
_target_fields = attrgetter(*(f.name for f in dataclasses.fields(Target)))

# How long close() waits for a mover process to end after its link closed, before killing it.
EXIT_TIMEOUT = 10.0


class _Job:
    """A move under way in a mover process, as the server sees it."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts  # as of the last frame: what MoverLost leaves standing
        # Counts to relay as Pending responses, in order; past PENDING_BACKLOG (the originator
        # does not read its responses as fast as sub-operations end) the newest replaces the
        # last, which Pending responses being optional allows.
        self.pending: deque[Counts] = deque()
        self.changed = asyncio.Event()  # something to relay, or the end
        self.done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.done.add_done_callback(_retrieved)

    def update(self, message: tuple[Any, ...]) -> None:
        remaining, completed, failed, warning, failed_uids = message[2:7]
        c = self.counts
        c.remaining, c.completed, c.failed, c.warning = remaining, completed, failed, warning
        c.failed_uids.extend(failed_uids)
        if message[0] == "done":
            self.done.set_result(message[7])
        else:
            snapshot = Counts(remaining, completed, failed, warning)
            if len(self.pending) < PENDING_BACKLOG:
                self.pending.append(snapshot)
            else:
                self.pending[-1] = snapshot
        self.changed.set()


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a job whose caller has gone is not an unhandled error


class _MoverProcess:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.process = process
        self.jobs: dict[int, _Job] = {}
        self.alive = True
        self._writer = writer
        self._ids = itertools.count(1)
        self._reading = asyncio.create_task(self._read(reader))

    @classmethod
    async def start(cls, config: Config) -> _MoverProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with theirs:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "dicomd.net.mover_process",
                    str(theirs.fileno()),
                    "uvloop" if config.server.uvloop else "asyncio",
                    pass_fds=(theirs.fileno(),),
                    stdin=subprocess.DEVNULL,
                )
            reader, writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            raise
        writer.write(wire.frame(("config", config)))
        log.info("mover_process_starting", pid=process.pid)
        return cls(process, reader, writer)

    async def move(
        self, job: MoveJob, counts: Counts, report: Report, cancel: Cancel
    ) -> str | None:
        job_id = next(self._ids)
        state = _Job(counts)
        self.jobs[job_id] = state
        try:
            header = (job.destination, job.originator, job.pending_interval, len(job.targets))
            await self._send(("move", job_id, *header, structlog.contextvars.get_contextvars()))
            for start in range(0, len(job.targets), wire.TARGETS_PER_FRAME):
                chunk = job.targets[start : start + wire.TARGETS_PER_FRAME]
                await self._send(("targets", job_id, [_target_fields(t) for t in chunk]))
            return await self._follow(job_id, state, report, cancel)
        except BaseException:
            if not state.done.done() and self.alive:
                # This move's caller is gone (its association ended, or shutdown): the mover
                # stops it now rather than send to a destination for nobody.
                self._writer.write(wire.frame(("abort", job_id)))
            raise
        finally:
            del self.jobs[job_id]

    async def _follow(self, job_id: int, state: _Job, report: Report, cancel: Cancel) -> str | None:
        """Relay the job's counts as they come, and a C-CANCEL the other way, until it ends."""
        cancelled: asyncio.Future[None] | None = asyncio.ensure_future(cancel.wait_cancel())
        try:
            while True:
                while state.pending:
                    await report(state.pending.popleft())
                if state.done.done():
                    return state.done.result()
                state.changed.clear()
                changed = asyncio.ensure_future(state.changed.wait())
                waits: set[asyncio.Future[Any]] = {state.done, changed}
                if cancelled is not None:
                    waits.add(cancelled)
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                if cancelled is not None and cancelled.done():
                    cancelled = None
                    await self._send(("cancel", job_id))
        finally:
            if cancelled is not None:
                cancelled.cancel()

    async def _send(self, message: tuple[Any, ...]) -> None:
        if not self.alive:
            raise MoverLost(f"mover process {self.process.pid} has ended")
        try:
            self._writer.write(wire.frame(message))
            await self._writer.drain()
        except (ConnectionError, OSError) as e:
            raise MoverLost(f"mover process {self.process.pid}: {e}") from e

    async def _read(self, reader: asyncio.StreamReader) -> None:
        error = "its link closed"
        try:
            while (message := await wire.read(reader)) is not None:
                job = self.jobs.get(message[1])
                if job is not None and not job.done.done():  # else its caller has gone
                    job.update(message)
        except (wire.WireError, ConnectionError, OSError) as e:
            error = str(e)
        finally:
            self.alive = False
            lost = [job for job in self.jobs.values() if not job.done.done()]
            for job in lost:
                job.done.set_exception(
                    MoverLost(f"mover process {self.process.pid} ended: {error}")
                )
            self._writer.close()
        returncode = await self.process.wait()
        if lost or returncode != 0:
            log.error(
                "mover_process_exited",
                pid=self.process.pid,
                returncode=returncode,
                moves_lost=len(lost),
            )

    async def close(self) -> None:
        """Close the link (the process aborts what it still has and exits); kill it if it has
        not exited within EXIT_TIMEOUT."""
        self._writer.close()
        try:
            async with asyncio.timeout(EXIT_TIMEOUT):
                await asyncio.shield(self._reading)
        except TimeoutError:
            log.error("mover_process_killed", pid=self.process.pid, waited_s=EXIT_TIMEOUT)
            with suppress(ProcessLookupError):
                self.process.kill()
            await self._reading


class MoverPool:
    """The Mover of a server with move processes: up to `size` of them."""

    def __init__(self, config: Config, size: int) -> None:
        self._config = config
        self._size = size
        self._processes: list[_MoverProcess] = []
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The live mover processes."""
        return [p.process.pid for p in self._processes if p.alive]

    async def move(
        self, job: MoveJob, counts: Counts, report: Report, cancel: Cancel
    ) -> str | None:
        mover = await self._choose()
        return await mover.move(job, counts, report, cancel)

    async def _choose(self) -> _MoverProcess:
        async with self._lock:  # one start at a time: two moves at once get two processes
            if self._closed:
                raise MoverLost("the server is shutting down")
            self._processes = [p for p in self._processes if p.alive]
            least = min(self._processes, key=lambda p: len(p.jobs), default=None)
            if least is not None and (not least.jobs or len(self._processes) >= self._size):
                return least
            try:
                started = await _MoverProcess.start(self._config)
            except OSError as e:
                if least is not None:
                    return least
                raise MoverLost(f"cannot start a mover process: {e}") from e
            self._processes.append(started)
            return started

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            processes, self._processes = self._processes, []
        await asyncio.gather(*(p.close() for p in processes))
