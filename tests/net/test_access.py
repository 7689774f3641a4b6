"""Access control (operations per calling AE, remote address check) and SIGHUP reload."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from dicomd.config import RemoteAE, SecurityConfig
from dicomd.dimse import status
from dicomd.ul.pdu import AssociateAC, AssociateRJ, PDataTF, ReleaseRQ
from tests.conftest import free_port, make_config, run_runtime
from tests.net.rawpeer import RawPeer, associate_rq, echo_pdata
from tests.net.test_server import our_echo


async def test_operations_per_calling_ae(tmp_path: Path) -> None:
    from tests.interop.test_retrieve_interop import STUDY_ROOT_GET, _identifier, _pynetdicom_get

    config = make_config()
    config = replace(config, security=SecurityConfig(operations={"PYGET": ("store",)}))
    async with run_runtime(config) as (server, _runtime):
        # C-ECHO is always allowed; C-GET is not among PYGET's operations.
        assert await our_echo(server.port, calling="PYGET") == status.SUCCESS
        statuses, received, _ = await asyncio.to_thread(
            _pynetdicom_get,
            server.port,
            STUDY_ROOT_GET,
            _identifier("STUDY", StudyInstanceUID="1.2"),
        )
        assert statuses == [status.REFUSED_NOT_AUTHORIZED]
        assert received == {}


async def test_remote_address_check() -> None:
    config = make_config()
    config = replace(
        config,
        # 192.0.2.1 is TEST-NET-1: only compared with the peer's address, never contacted.
        remote=(RemoteAE("LOOPER", "127.0.0.1", 104), RemoteAE("FARAWAY", "192.0.2.1", 104)),
        security=SecurityConfig(check_remote_address=True),
    )
    async with run_runtime(config) as (server, _runtime):
        assert await our_echo(server.port, calling="LOOPER") == status.SUCCESS
        assert await our_echo(server.port, calling="UNLISTED") == status.SUCCESS
        peer = await RawPeer.connect(server.port)
        rj = await peer.associate(associate_rq(calling="FARAWAY"))
        assert isinstance(rj, AssociateRJ)
        assert (int(rj.result), int(rj.source), int(rj.reason)) == (1, 1, 3)
        peer.close()


async def _wait_for_event(
    stream: asyncio.StreamReader, event: str, timeout: float = 10
) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            line = await stream.readline()
            assert line, f"server exited before logging {event}"
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event:
                return record  # type: ignore[no-any-return]


async def test_sighup_reloads_access_lists_without_dropping_associations(tmp_path: Path) -> None:
    port = free_port()
    toml = tmp_path / "dicomd.toml"

    def write(allowed: str, extra: str = "") -> None:
        toml.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
            f'[storage]\nroot = "{tmp_path / "store"}"\n[index]\npath = "{tmp_path / "i.sqlite"}"\n'
            f'[security]\nallowed_calling_aets = [{allowed}]\n[log]\nformat = "json"\n{extra}'
        )

    write('"OLD"')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dicomd.cli", "serve", "--config", str(toml),
        stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        await _wait_for_event(proc.stderr, "dicomd_ready", timeout=20)
        old = await RawPeer.connect(port)
        assert isinstance(await old.associate(associate_rq(calling="OLD")), AssociateAC)
        newcomer = await RawPeer.connect(port)
        assert isinstance(await newcomer.associate(associate_rq(calling="NEW")), AssociateRJ)
        newcomer.close()

        write('"NEW"', '[[remote]]\nae_title = "VIEWER"\nhost = "127.0.0.1"\nport = 104\n')
        proc.send_signal(signal.SIGHUP)
        record = await _wait_for_event(proc.stderr, "config_reloaded")
        assert record["remotes"] == 1
        assert await our_echo(port, calling="NEW") == status.SUCCESS
        # The association opened before the reload keeps working...
        await old.send(echo_pdata(message_id=5))
        assert isinstance(await old.receive(), PDataTF)
        # ...while a new one under the old title is now refused.
        again = await RawPeer.connect(port)
        assert isinstance(await again.associate(associate_rq(calling="OLD")), AssociateRJ)
        again.close()

        toml.write_text("[server\nbroken")
        proc.send_signal(signal.SIGHUP)
        await _wait_for_event(proc.stderr, "config_reload_failed")
        assert await our_echo(port, calling="NEW") == status.SUCCESS
        await old.send(ReleaseRQ())
        old.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0
