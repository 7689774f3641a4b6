"""A mover process: runs C-MOVE sub-operations for the server that started it (mover_pool.py).

`python -m dicomd.net.mover_process FD`, FD being its end of a socketpair (mover_wire.py). It
reads the server's configuration, then runs each move it is given with the same LocalMover the
server uses in-process: outbound associations to the destination (outbound.py), the stored
files read and sent as they are. It logs like the server, with the moving association's context.

It ignores SIGTERM and SIGINT: a service manager that signals every process of the service, or a
Ctrl-C in a terminal, stops the server, whose shutdown ends its moves first. It ends when the link
closes, whether the server closed it or died, aborting the moves it still has.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from functools import partial
from typing import Any

import structlog

from dicomd import log as logsetup
from dicomd.config import Config, RemoteAE
from dicomd.net import mover_wire as wire
from dicomd.net.outbound import open_outbound
from dicomd.services.suboperations import Counts, LocalMover, MoveJob, Target
from dicomd.storage.files import stored_path

log = structlog.get_logger("dicomd.mover")


class _JobCancel:
    """A move's C-CANCEL, as the server relays it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    @property
    def cancel_requested(self) -> bool:
        return self.event.is_set()

    async def wait_cancel(self) -> None:
        await self.event.wait()


class _Link:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def send(self, message: tuple[Any, ...]) -> None:
        self._writer.write(wire.frame(message))
        await self._writer.drain()


async def _run_job(
    link: _Link,
    mover: LocalMover,
    job_id: int,
    job: MoveJob,
    cancel: _JobCancel,
    log_context: dict[str, Any],
) -> None:
    structlog.contextvars.bind_contextvars(**log_context)  # this task's context only
    counts = Counts(remaining=len(job.targets))
    reported = 0  # failed UIDs the server has

    def message(kind: str, *extra: Any) -> tuple[Any, ...]:
        nonlocal reported
        failed_uids = counts.failed_uids[reported:]
        reported = len(counts.failed_uids)
        c = counts
        return (kind, job_id, c.remaining, c.completed, c.failed, c.warning, failed_uids, *extra)

    async def report(_counts: Counts) -> None:
        await link.send(message("counts"))

    try:
        comment = await mover.move(job, counts, report, cancel)
    except Exception as e:  # a bug, not a destination's failure (those are counted): say so
        log.exception("mover_job_failed")
        counts.fail_unfinished(job.targets)
        comment = f"mover failed: {e}"[:64]
    await link.send(message("done", comment))


def _forget(running: dict[int, Any], job_id: int, _task: asyncio.Task[None]) -> None:
    running.pop(job_id, None)


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, config: Config) -> None:
    """Run the moves the server sends until it closes the link."""
    link = _Link(writer)
    # This loop runs moves only: files are read on it (see SubOperations).
    mover = LocalMover(
        partial(stored_path, config.storage.root), partial(open_outbound, config), read_inline=True
    )
    running: dict[int, tuple[asyncio.Task[None], _JobCancel]] = {}
    # Moves whose targets are still coming: (header, targets so far).
    arriving: dict[int, tuple[tuple[Any, ...], list[Target]]] = {}
    try:
        while (message := await wire.read(reader)) is not None:
            kind, job_id = message[0], message[1]
            if kind == "move":
                arriving[job_id] = (message, [])
            elif kind == "targets":
                arriving[job_id][1].extend(Target(*fields) for fields in message[2])
            if kind in ("move", "targets"):
                header, targets = arriving[job_id]
                _kind, _id, destination, originator, interval, total, context = header
                if len(targets) >= total:  # all here (a move of nothing has no targets frame)
                    del arriving[job_id]
                    assert isinstance(destination, RemoteAE)
                    job = MoveJob(destination, targets, tuple(originator), interval)
                    cancel = _JobCancel()
                    task = asyncio.create_task(_run_job(link, mover, job_id, job, cancel, context))
                    task.add_done_callback(partial(_forget, running, job_id))
                    running[job_id] = (task, cancel)
            elif kind == "cancel" and job_id in running:
                running[job_id][1].event.set()
            elif kind == "abort":
                arriving.pop(job_id, None)
                if job_id in running:
                    running[job_id][0].cancel()
    finally:
        # The server is gone or closing: every move still here ends now.
        tasks = [task for task, _cancel in running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _main(sock: socket.socket) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    first = await wire.read(reader)
    if first is None or first[0] != "config" or not isinstance(first[1], Config):
        return 2
    config: Config = first[1]
    logsetup.configure(config.log.level, config.log.format)
    log.info("mover_process_started")
    try:
        await serve(reader, writer, config)
    except wire.WireError as e:
        log.error("mover_link_broken", error=str(e))
        return 1
    finally:
        writer.close()
    return 0


def main(argv: list[str]) -> int:
    """argv: the socket's file descriptor, and "uvloop" or "asyncio" (the server's loop)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(argv[0]))
    loop_factory = None
    if argv[1:] == ["uvloop"]:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_main(sock))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
