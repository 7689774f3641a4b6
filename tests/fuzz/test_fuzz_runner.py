"""Fuzzing the association runner end to end: mutated sessions into a real AcceptorAssociation.

The harness drives `dicomd.net.association.AcceptorAssociation` — the real runner, with the real
store, index and services of `open_runtime` — over a Unix socketpair: no TCP, no accept loop, one
task per session that the test awaits, so an exception escaping the runner fails the example
directly instead of becoming a log line. Each example sends a mutated session (tests/fuzz/corpus.py),
half-closes, reads everything the server sends until it closes, and checks:

- the runner returns (no exception, within a bound) and never logs a handler failure;
- what it sent is a sequence of whole, well-formed PDUs an acceptor may send, and a session that
  broke the protocol ends with A-ABORT (or A-ASSOCIATE-RJ) and a close;
- a well-behaved session run at the same time on the same server state (C-ECHO, C-STORE, release)
  gets Success for both and its instance is stored intact.

A second test replays 450 seeded mutations over real TCP against a `DicomServer` (concurrently, with
a real SCU echoing and storing all the while) and checks that nothing is left behind: the server's
association tasks all end, its sockets and this process's asyncio tasks return to their baseline
(the index may open its pooled read connections meanwhile, no more), no spool file remains, and
traced Python memory does not grow with the number of connections after the first round.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import random
import socket
import tracemalloc
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from structlog.typing import Processor

from dicomd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomd.app import SPOOL_SPARES, Runtime, open_runtime
from dicomd.config import Config
from dicomd.dimse import status
from dicomd.dimse.messages import CEchoRSP, CStoreRQ, CStoreRSP, decode_command
from dicomd.net.association import AcceptorAssociation
from dicomd.net.requestor import RequestorAssociation
from dicomd.storage.index import QUERY_CONNECTIONS
from dicomd.ul.negotiation import ProposedContext
from dicomd.ul.pdu import (
    PDU,
    Abort,
    AssociateAC,
    AssociateRJ,
    PDataTF,
    ReleaseRP,
)
from dicomd.ul.reader import PDUReader
from tests.conftest import make_config, run_runtime
from tests.fuzz import corpus
from tests.reliability.peers import spools

# Short timers: a session the fuzzer leaves hanging is cut off quickly, and a test never waits long.
# (dimse_timeout also bounds how long A-RELEASE waits for an operation in progress, e.g. a C-GET
# whose C-STORE sub-operation the fuzzer never answers.)
TIMERS: dict[str, Any] = {"artim_timeout": 1.0, "idle_timeout": 3.0, "dimse_timeout": 0.5}
SESSION_BOUND = 15.0
CONTROL_INSTANCE = "1.2.826.0.1.3680043.8.498.1.424242"
CONTROL = b"".join(
    [corpus.RQ, *corpus.ECHO, *corpus.store_pdus(2, CONTROL_INSTANCE), corpus.RELEASE]
)
_ACCEPTOR_PDUS = (AssociateAC, AssociateRJ, PDataTF, ReleaseRP, Abort)
_FAILURES = {"dimse_handler_failed", "association_crashed"}


def parse(sent: bytes) -> list[PDU]:
    """What the server sent: whole well-formed PDUs, of the kinds an acceptor sends."""
    reader = PDUReader(1 << 24)
    reader.feed(sent)
    pdus: list[PDU] = []
    while (pdu := reader.next_pdu()) is not None:
        pdus.append(pdu)
    assert reader.buffered == 0, f"the server sent a partial PDU: {sent[-32:]!r}"
    for pdu in pdus:
        assert isinstance(pdu, _ACCEPTOR_PDUS), pdu
    return pdus


class Harness:
    def __init__(self, loop: asyncio.Runner, runtime: Runtime) -> None:
        self.loop = loop
        self.runtime = runtime

    def __repr__(self) -> str:  # Hypothesis prints the arguments of a falsifying example
        return "Harness()"

    async def session(self, stream: bytes, chunk: int) -> bytes:
        """Run one session through a fresh AcceptorAssociation; the bytes the server sent."""
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours)
        association = AcceptorAssociation(reader, writer, self.runtime.state)
        runner = asyncio.create_task(association.run())
        peer_reader, peer_writer = await asyncio.open_connection(sock=theirs)

        async def send() -> None:
            try:
                for start in range(0, len(stream), chunk):
                    peer_writer.write(stream[start : start + chunk])
                    await peer_writer.drain()
                peer_writer.write_eof()
            except (ConnectionError, OSError):
                pass  # the server hung up first: that is allowed

        async def receive() -> bytes:
            received = bytearray()
            try:
                while data := await peer_reader.read(1 << 16):
                    received += data
            except (ConnectionError, OSError):
                pass
            return bytes(received)

        try:
            async with asyncio.timeout(SESSION_BOUND):
                _, received = await asyncio.gather(send(), receive())
                await runner  # an exception escaping the runner fails the example here
        finally:
            if not runner.done():
                runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner
            peer_writer.close()
        return received

    async def fuzz_and_control(self, stream: bytes, chunk: int) -> tuple[bytes, bytes]:
        return await asyncio.gather(self.session(stream, chunk), self.session(CONTROL, 1 << 16))

    def run(self, stream: bytes, chunk: int) -> tuple[list[PDU], list[MutableMapping[str, Any]]]:
        # format_exc_info: a handler failure's traceback lands in the failing example's message.
        with structlog.testing.capture_logs([structlog.processors.format_exc_info]) as logs:
            fuzzed, control = self.loop.run(self.fuzz_and_control(stream, chunk))
        check_control(parse(control))
        return parse(fuzzed), logs


def check_control(pdus: list[PDU]) -> None:
    """The well-behaved session: accepted, C-ECHO Success, C-STORE Success, released."""
    assert isinstance(pdus[0], AssociateAC), pdus
    responses = [decode_command(p.pdvs[0].data) for p in pdus if isinstance(p, PDataTF)]
    assert [type(r) for r in responses] == [CEchoRSP, CStoreRSP], responses
    echo, store = responses
    assert isinstance(echo, CEchoRSP) and isinstance(store, CStoreRSP)  # for the type checker
    assert echo.status == store.status == status.SUCCESS, responses
    assert isinstance(pdus[-1], ReleaseRP)


def handler_failures(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if (e["event"] in _FAILURES or e["log_level"] == "error")]


def only_failures(_logger: Any, method_name: str, event_dict: Any) -> Any:
    """A processor for capture_logs that keeps what handler_failures() looks for and drops the
    rest, so a long run's captured log does not grow with its number of connections."""
    if event_dict.get("event") in _FAILURES or method_name in ("error", "exception", "critical"):
        return event_dict
    raise structlog.DropEvent


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    # Module scope: no test's tmp_path yet, so make_config() is given one that pytest removes.
    config = make_config(tmp_path_factory.mktemp("harness"), **TIMERS)
    with asyncio.Runner() as loop:
        runtime = loop.run(open_runtime(config))
        try:
            yield Harness(loop, runtime)
            # The control instance went in intact, however many fuzzed sessions ran beside it.
            row = loop.run(runtime.index.get(CONTROL_INSTANCE))
            assert row is not None
            content = runtime.files.path(row.relpath).read_bytes()
            assert hashlib.sha256(content).hexdigest() == row.sha256
            assert content.endswith(corpus.ct_dataset(CONTROL_INSTANCE))
            assert loop.run(runtime.index.integrity_check()) == "ok"
            assert spools(config.storage.root) == []
        finally:
            loop.run(runtime.close())


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(corpus.streams(), st.sampled_from([1, 7, 100, 1 << 16]))
@example(corpus.REGRESSIONS[0], 1 << 16)
@example(corpus.REGRESSIONS[1], 1)
@example(corpus.REGRESSIONS[3], 1 << 16)
@example(corpus.REGRESSIONS[4], 7)
@example(corpus.REGRESSIONS[5], 1 << 16)
@example(corpus.REGRESSIONS[6], 1 << 16)
@example(corpus.REGRESSIONS[7], 1 << 16)
@example(corpus.REGRESSIONS[8], 100)
@example(corpus.REGRESSIONS[9], 1 << 16)
@example(corpus.REGRESSIONS[10], 1 << 16)
@example(corpus.REGRESSIONS[11], 1 << 16)
@example(corpus.REGRESSIONS[12], 1 << 16)
def test_runner_survives_mutated_sessions(harness: Harness, stream: bytes, chunk: int) -> None:
    pdus, logs = harness.run(stream, chunk)
    failures = handler_failures(logs)
    assert not failures, failures
    aborted_by_us = any(e["event"] == "association_aborted" and e.get("by") == "us" for e in logs)
    if aborted_by_us and pdus:
        assert isinstance(pdus[-1], Abort), pdus[-1]
    if pdus and isinstance(pdus[0], AssociateRJ):
        assert all(isinstance(p, Abort) for p in pdus[1:]), pdus
    # Nothing is half-written in the store's spool directory once the session is over.
    harness.loop.run(harness.runtime.store.drain())
    assert spools(harness.runtime.config.storage.root) == []


# --- many fuzzed connections over TCP: nothing is left behind ----------------------------------


def open_fds() -> list[str]:
    """What this process's file descriptors point at (socket:[inode], paths, pipes)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
    return out


def sockets() -> int:
    return sum(1 for target in open_fds() if target.startswith("socket:"))


async def fuzz_connection(port: int, stream: bytes, rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        chunk = rng.choice([1, 50, 1 << 16])
        for start in range(0, len(stream), chunk):
            writer.write(stream[start : start + chunk])
            await writer.drain()
        if rng.random() < 0.9:
            writer.write_eof()  # otherwise: leave it to the server's timers
        while await reader.read(1 << 16):
            pass
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def real_scu(port: int, stop: asyncio.Event, results: list[int]) -> None:
    """A real SCU, C-ECHO and C-STORE on fresh associations, until told to stop."""
    n = 0
    while not stop.is_set():
        n += 1
        assoc = await RequestorAssociation.open(
            "127.0.0.1",
            port,
            calling_ae_title="REALSCU",
            called_ae_title="DICOMD",
            contexts=[
                ProposedContext(corpus.VERIFICATION, (corpus.IMPLICIT,)),
                ProposedContext(corpus.CT, (corpus.IMPLICIT,)),
            ],
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            timeout=10.0,
        )
        async with assoc:
            results.append(await assoc.echo())
            uid = f"1.2.826.0.1.3680043.8.498.2.{n}"
            ctx = assoc.context_for(corpus.CT)
            assert ctx is not None
            await assoc.send(ctx.context_id, CStoreRQ(2, corpus.CT, uid), corpus.ct_dataset(uid))
            _cid, rsp, _ds = await assoc.receive()
            assert isinstance(rsp, CStoreRSP)
            results.append(rsp.status)


async def test_fuzzed_connections_leave_nothing_behind() -> None:
    rounds, per_round, concurrency = 3, 150, 16
    config = make_config(**TIMERS)
    one_closed = asyncio.Event()

    def on_closed(_association: AcceptorAssociation) -> None:
        one_closed.set()

    rng = random.Random(6)
    # Only failures are captured: traced memory below must measure the server, not this log.
    capture: list[Processor] = [only_failures, structlog.processors.format_exc_info]
    with structlog.testing.capture_logs(capture) as logs:
        await _many_connections(config, on_closed, one_closed, rng, rounds, per_round, concurrency)
    failures = handler_failures(logs)
    assert not failures, failures


async def _many_connections(
    config: Config,
    on_closed: Callable[[AcceptorAssociation], None],
    one_closed: asyncio.Event,
    rng: random.Random,
    rounds: int,
    per_round: int,
    concurrency: int,
) -> None:
    async with run_runtime(config, on_closed=on_closed) as (server, runtime):
        stop = asyncio.Event()
        results: list[int] = []
        scu = asyncio.create_task(real_scu(server.port, stop, results))
        tasks_before = len(asyncio.all_tasks())
        sockets_before = sockets()
        traced: list[int] = []
        semaphore = asyncio.Semaphore(concurrency)

        async def one(stream: bytes, seed: float) -> None:
            async with semaphore:
                await fuzz_connection(server.port, stream, random.Random(seed))

        tracemalloc.start()
        try:
            for _ in range(rounds):
                streams = [corpus.mutate_stream(rng) for _ in range(per_round)]

                async with asyncio.timeout(60):
                    await asyncio.gather(*(one(s, rng.random()) for s in streams))
                # Measured once the server has ended this round's associations (left to its
                # timers, some outlive their client), so that no buffer of a session still
                # open is counted: at most the real SCU's current association remains.
                async with asyncio.timeout(30):
                    while server.associations > 1:
                        one_closed.clear()
                        await one_closed.wait()
                gc.collect()
                traced.append(tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
            stop.set()
        async with asyncio.timeout(30):
            await scu
        # Every fuzzed association and the SCU's end (within the short timers at the latest).
        async with asyncio.timeout(10):
            while server.associations:
                one_closed.clear()
                await one_closed.wait()
        assert server.associations == 0
        assert results and all(s == status.SUCCESS for s in results), results
        assert len(asyncio.all_tasks()) <= tasks_before
        # Sockets back to the baseline (that had the listener and the SCU's association); the index
        # may have opened its pooled read connections meanwhile, and no more than those.
        assert sockets() <= sockets_before
        index_files = [t for t in open_fds() if t.startswith(str(config.index.path))]
        # (database + WAL per connection: writer, reader, the pool; one -shm for the process)
        assert len(index_files) <= 2 * (2 + QUERY_CONNECTIONS) + 1, index_files
        await runtime.store.drain()
        # No spool left behind; beside them, only the empty spares, as many as the pool keeps.
        left = list((config.storage.root / "tmp").iterdir())
        assert all(p.suffix == ".spare" and p.stat().st_size == 0 for p in left), left
        assert len(left) <= SPOOL_SPARES
        # The first round warms up (caches, the index's statements); later rounds hold steady.
        growth = traced[-1] - traced[0]
        print(f"traced memory after each round: {traced}; real SCU operations: {len(results)}")
        assert growth < 512 * 1024, f"traced memory grew {growth} bytes over {rounds - 1} rounds"
