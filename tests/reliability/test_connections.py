"""Connection exhaustion: 500 idle or slow-drip connections and a batch of peers that never read
what we send, while real SCUs keep storing.

- 400 idle connections (connect, send nothing) and 100 slow-drip ones (the A-ASSOCIATE-RQ one byte
  every 100 ms): ARTIM (artim_timeout) cuts each off, one coroutine each, none blocking the others.
- 4 non-reading peers: associate with a tiny receive buffer, send a C-GET of a study of two 8 MiB
  instances and never read, so our writes block (a C-ECHO storm does not do it here: its 100-byte
  responses vanish into the 4 MiB loopback send buffers); our writes time out (dimse_timeout) and
  the silent peer is cut off by idle_timeout.
  (A peer that keeps sending while it does not read is cut off too: the association ends when
  its worker's writes time out; tests/fuzz/test_regressions.py::test_worker_death_ends_the_association.)
- Meanwhile two DCMTK storescu processes store 20 instances each, and an in-process SCU echoes on
  fresh associations: all of it succeeds.
- Afterwards the server has no association task left, this process's sockets are back to their
  count before the flood, and its other descriptors grew by no more than the index's pooled read
  connections (that the C-GETs opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from dicomd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomd.dimse import status
from dicomd.net.requestor import echo
from dicomd.storage.index import QUERY_CONNECTIONS
from tests import dicomgen
from tests.conftest import dcmtk_env, make_config, require_tool, run_runtime
from tests.fuzz import corpus
from tests.reliability.peers import BIG, associate, non_reader, send_store

TIMERS: dict[str, Any] = {"artim_timeout": 1.0, "idle_timeout": 2.0, "dimse_timeout": 1.0}
IDLE, DRIP, NON_READERS = 400, 100, 4
SLACK = 3.0  # seconds beyond a timer that a cut-off may take on a loaded 2-core machine


def open_fds() -> list[str]:
    """What this process's file descriptors point at (socket:[inode], paths, pipes)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
    return out


def sockets() -> int:
    return sum(1 for target in open_fds() if target.startswith("socket:"))


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def idle_peer(port: int, drip: bool) -> float:
    """Connect; send nothing (or the A-ASSOCIATE-RQ a byte at a time); seconds until cut off."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if drip:
            for i in range(len(corpus.RQ)):
                writer.write(corpus.RQ[i : i + 1])
                await writer.drain()
                # Wait 100 ms for the server to hang up; that it has not is the normal case.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        if not await reader.read(1):
                            break
        while await reader.read(1 << 16):
            pass
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started


async def probe(port: int, stop: asyncio.Event, statuses: list[int]) -> None:
    while not stop.is_set():
        statuses.append(
            await echo(
                "127.0.0.1",
                port,
                calling_ae_title="PROBE",
                called_ae_title="DICOMD",
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                timeout=10.0,
            )
        )
        await asyncio.sleep(0.05)


@pytest.mark.timeout(120)
async def test_idle_drip_and_non_reading_peers_are_cut_off_while_real_scus_store(
    tmp_path: Path,
) -> None:
    storescu = require_tool("storescu")
    raise_fd_limit(4096)
    files = dicomgen.small_instances(tmp_path / "data", 40, seed=5)
    config = make_config(**TIMERS)
    ended = asyncio.Event()
    with structlog.testing.capture_logs([structlog.contextvars.merge_contextvars]) as logs:
        async with run_runtime(config, on_closed=lambda _a: ended.set()) as (server, runtime):
            port = server.port
            # The study the non-readers will C-GET: two instances of 8 MiB.
            loader = await associate(port, calling="LOADER")
            for i in range(2):
                uid = f"{corpus.SEED_INSTANCE}.{i}"
                data = corpus.ct_dataset(uid, pixels=BIG)
                assert (await send_store(loader, uid, data, message_id=i + 1)).status == 0
            loader.close()
            sockets_before, fds_before = sockets(), len(open_fds())
            stop = asyncio.Event()
            statuses: list[int] = []
            prober = asyncio.create_task(probe(port, stop, statuses))
            hostile = [
                *(asyncio.create_task(idle_peer(port, drip=False)) for _ in range(IDLE)),
                *(asyncio.create_task(idle_peer(port, drip=True)) for _ in range(DRIP)),
            ]
            kept: list[asyncio.StreamWriter] = []
            readers = [
                asyncio.create_task(non_reader(port, kept, drip=False)) for _ in range(NON_READERS)
            ]
            flood_started = time.monotonic()
            scus = [
                await asyncio.create_subprocess_exec(
                    storescu,
                    *("-aet", f"REAL{i}", "-aec", "DICOMD", "127.0.0.1", str(port)),
                    *(str(p) for p in files[i::2]),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    env=dcmtk_env(),
                )
                for i in range(2)
            ]
            try:
                async with asyncio.timeout(60):
                    scu_codes = [await p.wait() for p in scus]
                    idle_times = await asyncio.gather(*hostile)
                    await asyncio.gather(*readers)
                    # Every association ends: the non-readers' too, cut off by the server.
                    while server.associations > 1:  # the prober's may be open
                        ended.clear()
                        await ended.wait()
                    all_cut_off = time.monotonic() - flood_started
            finally:
                stop.set()
                for p in scus:
                    if p.returncode is None:
                        p.kill()  # ours, by PID
                        await p.wait()
                for task in [*hostile, *readers]:
                    task.cancel()
                for writer in kept:
                    writer.close()
            async with asyncio.timeout(20):
                await prober
                while server.associations:
                    ended.clear()
                    await ended.wait()
            assert scu_codes == [0, 0]
            assert (await runtime.index.counts())["instances"] == len(files) + 2
            assert statuses and all(s == status.SUCCESS for s in statuses)
            timers = config.server
            assert max(idle_times) < timers.artim_timeout + SLACK, max(idle_times)
            print(
                f"idle/drip cut off after {min(idle_times):.2f}-{max(idle_times):.2f} s; all non-readers by {all_cut_off:.2f} s; {len(statuses)} probe echoes"
            )
            assert all_cut_off < timers.dimse_timeout + timers.idle_timeout + SLACK, all_cut_off
            # Each non-reader was cut off by a timer (idle, as it is silent once our writes block;
            # or the write timeout, when the runner's own write to it blocks first).
            cut = {
                e["assoc"]
                for e in logs
                if e.get("calling_ae") == "NONREADER"
                and e["event"] in ("association_idle_timeout", "association_write_timeout")
            }
            assert len(cut) == NON_READERS, cut
            # Sockets back to the count before the flood; other descriptors may only be the index's
            # pooled read connections that the C-GETs opened (database + WAL each).
            assert sockets() <= sockets_before
            assert len(open_fds()) <= fds_before + 2 * QUERY_CONNECTIONS
    errors = [e for e in logs if e["log_level"] == "error"]
    assert not errors, errors[:3]
