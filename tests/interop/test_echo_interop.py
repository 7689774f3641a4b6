"""C-ECHO against independent peers: DCMTK (echoscu, storescp) and pynetdicom, in both roles."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from dicomd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomd.dimse import status
from dicomd.net.requestor import echo
from tests.conftest import dcmtk_env, free_port, make_config, require_tool, run_server

pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[2]


async def run_tool(*argv: str, timeout: float = 30.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dcmtk_env(),
    )
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@asynccontextmanager
async def background(
    *argv: str, ready_port: int, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A process we started (a DCMTK peer unless `env` says otherwise), ready once `ready_port`
    accepts connections, ended by its PID when the block ends."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=dcmtk_env() if env is None else env,
    )
    try:
        async with asyncio.timeout(15):
            while True:
                try:
                    _r, w = await asyncio.open_connection("127.0.0.1", ready_port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                w.close()
                break
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_dcmtk_echoscu_against_dicomd() -> None:
    echoscu = require_tool("echoscu")
    async with run_server() as server:
        code, out = await run_tool(
            echoscu, "-v", "-aet", "ECHOSCU", "-aec", "DICOMD", "127.0.0.1", str(server.port)
        )
        assert code == 0, out
        assert "Received Echo Response (Success)" in out


async def test_dcmtk_echoscu_wrong_called_ae_is_rejected() -> None:
    echoscu = require_tool("echoscu")
    async with run_server() as server:
        code, out = await run_tool(
            echoscu, "-aet", "ECHOSCU", "-aec", "NOT_US", "127.0.0.1", str(server.port)
        )
        assert code != 0
        assert "Reason: Called AE Title Not Recognized" in out, out


async def test_dcmtk_echoscu_repeated_and_small_pdu() -> None:
    echoscu = require_tool("echoscu")
    async with run_server() as server:
        code, out = await run_tool(
            echoscu, "--repeat", "20", "--max-pdu", "4096", "-aec", "DICOMD",
            "127.0.0.1", str(server.port),
        )  # fmt: skip
        assert code == 0, out


async def test_dicomd_echo_cli_against_dcmtk_storescp(tmp_path: Path) -> None:
    storescp = require_tool("storescp")
    port = free_port()
    async with background(
        storescp, "-aet", "STORESCP", "-od", str(tmp_path), str(port), ready_port=port
    ):
        code, out = await run_tool(
            sys.executable, "-m", "dicomd.cli", "echo", "--aec", "STORESCP", "127.0.0.1", str(port)
        )
        assert code == 0, out
        assert "Success" in out


async def test_dicomd_echo_cli_fails_on_rejection_and_on_no_server(tmp_path: Path) -> None:
    storescp = require_tool("storescp")
    port = free_port()
    async with background(
        storescp, "--refuse", "-aet", "STORESCP", "-od", str(tmp_path), str(port), ready_port=port
    ):
        code, out = await run_tool(
            sys.executable, "-m", "dicomd.cli", "echo", "127.0.0.1", str(port)
        )
        assert code == 1, out
        assert "rejected" in out
    code, out = await run_tool(
        sys.executable, "-m", "dicomd.cli", "echo", "--timeout", "2", "127.0.0.1", str(free_port())
    )
    assert code == 1, out


def _pynetdicom_echo(port: int) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMD")
    assert assoc.is_established
    try:
        result = assoc.send_c_echo()
        return int(result.Status)
    finally:
        assoc.release()


async def test_dicomd_echo_cli_fails_cleanly_when_the_answer_is_late() -> None:
    """A pynetdicom SCP that answers the C-ECHO after 4 s, past `--timeout 1`: exit 1 with the
    reason on one line, not a traceback."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

    answered = asyncio.Event()
    loop = asyncio.get_running_loop()

    def late(_event: object) -> int:
        time.sleep(4)
        loop.call_soon_threadsafe(answered.set)
        return 0x0000

    ae = AE(ae_title="SLOWSCP")
    ae.add_supported_context(Verification)
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_ECHO, late)])
    assert scp is not None  # block=False: the server, running
    try:
        code, out = await run_tool(
            sys.executable, "-m", "dicomd.cli", "echo", "--timeout", "1", "--aec", "SLOWSCP",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert code == 1, out
        assert "no response within the DIMSE timeout" in out
        assert "Traceback" not in out
        assert not answered.is_set()  # it gave up before the answer
    finally:
        await asyncio.to_thread(scp.shutdown)


async def test_pynetdicom_scu_against_dicomd() -> None:
    async with run_server() as server:
        assert await asyncio.to_thread(_pynetdicom_echo, server.port) == 0


async def test_dicomd_requestor_against_pynetdicom_scp() -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

    ae = AE(ae_title="PYNETSCP")
    ae.add_supported_context(Verification)
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False)
    assert scp is not None  # block=False: the server, running
    try:
        result = await echo(
            "127.0.0.1",
            port,
            calling_ae_title="DICOMD",
            called_ae_title="PYNETSCP",
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version_name=IMPLEMENTATION_VERSION_NAME,
            timeout=10,
        )
        assert result == status.SUCCESS
    finally:
        await asyncio.to_thread(scp.shutdown)


async def test_dicomd_serve_process_sigterm(tmp_path: Path) -> None:
    """`dicomd serve` as a process: answers echoscu, then drains and exits 0 on SIGTERM."""
    echoscu = require_tool("echoscu")
    port = free_port()
    config = tmp_path / "dicomd.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nshutdown_timeout = 2.0\n'
        f'[storage]\nroot = "{tmp_path / "store"}"\n[index]\npath = "{tmp_path / "index.sqlite"}"\n'
        '[log]\nformat = "json"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dicomd.cli", "serve", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    try:
        async with asyncio.timeout(15):
            while True:
                try:
                    _r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
        code, out = await run_tool(echoscu, "-aec", "DICOMD", "127.0.0.1", str(port))
        assert code == 0, out
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _out, err = await proc.communicate()
        assert proc.returncode == 0
        log = err.decode()
        assert '"event": "dicomd_ready"' in log
        assert '"event": "association_accepted"' in log
        assert '"event": "server_stopped"' in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_config_check_of_example_and_bad_key(tmp_path: Path) -> None:
    root = ROOT
    code, out = await run_tool(
        sys.executable, "-m", "dicomd.cli", "check-config", str(root / "config" / "dicomd.toml")
    )
    assert code == 0, out
    assert '"ae_title": "DICOMD"' in out
    bad = tmp_path / "bad.toml"
    await asyncio.to_thread(bad.write_text, "[server]\nae_titel = 'X'\n")
    code, out = await run_tool(sys.executable, "-m", "dicomd.cli", "check-config", str(bad))
    assert code == 2
    assert "unknown key server.ae_titel" in out


async def test_make_config_helper_is_loopback() -> None:
    # Guards the test harness itself: servers in tests bind loopback only.
    assert make_config().server.host == "127.0.0.1"
