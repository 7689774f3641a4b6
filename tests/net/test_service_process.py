"""dicomd as a service process: unprivileged, READY over $NOTIFY_SOCKET, serves a store, a find and a
move, reloads on SIGHUP, shows all of it in /metrics, drains and stops on SIGTERM in time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomd.dimse import status
from tests.conftest import free_port
from tests.interop.test_retrieve_interop import (
    _Destination,
    _identifier,
    _pynetdicom_move,
    make_study,
    uids,
)
from tests.interop.test_store_interop import _pynetdicom_store

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def _pynetdicom_find(port: int, identifier: Dataset) -> list[int]:
    from pynetdicom import AE

    ae = AE(ae_title="PYFIND")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMD")
    assert assoc.is_established
    try:
        return [int(s.Status) for s, _ in assoc.send_c_find(identifier, STUDY_ROOT_FIND)]
    finally:
        assoc.release()


def _demote() -> None:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


def _reachable_by_others(path: str) -> bool:
    """Whether a user other than root can execute `path` (every parent searchable)."""
    p = Path(path).resolve()
    return all(os.stat(d).st_mode & 0o001 for d in (*p.parents, p))


def _unprivileged_launch() -> tuple[list[str], Any, str]:
    """How to start the server without privileges: as nobody when the interpreter is reachable,
    else (an interpreter under root's home) as root with no capabilities, as the unit's
    CapabilityBoundingSet and NoNewPrivileges make it: (argv prefix, preexec_fn, what to check)."""
    if os.geteuid() != 0:
        return [], None, "uid"
    if _reachable_by_others(sys.executable):
        return [], _demote, "uid"
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed to drop capabilities"
    return [setpriv, "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all"], None, "caps"


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


async def _events(
    stream: asyncio.StreamReader, sink: list[dict[str, Any]], seen: dict[str, asyncio.Event]
) -> None:
    while line := await stream.readline():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            sink.append(record)
            if record.get("event") in seen:
                seen[record["event"]].set()


async def test_service_lifecycle(tmp_path: Path) -> None:
    await asyncio.to_thread(tmp_path.chmod, 0o777)  # the unprivileged server writes here
    files = await asyncio.to_thread(make_study, tmp_path / "in", n_series=1, per_series=3)
    dest = await asyncio.to_thread(_Destination)
    port, metrics_port = free_port(), free_port()
    toml = tmp_path / "dicomd.toml"
    toml.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nshutdown_timeout = 3.0\n'
        f'[storage]\nroot = "{tmp_path / "data" / "store"}"\n'
        f'[index]\npath = "{tmp_path / "data" / "index.sqlite"}"\n'
        f'[metrics]\nenabled = true\nport = {metrics_port}\n[log]\nformat = "json"\n'
        f'[[remote]]\nae_title = "PYDEST"\nhost = "127.0.0.1"\nport = {dest.port}\n'
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify.sock"
    notify.bind(str(notify_path))
    notify_path.chmod(0o777)
    notify.setblocking(False)
    prefix, preexec, check = _unprivileged_launch()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "PYTHONPATH": str(Path.cwd())}
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "dicomd.cli", "serve", "--config", str(toml),
        stderr=asyncio.subprocess.PIPE, env=env, cwd=str(tmp_path), preexec_fn=preexec,
    )  # fmt: skip
    assert proc.stderr is not None
    events: list[dict[str, Any]] = []
    reloaded = asyncio.Event()
    reader = asyncio.create_task(_events(proc.stderr, events, {"config_reloaded": reloaded}))
    loop = asyncio.get_running_loop()
    try:
        ready = await asyncio.wait_for(loop.sock_recv(notify, 4096), 20)
        assert b"READY=1" in ready
        status_text = await asyncio.to_thread(Path(f"/proc/{proc.pid}/status").read_text)
        fields = dict(line.split(":", 1) for line in status_text.splitlines() if ":" in line)
        if check == "uid":
            assert fields["Uid"].split()[1] != "0", "dicomd runs as root"
        else:
            assert int(fields["CapEff"], 16) == 0, "dicomd holds capabilities"
            assert int(fields["CapBnd"], 16) == 0
            assert fields["NoNewPrivs"].strip() == "1"

        assert await asyncio.to_thread(_pynetdicom_store, port, files) == [0] * len(files)
        study = str(uids(files[0]).StudyInstanceUID)
        found = await asyncio.to_thread(
            _pynetdicom_find, port, _identifier("STUDY", StudyInstanceUID=study)
        )
        assert found == [status.PENDING, status.SUCCESS]
        moved = await asyncio.to_thread(
            _pynetdicom_move, port, "PYDEST", _identifier("STUDY", StudyInstanceUID=study)
        )
        assert moved[-1][0] == status.SUCCESS
        assert len(dest.received) == len(files)

        proc.send_signal(signal.SIGHUP)
        await asyncio.wait_for(reloaded.wait(), 15)

        def scrape(path: str) -> tuple[int, str]:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}{path}", timeout=5) as r:
                return r.status, r.read().decode()

        code, health = await asyncio.to_thread(scrape, "/healthz")
        assert (code, health.strip()) == (200, "ok")
        _code, text = await asyncio.to_thread(scrape, "/metrics")
        assert _metric(text, "dicomd_stored_instances_total") == len(files)
        assert _metric(text, "dicomd_dimse_operations_total", command="CFindRQ", status="0000") == 1
        assert _metric(text, "dicomd_dimse_operations_total", command="CMoveRQ", status="0000") == 1
        assert _metric(text, "dicomd_operation_seconds_count", operation="store") == len(files)
        assert _metric(text, "dicomd_operation_seconds_count", operation="find") == 1
        assert _metric(text, "dicomd_operation_seconds_count", operation="move") == 1
        assert _metric(text, "dicomd_associations_total", result="accepted") >= 3
        assert _metric(text, "dicomd_store_free_bytes") > 0

        started = loop.time()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            await proc.wait()
        assert loop.time() - started < 3.0 + 2.0  # shutdown_timeout plus slack
        assert proc.returncode == 0
        datagrams = []
        with contextlib.suppress(BlockingIOError):
            while True:
                datagrams.append(notify.recv(4096))
        # SIGHUP: RELOADING then READY again; SIGTERM: STOPPING (sd_notify(3)).
        assert [d.split(b"\n")[0] for d in datagrams] == [b"RELOADING=1", b"READY=1", b"STOPPING=1"]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        reader.cancel()
        notify.close()
        await asyncio.to_thread(dest.close)
    assert any(e.get("event") == "server_stopped" for e in events)


pytestmark = pytest.mark.interop
