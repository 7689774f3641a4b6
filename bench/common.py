"""What every benchmark needs: finding the peers, running processes we own, measuring a server.

Processes are started here and ended here, each by its PID (SIGTERM, then SIGKILL after a grace
period). Everything listens and connects on 127.0.0.1 only.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1_000_000


class BenchError(Exception):
    """A run that cannot go on (its reason becomes the row's FAILED text)."""


# -- peers ------------------------------------------------------------------------------------


def find_dcmtk(name: str) -> str | None:
    """DCMTK's executable `name` on PATH (then /usr/bin), passing over pynetdicom's Python apps.

    pynetdicom installs console scripts called storescp, storescu, echoscu, ... that shadow DCMTK's
    binaries on PATH; DCMTK's are ELF files, those are '#!' scripts.
    """
    directories = [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/local/bin"]
    for directory in directories:
        path = shutil.which(name, path=directory) if directory else None
        if path is None:
            continue
        with open(path, "rb") as f:
            if f.read(2) == b"#!":
                continue
        return path
    return None


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def version_of(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def dcmtk_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.split("$")[1].strip() if "$" in out else out.strip().splitlines()[0]


def dcmtk_env() -> dict[str, str]:
    # DCMTK keeps Nagle's algorithm on without TCP_NODELAY=1: each small exchange then waits for a
    # delayed ACK (~40 ms), which would measure the kernel's timer instead of the server.
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def git_revision() -> str:
    result = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or "unknown"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dicomd_revision": git_revision(),
    }


# -- processes we own -------------------------------------------------------------------------


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """End a process we started, by its PID: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextmanager
def spawned(
    argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A background process, its stdout and stderr in `log`, stopped when the block ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, cwd=cwd
        )
    try:
        yield proc
    finally:
        stop(proc)


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def wait_ready(
    proc: subprocess.Popen[bytes], echoscu: str, port: int, aet: str, log: Path, timeout: float
) -> None:
    """Wait until the server answers a C-ECHO (DCMTK echoscu), or fail with the reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode} at start: {tail(log, 1)}")
        echo = subprocess.run(
            [echoscu, "-q", "-to", "5", "-aet", "BENCH", "-aec", aet, HOST, str(port)],
            capture_output=True,
            env=dcmtk_env(),
            timeout=30,
            check=False,
        )
        if echo.returncode == 0:
            return
        time.sleep(0.1)
    raise BenchError(f"server did not answer C-ECHO within {timeout:.0f} s: {tail(log, 1)}")


# -- measuring a server's process tree --------------------------------------------------------


def tree(pid: int) -> list[int]:
    """pid and its live descendants (through /proc/PID/task/TID/children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


def machine_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine since boot, every core (/proc/stat's cpu
    line; idle and iowait count as not busy). Two readings give the share of the machine that
    was busy between them, whoever used it."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def busy_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Fraction of all cores busy between two machine_ticks() readings."""
    return (after[0] - before[0]) / max(after[1] - before[1], 1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the tree, including children it has waited for (cutime, cstime)."""
    ticks = 0
    for member in tree(pid):
        try:
            with open(f"/proc/{member}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / CLOCK_TICKS


def status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Monitor:
    """Samples the tree's resident memory every `interval` seconds in a thread."""

    pid: int
    interval: float = 0.05
    peak_rss_bytes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Monitor:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # The root's high-water mark catches a peak between two samples.
        self.peak_rss_bytes = max(self.peak_rss_bytes, status_kib(self.pid, "VmHWM") * 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = sum(status_kib(member, "VmRSS") for member in tree(self.pid)) * 1024
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
            self._stop.wait(self.interval)


# -- repeated runs ----------------------------------------------------------------------------


class Timed(Protocol):
    status: str  # "ok" or "FAILED"
    wall_s: float


K = TypeVar("K", bound=Hashable)
R = TypeVar("R", bound=Timed)


def fastest_in_rounds(repeat: int, jobs: Sequence[tuple[K, Callable[[int], R]]]) -> dict[K, R]:
    """Each job's fastest of `repeat` runs (a job is called with the attempt number, from 1).

    The jobs run in rounds (a, b, c, a, b, c, ...), not each one's runs in a block: this machine's
    speed drifts within minutes, and a ratio of two jobs' figures only means something when both
    come from the same minutes. A job whose run fails keeps that run and is not run again.

    Before each run, os.sync(): what earlier runs (or the loading of data) left in the page cache
    is written back then, not during the next run, which would pay for the writes of a server
    that does not fsync."""
    best: dict[K, R] = {}
    for attempt in range(1, repeat + 1):
        for key, job in jobs:
            kept = best.get(key)
            if kept is not None and kept.status != "ok":
                continue
            os.sync()
            run = job(attempt)
            if kept is None or run.status != "ok" or run.wall_s < kept.wall_s:
                best[key] = run
    return best


# -- reporting --------------------------------------------------------------------------------


def count_files(directory: Path, pattern: str = "*") -> int:
    return sum(1 for p in directory.rglob(pattern) if p.is_file()) if directory.exists() else 0


def tree_bytes(paths: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO = sys.stdout
) -> None:
    """Left-aligned first column, right-aligned numbers; a FAILED row's reason runs on."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths[0] = max(widths[0], len(row[0]))
        if len(row) == len(headers):
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=False)]
        return "  ".join([first, *rest])

    print(line(headers), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in rows:
        print(
            line(row) if len(row) == len(headers) else f"{row[0].ljust(widths[0])}  {row[1]}",
            file=out,
        )


# What the runs receive stays on disk until the benchmark ends, rather than being deleted after
# each run, whenever the disk has room. On an ext4 volume without a journal (the benchmark VM's),
# allocating an inode steps over every inode of the block group freed in the last 60-360 s
# (fs/ext4/ialloc.c, recently_deleted()), one by one, on every allocation. Deleting a run's few
# hundred or thousand files thus made the next run's file creations cost up to a millisecond of
# kernel time each, charged to whichever server ran next, whatever it was.
DISK_SPARE = 512 * MB


def keeps_runs(tmp: Path, need_bytes: int) -> bool:
    """Whether the runs' output can stay until the end: the disk under `tmp` has room for
    `need_bytes` (all runs' output) with a fifth and DISK_SPARE to spare. Prints the choice."""
    free = shutil.disk_usage(tmp).free
    keep = free > need_bytes * 1.2 + DISK_SPARE
    said = f"disk: {free / 1e9:.1f} GB free, the runs receive {need_bytes / 1e9:.1f} GB: "
    if keep:
        print(said + "kept until the end (no deletion between runs)")
    else:
        print(
            said + "each run's output deleted after it; on some filesystems (ext4 without a "
            "journal) that makes the next run's file creations slower, whichever server it is"
        )
    return keep


SHM = Path("/dev/shm")


@contextmanager
def receiving_dir(name: str, fallback: Path, need_bytes: int, *, keep: bool) -> Iterator[Path]:
    """Where the clients that receive (getscu, storescp as a C-MOVE destination) write: a fresh
    directory on tmpfs when /dev/shm has room for `need_bytes` with DISK_SPARE to spare, else
    `fallback`. Prints the choice; the tmpfs directory is removed afterwards unless `keep`.

    A retrieve benchmark measures the servers; the receivers are the same DCMTK tools for all of
    them, and their disk only adds noise: with files kept, the kernel's writeback of earlier runs
    lands on later ones; with files deleted, ext4 without a journal makes the next creations slow
    (see DISK_SPARE above). tmpfs has neither."""
    free = shutil.disk_usage(SHM).free if SHM.is_dir() else 0
    if free > need_bytes + DISK_SPARE:
        with scratch(name, keep=keep, parent=SHM) as where:
            print(f"receivers write to tmpfs: {where}")
            yield where
        return
    print(
        f"receivers write to disk ({SHM} has {free / 1e9:.1f} GB free, "
        f"{(need_bytes + DISK_SPARE) / 1e9:.1f} GB wanted): the figures include its noise"
    )
    fallback.mkdir(parents=True, exist_ok=True)
    yield fallback  # under the benchmark's own scratch directory, removed with it


@contextmanager
def scratch(name: str, *, keep: bool, parent: Path | None = None) -> Iterator[Path]:
    """A fresh temporary directory for one benchmark run (in `parent`, else the system's temporary
    directory); removed afterwards unless `keep`."""
    tmp = Path(tempfile.mkdtemp(prefix=f"dicomd-bench-{name}-", dir=parent))
    try:
        yield tmp
    finally:
        if keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def print_checks(checks: Sequence[dict[str, Any]], group: str) -> None:
    """The targets' verdicts, one line each; `group` names the check's scenario/part field."""
    if not checks:
        return
    print("\ntargets:")
    for c in checks:
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[c["passed"]]
        value = "no result (a row failed)" if c["value"] is None else f"{c['value']:.2f}"
        note = f" ({c['note']})" if c.get("note") else ""
        print(f"  [{mark}] ({c[group]}) {c['check']}: {value}{note}")


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
