"""The systemd unit: systemd's own checks (verify, security, sysusers), the properties dicomd relies
on, and dicomd actually serving under the unit's MemoryDenyWriteExecute=yes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomd.config import Config
from tests.conftest import IN_CI, free_port

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "dicomd.service"
SYSUSERS = ROOT / "systemd" / "dicomd.sysusers"
INSTALLED_EXEC = "/opt/dicomd/bin/dicomd"


def require_systemd_tool(name: str) -> str:
    """A tool of Debian's `systemd` package; missing: fail under CI=true, skip elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: install systemd (apt-get install systemd)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (a key may repeat), comments and blank lines dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def dicomd_command() -> list[str]:
    """This environment's dicomd: the console script beside the interpreter, else `-m`."""
    script = Path(sys.executable).parent / "dicomd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "dicomd.cli"]


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's dicomd instead of /opt/dicomd: verify
    checks that the executable exists, and nothing is installed in /opt here."""
    text = UNIT.read_text()
    assert text.count(f"ExecStart={INSTALLED_EXEC} ") == 1
    text = text.replace(f"ExecStart={INSTALLED_EXEC}", "ExecStart=" + " ".join(dicomd_command()))
    copy = tmp_path / "dicomd.service"
    copy.write_text(text)
    return copy


# -- systemd's own checks --------------------------------------------------------------------------


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = require_systemd_tool("systemd-analyze")
    result = subprocess.run(
        [tool, "verify", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    # verify also reports unknown keys and bad values on stderr without failing.
    assert "dicomd.service" not in result.stderr, result.stderr


def test_systemd_analyze_verify_catches_a_missing_executable() -> None:
    # The check the copy above works around is real: the unit as shipped names /opt/dicomd.
    if Path(INSTALLED_EXEC).exists():
        pytest.skip(f"{INSTALLED_EXEC} is installed here")
    tool = require_systemd_tool("systemd-analyze")
    result = subprocess.run([tool, "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert INSTALLED_EXEC in result.stderr


def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    tool = require_systemd_tool("systemd-analyze")
    result = subprocess.run(
        [tool, "security", "--offline=yes", str(unit_for_this_machine(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert m is not None, result.stdout + result.stderr
    # 0 is a fully locked-down unit, 10 an unprotected one; what is left is network access and
    # CAP_NET_BIND_SERVICE, which a DICOM server needs (1.6 when written).
    assert float(m.group(1)) <= 2.0, result.stdout


def test_sysusers_creates_the_dicomd_user(tmp_path: Path) -> None:
    tool = require_systemd_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [tool, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    [entry] = [
        e for e in (tmp_path / "etc/passwd").read_text().splitlines() if e.startswith("dicomd:")
    ]
    _name, _pw, uid, gid, _gecos, home, shell = entry.split(":")
    assert 0 < int(uid) < 1000 and 0 < int(gid) < 1000  # a system user
    assert (home, shell) == ("/var/lib/dicomd", "/usr/sbin/nologin")
    assert re.search(r"^dicomd:x:\d+:", (tmp_path / "etc/group").read_text(), re.M)


# -- what dicomd relies on -------------------------------------------------------------------------


def test_notify_and_watchdog(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30"]


def test_stop_timeout_outlasts_the_drain(unit: dict[str, dict[str, list[str]]]) -> None:
    [stop] = unit["Service"]["TimeoutStopSec"]
    assert float(stop) > Config().server.shutdown_timeout


def test_exec_lines(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    assert service["ExecStart"] == [f"{INSTALLED_EXEC} serve --config /etc/dicomd/dicomd.toml"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["Restart"] == ["on-failure"]


def test_user_and_directories(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    # The sysusers.d file defines the user the unit runs as.
    assert service["User"] == ["dicomd"]
    assert SYSUSERS.read_text().count("\nu dicomd ") == 1
    assert service["StateDirectory"] == ["dicomd"]
    assert service["ConfigurationDirectory"] == ["dicomd"]
    assert service["WorkingDirectory"] == ["%S/dicomd"]


def test_hardening(unit: dict[str, dict[str, list[str]]]) -> None:
    service = unit["Service"]
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallArchitectures": "native",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "RestrictNamespaces": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
    }
    assert {k: service.get(k, [None])[-1] for k in expected} == expected


# -- dicomd under MemoryDenyWriteExecute -----------------------------------------------------------

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1

# Turn on the kernel's W^X for this process and what it execs, then exec the command (argv[1:]).
# systemd >= 253 implements MemoryDenyWriteExecute=yes with this prctl when the kernel has it
# (Linux 6.3); older systemd with a seccomp filter of the same effect on mmap/mprotect.
_MDWE_EXEC = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""


def under_mdwe(argv: list[str], stderr: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _MDWE_EXEC, *argv], stderr=stderr)


def test_mdwe_is_in_force_for_the_executed_process() -> None:
    # The control: under MDWE a writable and executable mapping is refused after the exec.
    probe = (
        "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"
    )
    proc = under_mdwe([sys.executable, "-c", probe], stderr=subprocess.PIPE)
    _out, err = proc.communicate(timeout=30)
    if proc.returncode == 77:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 1
    assert b"PermissionError" in err


def write_config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "dicomd.toml"
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nshutdown_timeout = 5.0\nuvloop = true\n'
        f'[storage]\nroot = "{tmp_path / "store"}"\n'
        f'[index]\npath = "{tmp_path / "index.sqlite"}"\n'
        '[log]\nformat = "json"\n'
    )
    return config


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dicomd exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"dicomd did not listen on {port} within {timeout} s")


@pytest.fixture
def stop_process() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_dicomd_serves_under_memory_deny_write_execute(
    tmp_path: Path, stop_process: list[subprocess.Popen[bytes]]
) -> None:
    pynetdicom = pytest.importorskip("pynetdicom")
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    from dicomd.storage.files import FileStore
    from tests.dicomgen import write_instance

    port = free_port()
    config = write_config(tmp_path, port)
    argv = [*dicomd_command(), "serve", "--config", str(config)]
    if argv[0] != sys.executable:  # the console script: exec it through its interpreter
        argv = [sys.executable, *argv]
    proc = under_mdwe(argv, stderr=subprocess.PIPE)
    stop_process.append(proc)
    if proc.poll() == 77:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux < 6.3)")
    wait_for_port(port, proc)

    path = write_instance(
        tmp_path / "ct.dcm",
        sop_class_uid=CTImageStorage,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        size_bytes=32 * 1024,
    )
    ae = pynetdicom.AE(ae_title="MDWE_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMD")
    assert assoc.is_established
    import pydicom

    ds = pydicom.dcmread(path)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    assert (tmp_path / "store" / FileStore.relpath_for(str(ds.SOPInstanceUID))).is_file()

    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
