"""sd_notify and the watchdog against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomd.systemd import Notifier, cancel_watchdog, watchdog, watchdog_interval


class Manager:
    """A bound datagram socket read by a thread, which stamps each datagram with its arrival time
    (a thread, so that arrivals are seen while the test blocks its event loop)."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.02)
        self.received: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data))

    def messages(self, timeout: float = 1.0, count: int = 1) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return [data for _t, data in self.received]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    path = tmp_path / "notify"
    assert len(str(path)) < 100, "AF_UNIX paths are limited to 107 bytes"
    m = Manager(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield m
    m.close()


@pytest.fixture
def abstract_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Manager]:
    name = f"dicomd-test-{uuid.uuid4().hex}"
    m = Manager(b"\0" + name.encode())
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield m
    m.close()


@pytest.fixture(autouse=True)
def _no_inherited_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test run itself may be a systemd service: its variables must not leak into the tests.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


# -- the datagrams ---------------------------------------------------------------------------------


def test_ready_with_status_is_one_datagram(manager: Manager) -> None:
    with Notifier.from_environment() as n:
        assert n.enabled
        assert n.ready("serving DICOMD on port 11112")
    assert manager.messages() == [b"READY=1\nSTATUS=serving DICOMD on port 11112"]


def test_each_message_exactly(manager: Manager) -> None:
    with Notifier.from_environment() as n:
        assert n.ready()
        assert n.status("3 associations")
        assert n.watchdog_ping()
        assert n.stopping()
        assert n.stopping("draining 2 associations")
        assert n.extend_timeout(12.5)
        assert n.notify("ERRNO=5", "STATUS=x")
    assert manager.messages(count=7) == [
        b"READY=1",
        b"STATUS=3 associations",
        b"WATCHDOG=1",
        b"STOPPING=1",
        b"STOPPING=1\nSTATUS=draining 2 associations",
        b"EXTEND_TIMEOUT_USEC=12500000",
        b"ERRNO=5\nSTATUS=x",
    ]


def test_reloading_carries_the_monotonic_clock(manager: Manager) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with Notifier.from_environment() as n:
        assert n.reloading("reloading configuration")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [message] = manager.messages()
    m = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)\nSTATUS=reloading configuration", message)
    assert m is not None, message
    assert before <= int(m.group(1)) <= after


def test_a_newline_cannot_start_a_field_of_its_own(manager: Manager) -> None:
    with Notifier.from_environment() as n:
        n.status("line one\nREADY=1")
    assert manager.messages() == [b"STATUS=line one READY=1"]


def test_abstract_namespace_socket(abstract_manager: Manager) -> None:
    with Notifier.from_environment() as n:
        assert n.ready()
        assert n.watchdog_ping()
    assert abstract_manager.messages(count=2) == [b"READY=1", b"WATCHDOG=1"]


# -- no manager, a broken one ----------------------------------------------------------------------


def test_no_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    n = Notifier.from_environment()
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog_ping()
    assert n._sock is None  # not even a socket was made
    n.close()


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_unusable_notify_socket_is_a_no_op(value: str) -> None:
    n = Notifier(value)
    assert not n.enabled
    assert not n.ready()


def test_a_vanished_manager_is_reported_not_raised(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens"))
    assert n.enabled
    assert n.ready() is False
    n.close()


def test_a_manager_that_does_not_read_never_blocks_us(tmp_path: Path) -> None:
    path = tmp_path / "full"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        with Notifier(str(path)) as n:
            started = time.monotonic()
            results = [n.watchdog_ping() for _ in range(5000)]
            elapsed = time.monotonic() - started
    # The receive queue fills (net.unix.max_dgram_qlen, a few hundred KB): then False, at once.
    assert results[0] is True
    assert results[-1] is False
    assert elapsed < 2.0


def test_unset_removes_the_variable_from_the_environment(manager: Manager) -> None:
    n = Notifier.from_environment(unset=True)
    assert "NOTIFY_SOCKET" not in os.environ
    assert n.ready()
    n.close()
    assert manager.messages() == [b"READY=1"]


# -- the watchdog interval -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{pid}"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "{other}"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "250000"}, 0.25),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    pid = os.getpid()
    env = {k: v.format(pid=pid, other=pid + 1) for k, v in env.items()}
    assert watchdog_interval(env) == expected


def test_watchdog_interval_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0


# -- the watchdog task -----------------------------------------------------------------------------

INTERVAL = 0.1  # WatchdogSec: pings every 0.05 s
PERIOD = INTERVAL / 2


async def test_no_watchdog_task_without_watchdog_usec(manager: Manager) -> None:
    assert watchdog(asyncio.get_running_loop()) is None


async def test_no_watchdog_task_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    assert watchdog(asyncio.get_running_loop()) is None


async def test_no_watchdog_task_for_another_process(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog(asyncio.get_running_loop()) is None


def _pings(manager: Manager) -> list[float]:
    assert all(data == b"WATCHDOG=1" for _t, data in manager.received)
    return [t for t, _data in manager.received]


async def test_watchdog_pings_at_half_the_interval(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(int(INTERVAL * 1_000_000)))
    task = watchdog(asyncio.get_running_loop())
    assert task is not None
    started = time.monotonic()
    await asyncio.sleep(10 * PERIOD)
    await cancel_watchdog(task)
    assert task.done()
    pings = _pings(manager)
    # One at once, then one per period: 11 in 10 periods, give or take scheduling.
    assert 8 <= len(pings) <= 12, pings
    assert pings[0] - started < PERIOD / 2
    gaps = sorted(b - a for a, b in itertools.pairwise(pings))
    median = gaps[len(gaps) // 2]
    assert 0.8 * PERIOD <= median <= 1.5 * PERIOD, gaps
    # Cancelled: no more pings.
    count = len(manager.received)
    await asyncio.sleep(3 * PERIOD)
    assert len(manager.received) == count


async def test_watchdog_stops_pinging_while_the_loop_is_blocked(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", str(int(INTERVAL * 1_000_000)))
    task = watchdog(asyncio.get_running_loop())
    assert task is not None
    try:
        await asyncio.sleep(4 * PERIOD)
        blocked_from = time.monotonic()
        time.sleep(3 * PERIOD)  # noqa: ASYNC251 -- the stalled event loop under test
        blocked_until = time.monotonic()
        await asyncio.sleep(4 * PERIOD)
    finally:
        await cancel_watchdog(task)
    pings = _pings(manager)
    before = [t for t in pings if t < blocked_from]
    # A ping sent just before the block may be read a moment later by the manager's thread.
    during = [t for t in pings if blocked_from + PERIOD / 5 < t < blocked_until]
    after = [t for t in pings if t >= blocked_until]
    assert len(before) >= 3, pings
    assert during == [], (blocked_from, blocked_until, pings)
    assert len(after) >= 3, pings  # the loop is back, and so are the pings


async def test_watchdog_with_an_explicit_notifier(manager: Manager) -> None:
    path = os.environ["NOTIFY_SOCKET"]
    with Notifier(path) as n:
        task = watchdog(asyncio.get_running_loop(), n, {"WATCHDOG_USEC": "100000"})
        assert task is not None
        assert task.get_name() == "systemd-watchdog"
        await asyncio.sleep(PERIOD / 2)
        await cancel_watchdog(task)
    assert manager.messages() == [b"WATCHDOG=1"]


# -- `dicomd serve` as systemd runs it -------------------------------------------------------------


def _serve(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    from tests.conftest import free_port
    from tests.service.test_systemd_unit import dicomd_command, write_config

    port = free_port()
    config = write_config(tmp_path, port)
    proc = subprocess.Popen(
        [*dicomd_command(), "serve", "--config", str(config)],
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
    )
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> bytes:
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return err


def test_dicomd_serve_notifies_ready_watchdog_and_stopping(
    manager: Manager, tmp_path: Path
) -> None:
    proc, port = _serve(
        tmp_path, {"NOTIFY_SOCKET": os.environ["NOTIFY_SOCKET"], "WATCHDOG_USEC": "200000"}
    )
    try:
        deadline = time.monotonic() + 30
        while not any(d.startswith(b"READY=1") for _t, d in manager.received):
            assert proc.poll() is None, "dicomd exited before READY=1"
            assert time.monotonic() < deadline, "no READY=1 within 30 s"
            time.sleep(0.02)
        # READY=1 is sent once the port accepts associations.
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        time.sleep(0.6)  # 0.1 s per ping: about 6
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    messages = [d for _t, d in manager.received]
    ready = next(i for i, d in enumerate(messages) if d.startswith(b"READY=1"))
    assert messages[ready].startswith(b"READY=1\nSTATUS=")
    assert str(port).encode() in messages[ready]
    pings = [d for d in messages[ready:] if d == b"WATCHDOG=1"]
    assert len(pings) >= 3, messages
    stopping = [i for i, d in enumerate(messages) if d.startswith(b"STOPPING=1")]
    assert len(stopping) == 1, messages
    # No ping after STOPPING=1: systemd no longer expects any.
    assert b"WATCHDOG=1" not in messages[stopping[0] + 1 :]


def test_dicomd_serve_leaves_another_process_s_watchdog_alone(
    manager: Manager, tmp_path: Path
) -> None:
    env = {
        "NOTIFY_SOCKET": os.environ["NOTIFY_SOCKET"],
        "WATCHDOG_USEC": "200000",
        "WATCHDOG_PID": "1",  # the watchdog belongs to another process
    }
    proc, _port = _serve(tmp_path, env)
    try:
        deadline = time.monotonic() + 30
        while not any(d.startswith(b"READY=1") for _t, d in manager.received):
            assert proc.poll() is None, "dicomd exited before READY=1"
            assert time.monotonic() < deadline, "no READY=1 within 30 s"
            time.sleep(0.02)
        time.sleep(0.4)
    finally:
        err = _stop(proc)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    assert b"WATCHDOG=1" not in [d for _t, d in manager.received]
