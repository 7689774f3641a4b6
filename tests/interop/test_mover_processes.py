"""C-MOVE sub-operations in mover processes (retrieve.move_processes, the default): what the
processes add to the moves that test_retrieve_interop.py tests. Moves go from a pynetdicom SCU
to a pynetdicom destination; the processes are the server's, found through its MoverPool."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomd.dimse import status
from dicomd.net.mover_pool import MoverPool
from tests.conftest import run_runtime
from tests.interop.test_retrieve_interop import (
    STUDY_ROOT_MOVE,
    _Destination,
    _identifier,
    _move_association,
    _pynetdicom_move,
    _study_identifier,
    _with_remote,
    by_uid,
    make_study,
    pending_every,
    uids,
)
from tests.interop.test_store_interop import _pynetdicom_store

pytestmark = pytest.mark.interop


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _Stop(Exception):
    """Raised by an on_pending callback of _move_watching to stop reading responses."""


def _move_watching(
    port: int, identifier: Dataset, on_pending: Callable[[Any, Any, int], None]
) -> list[tuple[int, Any, Dataset | None]]:
    """A C-MOVE to PYDEST; on_pending(association, context id, completed count) is called at
    each Pending response, before the next is read (it may raise _Stop)."""
    assoc = _move_association(port)
    context_id = assoc.accepted_contexts[0].context_id
    responses = []
    try:
        for rsp, ident in assoc.send_c_move(identifier, "PYDEST", STUDY_ROOT_MOVE, msg_id=1):
            code = int(rsp.Status)
            responses.append((code, rsp, ident))
            if code == status.PENDING:
                on_pending(assoc, context_id, int(rsp.NumberOfCompletedSuboperations))
    except _Stop:
        pass
    finally:
        if assoc.is_established:
            assoc.release()
    return responses


async def test_two_moves_run_in_two_mover_processes_that_end_with_the_server(
    tmp_path: Path,
) -> None:
    """A move of nothing needs no mover process. The first move is still running (its
    destination holds the first C-STORE for a second) when the second starts: each goes to a
    mover process of its own, neither the server. Both
    deliver every instance byte-identical with its originator. A SIGTERM does not end a mover
    process (the server's shutdown does), and after the server's shutdown none is left."""
    study_a = await asyncio.to_thread(make_study, tmp_path / "a", seed=1)
    study_b = await asyncio.to_thread(make_study, tmp_path / "b", seed=2)
    dest = await asyncio.to_thread(partial(_Destination, stall_at=1, stall=1.0))
    try:
        config = _with_remote(pending_every(0), "PYDEST", dest.port)
        async with run_runtime(config) as (server, runtime):
            assert isinstance(runtime.movers, MoverPool)
            await asyncio.to_thread(_pynetdicom_store, server.port, study_a + study_b)
            nothing = await asyncio.to_thread(
                _pynetdicom_move,
                server.port,
                "PYDEST",
                _identifier("STUDY", StudyInstanceUID="9.9"),
            )
            assert [code for code, *_ in nothing] == [status.SUCCESS]
            assert runtime.movers.pids == []  # none until a move has something to send
            first = asyncio.create_task(
                asyncio.to_thread(
                    _pynetdicom_move, server.port, "PYDEST", _study_identifier(study_a)
                )
            )
            async with asyncio.timeout(10):
                # The first move's first C-STORE is being held (counted in pynetdicom's thread).
                while dest.stores == 0:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            second = await asyncio.to_thread(
                _pynetdicom_move, server.port, "PYDEST", _study_identifier(study_b)
            )
            results = [await first, second]
            pids = runtime.movers.pids
            assert len(set(pids)) == 2 and os.getpid() not in pids
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
            again = await asyncio.to_thread(
                _pynetdicom_move, server.port, "PYDEST", _study_identifier(study_a)
            )
            assert runtime.movers.pids == pids
        for result, study in zip([*results, again], [study_a, study_b, study_a], strict=True):
            code, final, failed = result[-1]
            assert (code, failed) == (status.SUCCESS, None)
            assert final.NumberOfCompletedSuboperations == len(study)
            assert [c for c, *_ in result[:-1]] == [status.PENDING] * (len(study) - 1)
        assert dest.received == by_uid(study_a + study_b)
        assert {ae for ae, _mid in dest.originators} == {"PYMOVE"}
        assert not [pid for pid in pids if _alive(pid)]
    finally:
        await asyncio.to_thread(dest.close)


async def test_a_c_cancel_reaches_the_mover_process(tmp_path: Path) -> None:
    """The SCU cancels once two of six sub-operations completed, while the destination holds
    the third: the mover finishes that one and starts no other. FE00 with 3 completed and 3
    remaining."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    dest = await asyncio.to_thread(partial(_Destination, stall_at=3, stall=1.5))

    def cancel_after_two(assoc: Any, context_id: int, completed: int) -> None:
        if completed == 2:
            assoc.send_c_cancel(1, context_id)

    try:
        config = _with_remote(pending_every(0), "PYDEST", dest.port)
        async with run_runtime(config) as (server, _runtime):
            await asyncio.to_thread(_pynetdicom_store, server.port, files)
            responses = await asyncio.to_thread(
                _move_watching, server.port, _study_identifier(files), cancel_after_two
            )
        code, final, _ = responses[-1]
        assert code == status.CANCEL
        assert final.NumberOfCompletedSuboperations == 3
        assert final.NumberOfRemainingSuboperations == 3
        assert final.NumberOfFailedSuboperations == 0
        assert dest.received == by_uid(files[:3])
    finally:
        await asyncio.to_thread(dest.close)


async def test_a_mover_process_killed_mid_move(tmp_path: Path) -> None:
    """The mover process is killed (SIGKILL) once two of six sub-operations completed. The move
    ends at once in B000: the two it reported stand, the four others fail and are listed, with
    a comment saying why; the server goes on, and the next move runs in a new process."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    dest = await asyncio.to_thread(partial(_Destination, stall_at=3, stall=1.0))
    killed: list[int] = []
    try:
        config = _with_remote(pending_every(0), "PYDEST", dest.port)
        async with run_runtime(config) as (server, runtime):
            assert isinstance(runtime.movers, MoverPool)
            movers = runtime.movers
            await asyncio.to_thread(_pynetdicom_store, server.port, files)

            def kill_after_two(_assoc: Any, _context_id: int, completed: int) -> None:
                if completed == 2 and not killed:
                    [pid] = movers.pids
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)

            identifier = _study_identifier(files)
            responses = await asyncio.to_thread(
                _move_watching, server.port, identifier, kill_after_two
            )
            dest.received.clear()
            again = await asyncio.to_thread(_pynetdicom_move, server.port, "PYDEST", identifier)
            assert movers.pids != killed and len(movers.pids) == 1
        code, final, failed = responses[-1]
        assert code == status.SUBOPS_WARNING
        assert final.NumberOfCompletedSuboperations == 2
        assert final.NumberOfFailedSuboperations == 4
        assert "mover process lost" in final.ErrorComment
        assert failed is not None
        assert sorted(failed.FailedSOPInstanceUIDList) == sorted(by_uid(files[2:]))
        assert again[-1][0] == status.SUCCESS
        assert dest.received == by_uid(files)
    finally:
        await asyncio.to_thread(dest.close)


async def test_an_originator_that_aborts_stops_its_move_in_the_mover(tmp_path: Path) -> None:
    """The SCU aborts its association after the first Pending response, while the destination
    holds the second C-STORE: the mover process stops that move there (no third C-STORE), and
    the server keeps it for the next move."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    dest = await asyncio.to_thread(partial(_Destination, stall_at=2, stall=1.0))
    aborted = threading.Event()

    def abort_after_one(assoc: Any, _context_id: int, completed: int) -> None:
        if completed == 1:
            assoc.abort()
            aborted.set()
            raise _Stop

    try:
        config = _with_remote(pending_every(0), "PYDEST", dest.port)
        async with run_runtime(config) as (server, runtime):
            assert isinstance(runtime.movers, MoverPool)
            await asyncio.to_thread(_pynetdicom_store, server.port, files)
            identifier = _study_identifier(files)
            await asyncio.to_thread(_move_watching, server.port, identifier, abort_after_one)
            assert aborted.is_set()
            await asyncio.sleep(2.0)  # the held C-STORE is answered; no other may follow
            assert dest.stores == 2
            pids = runtime.movers.pids
            dest.received.clear()
            again = await asyncio.to_thread(_pynetdicom_move, server.port, "PYDEST", identifier)
            assert runtime.movers.pids == pids
        assert again[-1][0] == status.SUCCESS
        assert dest.received == by_uid(files)
    finally:
        await asyncio.to_thread(dest.close)


async def test_a_missing_file_fails_alone_in_the_mover(tmp_path: Path) -> None:
    """The third of six stored files is gone from the disk: the mover process (which reads files
    on its own loop) fails that one sub-operation, nothing of it sent, and sends the others."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    lost = str(uids(files[2]).SOPInstanceUID)
    dest = await asyncio.to_thread(_Destination)
    try:
        config = _with_remote(pending_every(0), "PYDEST", dest.port)
        async with run_runtime(config) as (server, runtime):
            await asyncio.to_thread(_pynetdicom_store, server.port, files)
            stored = await runtime.index.get(lost)
            assert stored is not None
            await asyncio.to_thread(runtime.files.path(stored.relpath).unlink)
            responses = await asyncio.to_thread(
                _pynetdicom_move, server.port, "PYDEST", _study_identifier(files)
            )
            assert runtime.movers is not None and len(runtime.movers.pids) == 1
        code, final, failed = responses[-1]
        assert code == status.SUBOPS_WARNING
        assert final.NumberOfCompletedSuboperations == 5
        assert final.NumberOfFailedSuboperations == 1
        assert failed is not None and failed.FailedSOPInstanceUIDList == lost
        assert dest.received == by_uid(files[:2] + files[3:])
    finally:
        await asyncio.to_thread(dest.close)


async def test_a_shutdown_during_a_move_leaves_no_mover_process(tmp_path: Path) -> None:
    """The server shuts down while its mover holds a move (the destination sits on a C-STORE):
    the shutdown ends that move and the mover process with it, in bounded time."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    dest = await asyncio.to_thread(partial(_Destination, stall_at=2, stall=3.0))
    try:
        config = _with_remote(pending_every(0), "PYDEST", dest.port)
        moving: asyncio.Task[Any] | None = None
        async with run_runtime(config) as (server, runtime):
            assert runtime.movers is not None
            await asyncio.to_thread(_pynetdicom_store, server.port, files)
            moving = asyncio.create_task(
                asyncio.to_thread(_pynetdicom_move, server.port, "PYDEST", _study_identifier(files))
            )
            async with asyncio.timeout(10):
                while dest.stores < 2:  # noqa: ASYNC110 (counted in pynetdicom's thread)
                    await asyncio.sleep(0.01)
            pids = runtime.movers.pids
            assert len(pids) == 1
            started = time.monotonic()
        took = time.monotonic() - started  # run_runtime's shutdown: 2 s to drain, then abort
        assert not _alive(pids[0])
        assert took < 8, took
        assert dest.stores == 2  # nothing more was sent
        with contextlib.suppress(Exception):
            await moving
    finally:
        await asyncio.to_thread(dest.close)
