"""Bugs the fuzzers found, pinned down as small deterministic tests.

A bug not fixed yet would be marked `xfail(strict=True)` here (the suite stays green; once fixed it
passes, and strict xfail says "remove the marker"). The byte-level regression inputs themselves live in corpus.REGRESSIONS and
are replayed as explicit examples by the fuzz tests.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import structlog

from dicomd.dimse.messages import CEchoRQ
from dicomd.net.association import AcceptorAssociation
from dicomd.net.channel import Channel, WriteTimeout
from dicomd.services.base import Request, Responder
from dicomd.services.echo import VERIFICATION_SOP_CLASS, handle_echo
from dicomd.storage.reads import ReadPool
from dicomd.ul.pdu import AssociateAC, PDataTF
from tests.conftest import make_config, run_runtime
from tests.fuzz import corpus
from tests.net.rawpeer import RawPeer, echo_pdata


async def test_cancelled_query_does_not_poison_the_read_pool(tmp_path: Path) -> None:
    """Found by the fuzz runner (C-FIND then C-GET on one association), fixed in reads.py: a caller
    cancelled after aiosqlite's thread finished execute() but before the loop delivered the cursor
    left that statement active, SQLite's interrupt flag set, and the pooled connection poisoned."""
    db = tmp_path / "index.sqlite"
    with sqlite3.connect(db) as setup:
        setup.execute("CREATE TABLE t (x)")
        setup.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    pool = ReadPool(db, size=1)
    try:
        async with pool.query("SELECT 1") as rows:  # opens the pool's only connection
            await rows.fetch(1)

        async def interrupted_query() -> None:
            async with pool.query("SELECT x FROM t") as rows:
                await rows.fetch(1)

        task = asyncio.create_task(interrupted_query())
        for _ in range(2):  # the query submits execute() to aiosqlite's thread
            await asyncio.sleep(0)
        # Block the loop (deliberately, no await): the thread finishes execute() and queues its
        # result; the cancellation below then reaches the query before that result does.
        time.sleep(0.05)  # noqa: ASYNC251
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The next query on the same pooled connection.
        async with pool.query("SELECT 1") as rows:
            assert await rows.fetch(1) == [(1,)]
    finally:
        await pool.close()


async def test_release_while_an_operation_runs_does_not_fail_the_handler() -> None:
    """Found by test_fuzz_runner: A-RELEASE-RQ during an operation past the DIMSE timeout sent
    A-RELEASE-RP (Sta13) and left the operation running; its next response raised
    LocalProtocolError (EVT9 in Sta13), logged as a handler failure. Fixed in association.py (the
    worker is stopped before A-RELEASE-RP); this pins it."""
    config = make_config(artim_timeout=2.0, dimse_timeout=0.5)
    ended = asyncio.Event()
    with structlog.testing.capture_logs() as logs:
        async with run_runtime(config, on_closed=lambda _a: ended.set()) as (server, _runtime):
            peer = await RawPeer.connect(server.port)
            assert isinstance(await peer.associate(corpus.associate_rq()), AssociateAC)
            await peer.send(b"".join(corpus.STORE))  # the instance the C-GET will send back
            stored = await peer.receive()
            assert isinstance(stored, PDataTF)
            ended.clear()
            # C-GET, then at once A-RELEASE-RQ; the C-STORE sub-operation is never answered.
            await peer.send(b"".join([*corpus.GET, corpus.RELEASE]))
            async with asyncio.timeout(10):
                await ended.wait()
            peer.close()
    failures = [e for e in logs if e["log_level"] == "error"]
    assert not failures, failures


async def test_abort_while_an_operation_writes_does_not_fail_the_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Made deterministic with two stand-ins: an operation that takes 1.5 s (a C-ECHO handler), and
    # an abort flush that takes 1 s (what a full send buffer does, e.g. under a C-GET whose
    # sub-operations the peer does not read, as found). idle_timeout aborts at 1 s; the operation
    # answers at 1.5 s, inside the abort's flush.
    config = make_config(artim_timeout=1.0, idle_timeout=1.0, dimse_timeout=5.0)
    flush_quietly = Channel.flush_quietly

    async def slow_flush(channel: Channel) -> None:
        await asyncio.sleep(1.0)  # stand-in for a blocked write, not a synchronisation
        await flush_quietly(channel)

    async def slow_echo(request: Request, responder: Responder) -> None:
        await asyncio.sleep(1.5)  # stand-in for a long operation
        await handle_echo(request, responder)

    monkeypatch.setattr(Channel, "flush_quietly", slow_flush)
    with structlog.testing.capture_logs() as logs:
        async with run_runtime(config) as (server, runtime):
            runtime.state.handlers = {
                **runtime.state.handlers,
                (VERIFICATION_SOP_CLASS, CEchoRQ): slow_echo,
            }
            peer = await RawPeer.connect(server.port)
            assert isinstance(await peer.associate(), AssociateAC)
            await peer.send(echo_pdata())
            # Then silence: idle_timeout aborts while the C-ECHO is still running.
            assert await peer.closed_by_server(timeout=10)
            peer.close()
    failures = [e for e in logs if e["log_level"] == "error"]
    assert not failures, failures


async def test_peer_reset_while_we_write_is_a_closed_connection_not_a_crash() -> None:
    config = make_config(artim_timeout=2.0)
    async with run_runtime(config) as (_server, runtime):
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)

        async def reset_drain() -> None:
            raise ConnectionResetError("Connection lost")  # what asyncio raises after a reset

        writer.drain = reset_drain  # type: ignore[method-assign]
        association = AcceptorAssociation(reader, writer, runtime.state)
        _peer_reader, peer_writer = await asyncio.open_connection(sock=theirs)
        peer_writer.write(corpus.RQ)  # accepted: the A-ASSOCIATE-AC is the first write
        try:
            async with asyncio.timeout(10):
                await association.run()  # must return, as for any connection the peer ended
        finally:
            peer_writer.close()


async def test_worker_death_ends_the_association() -> None:
    # Deterministic stand-in for the write that times out: a C-ECHO handler that raises
    # WriteTimeout after 0.5 s, while the peer has two more requests queued behind it.
    config = make_config(artim_timeout=1.0, idle_timeout=1.0, dimse_timeout=1.0)

    async def stuck_echo(request: Request, responder: Responder) -> None:
        await asyncio.sleep(0.5)  # stand-in for a write the peer never reads, not a sync
        raise WriteTimeout

    ended = asyncio.Event()
    async with run_runtime(config, on_closed=lambda _a: ended.set()) as (server, runtime):
        runtime.state.handlers = {
            **runtime.state.handlers,
            (VERIFICATION_SOP_CLASS, CEchoRQ): stuck_echo,
        }
        peer = await RawPeer.connect(server.port)
        try:
            assert isinstance(await peer.associate(), AssociateAC)
            # One request for the worker, one for the queue, one the runner blocks on.
            for message_id in (1, 2, 3):
                await peer.send(echo_pdata(message_id))
            async with asyncio.timeout(1.0 + 1.0 + 3.0):  # dimse + idle + slack
                await ended.wait()
        finally:
            peer.close()
