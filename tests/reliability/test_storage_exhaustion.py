"""Storage exhaustion end to end: a full disk under several SCUs, and an index locked by another
process. In both, a C-STORE that could not be made durable is answered with A700 (Refused: out of
resources), never with Success; nothing half-written is left; what was acknowledged stays intact; and
storing resumes, without a restart, once the resource is back.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from dicomd.config import IndexConfig
from dicomd.dimse import status
from tests.conftest import make_config, run_runtime
from tests.reliability.peers import (
    UID_ROOT,
    assert_intact,
    associate,
    instance,
    send_store,
    spools,
)


async def _run(*argv: str) -> int:
    proc = await asyncio.create_subprocess_exec(*argv)
    return await proc.wait()


async def test_disk_full_with_several_scus(tmp_path: Path) -> None:
    """Three SCUs push 8 instances of 400 KB each at once into a 4 MB store: the ones that do not fit
    get A700, every Success is intact, PRAGMA integrity_check is ok, and storing resumes when space
    is freed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the single-SCU case has a seam-based test)")
    mount = tmp_path / "small"
    mount.mkdir()
    assert await _run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)) == 0
    try:
        # The store fills up; the index lives elsewhere so that what runs out is the store. No
        # reserve: the disk itself is to be full (the reserve has its own test).
        config = make_config(root=mount, storage={"min_free_mb": 0})
        config = replace(config, index=IndexConfig(path=tmp_path / "index.sqlite"))
        async with run_runtime(config) as (server, runtime):
            acknowledged: dict[str, bytes] = {}
            statuses: list[int] = []

            async def scu(n: int) -> None:
                peer = await associate(server.port, calling=f"FULL{n}")
                try:
                    for i in range(8):
                        uid = f"{UID_ROOT}1.{n}.{i}"
                        data = instance(uid, 400_000)
                        rsp = await send_store(peer, uid, data, message_id=i + 1)
                        statuses.append(rsp.status)
                        if rsp.status == status.SUCCESS:
                            acknowledged[uid] = data
                finally:
                    peer.close()

            async with asyncio.timeout(60):
                await asyncio.gather(*(scu(n) for n in range(3)))
            assert set(statuses) <= {status.SUCCESS, status.OUT_OF_RESOURCES}, statuses
            assert status.OUT_OF_RESOURCES in statuses, "the store should have filled up"
            assert acknowledged, "some instances should fit"
            assert (await runtime.index.counts())["instances"] == len(acknowledged)
            await assert_intact(runtime.index, runtime.files, acknowledged)
            assert spools(config.storage.root) == []
            assert await runtime.index.integrity_check() == "ok"
            # Free space (two instances' worth), and storing works again without a restart.
            for victim in list(acknowledged)[:2]:
                row = await runtime.index.get(victim)
                assert row is not None
                await runtime.index.delete(victim)
                await asyncio.to_thread(runtime.files.remove, row.relpath)
                del acknowledged[victim]
            peer = await associate(server.port, calling="AFTERFULL")
            uid = f"{UID_ROOT}1.9.1"
            data = instance(uid, 400_000)
            assert (await send_store(peer, uid, data)).status == status.SUCCESS
            acknowledged[uid] = data
            await assert_intact(runtime.index, runtime.files, acknowledged)
            peer.close()
    finally:
        await _run("umount", "-l", str(mount))


async def test_index_locked_past_busy_timeout_is_a700_and_then_works(tmp_path: Path) -> None:
    """Another process holds the index with BEGIN EXCLUSIVE longer than [index] busy_timeout: the
    C-STORE fails with A700 after about busy_timeout, no row, no file; released, storing works."""
    busy_timeout = 0.5
    config = make_config(root=tmp_path)
    config = replace(config, index=replace(config.index, busy_timeout=busy_timeout))
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        before = f"{UID_ROOT}2.1"
        assert (await send_store(peer, before, instance(before))).status == status.SUCCESS
        other = sqlite3.connect(config.index.path, isolation_level=None, check_same_thread=False)
        try:
            await asyncio.to_thread(other.execute, "BEGIN EXCLUSIVE")
            uid = f"{UID_ROOT}2.2"
            started = time.monotonic()
            rsp = await send_store(peer, uid, instance(uid), message_id=2)
            waited = time.monotonic() - started
            assert rsp.status == status.OUT_OF_RESOURCES, hex(rsp.status)
            assert rsp.error_comment and "index" in rsp.error_comment
            # It waited for the lock as configured (no acknowledgement without a commit)...
            assert waited >= busy_timeout * 0.9
            # ...and the instance left no trace: no row (read through the lock: WAL), no file.
            assert await runtime.index.get(uid) is None
            assert not runtime.files.path(runtime.files.relpath_for(uid)).exists()
            assert spools(config.storage.root) == []
        finally:
            await asyncio.to_thread(other.execute, "ROLLBACK")
            other.close()
        # The lock is gone: the same instance, and a new one, are stored.
        data = instance(uid)
        assert (await send_store(peer, uid, data, message_id=3)).status == status.SUCCESS
        after = f"{UID_ROOT}2.3"
        assert (await send_store(peer, after, instance(after), message_id=4)).status == 0
        await assert_intact(
            runtime.index,
            runtime.files,
            {before: instance(before), uid: data, after: instance(after)},
        )
        assert await runtime.index.integrity_check() == "ok"
        peer.close()
