"""Kill `dicomd serve` under load and count what an SCU was told was stored but is not.

Shared by tests/reliability/test_crash.py (a few cycles) and bench/crash.py (many cycles, a table).

One cycle: the server runs (`python -m dicomd.cli serve --config ...`, JSON logs on stderr, store and
index in a work directory, 127.0.0.1 on a fixed free port); several DCMTK `storescu -v` processes
push fresh instances at once; once a chosen number of files has been started (counted from the SCUs'
output as it arrives, so the kill lands while stores are in flight, at a different point each time)
the server gets SIGKILL; the SCUs see their associations drop and exit; the server is started again
(no clean-shutdown marker: start-up reconcile runs and logs `startup_reconciled`), and everything
acknowledged so far is checked against the disk and the index:

- acknowledged-but-missing: storescu printed "Received Store Response (Success)" for the file, and
  the index has no row for its SOP Instance UID;
- acknowledged-but-corrupt: the row's file hashes to something else than the row's sha256, or its
  data set (after the File Meta) differs from the data set of the file that was sent;
- indexed-but-file-missing: any index row whose file is not there;
- orphans adopted: files start-up found without a row (stored, never acknowledged) and indexed.

The first three must be 0 in every cycle. Every process started here is ended by its PID.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from tests import dicomgen

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
AE_TITLE = "DICOMD"


def find_storescu() -> str | None:
    """DCMTK's storescu (an ELF binary), passing over pynetdicom's same-named Python script."""
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin"]:
        path = shutil.which("storescu", path=directory) if directory else None
        if path is None:
            continue
        with open(path, "rb") as f:
            if f.read(2) == b"#!":
                continue
        return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# --- the data ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    """A file an SCU sends: its SOP Instance UID and the sha256 of its data set bytes."""

    path: Path
    sop_instance_uid: str
    dataset_sha256: str


def generate(directory: Path, count: int, *, seed: int = 0) -> list[Sent]:
    """`count` instances: CT slices of 128 KiB and small SR/KOS/GSPS/SC objects, alternating."""
    directory.mkdir(parents=True, exist_ok=True)
    ct = dicomgen.ct_series(directory / "ct", (count + 1) // 2, size_bytes=128 * 1024, seed=seed)
    small = dicomgen.small_instances(directory / "small", count // 2, seed=seed)
    paths = [p for pair in zip(ct, small, strict=False) for p in pair]
    paths += ct[len(small) :]
    return [describe(p) for p in paths[:count]]


def describe(path: Path) -> Sent:
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    return Sent(path, uid, hashlib.sha256(dicomgen.dataset_bytes(path)).hexdigest())


# --- the server --------------------------------------------------------------------------------


def write_config(workdir: Path, port: int, **server: Any) -> Path:
    lines = ["[server]", f'ae_title = "{AE_TITLE}"', f'host = "{HOST}"', f"port = {port}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in server.items()]
    lines += ["", "[storage]", f'root = "{workdir / "store"}"']
    lines += ["", "[index]", f'path = "{workdir / "index.sqlite"}"']
    lines += ["", "[log]", 'format = "json"', ""]
    config = workdir / "dicomd.toml"
    config.write_text("\n".join(lines))
    return config


# Log lines kept by Server: start-up, and anything at error level.
_KEPT = (b'"dicomd_ready"', b'"startup_reconciled"', b'"level": "error"', b'"level": "critical"')


class Server:
    """`python -m dicomd.cli serve` in a subprocess; its JSON log lines are read as they come."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait for `dicomd_ready`; the seconds it took (start-up reconcile included)."""
        assert self.proc is None or self.proc.poll() is not None
        self.events = []
        self._ready.clear()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TCP_NODELAY": "1"}
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicomd.cli", "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"dicomd did not start: {self.tail()}")
        return time.monotonic() - started

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        with self.log.open("ab") as out:
            for raw in proc.stderr:
                out.write(raw)
                # Only the lines we look for are parsed and kept (a soak run logs ~10^6 lines).
                if not any(word in raw for word in _KEPT):
                    continue
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.events.append(event)
                    if event.get("event") == "dicomd_ready":
                        self._ready.set()
        self._ready.set()  # exited: whoever waits learns it from poll()

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("event") == name), None)

    def kill(self) -> None:
        """SIGKILL, by PID: no shutdown, no marker, whatever was in flight stays in flight."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._join()

    def stop(self, grace: float = 30.0) -> int:
        """SIGTERM (graceful: drain, marker), SIGKILL after `grace` seconds."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._join()
        return self.proc.returncode

    def _join(self) -> None:
        if self._reader is not None:
            self._reader.join(10)

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])


# --- the SCUs ----------------------------------------------------------------------------------

_SENDING = re.compile(r"Sending file: (.+)$")
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


class Progress:
    """Files started by all SCUs so far; the killer waits on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.started = 0

    def bump(self) -> None:
        with self._cond:
            self.started += 1
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float, done: Callable[[], bool]) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.started >= n or done(), timeout)


class Scu:
    """One `storescu -v` process; its output is parsed line by line as it arrives."""

    def __init__(
        self,
        storescu: str,
        port: int,
        aet: str,
        files: Sequence[Sent],
        progress: Progress,
        log: Path,
    ) -> None:
        self.files = {str(f.path): f for f in files}
        self.acknowledged: list[Sent] = []
        self.statuses: dict[str, str] = {}
        self._progress = progress
        self._log = log
        argv = [
            storescu,
            "-v",
            "-aet",
            aet,
            "-aec",
            AE_TITLE,
            "-to",
            "20",
            "-ta",
            "20",
            "-td",
            "20",
        ]
        argv += [HOST, str(port), *self.files]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        current: str | None = None
        with self._log.open("ab") as out:
            for raw in self.proc.stdout:
                out.write(raw)
                line = raw.decode(errors="replace").rstrip()
                if m := _SENDING.search(line):
                    current = m.group(1)
                    self._progress.bump()
                elif (m := _RESPONSE.search(line)) and current is not None:
                    self.statuses[current] = m.group(1)
                    if m.group(1) == "Success" and current in self.files:
                        self.acknowledged.append(self.files[current])
                    current = None

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # ours, by PID
            self.proc.wait()
        self._thread.join(10)
        return self.proc.returncode


# --- the check ---------------------------------------------------------------------------------


@dataclass
class Check:
    acknowledged: int = 0
    missing: int = 0  # acknowledged, no index row
    corrupt: int = 0  # acknowledged, file hash or data set differs
    dangling: int = 0  # index row, no file
    indexed: int = 0
    integrity: str = ""
    problems: list[str] = field(default_factory=list)


def check(workdir: Path, acknowledged: dict[str, Sent]) -> Check:
    """Compare what was acknowledged with the index and the files (the server may be running)."""
    result = Check(acknowledged=len(acknowledged))
    store = workdir / "store"
    db = sqlite3.connect(workdir / "index.sqlite", timeout=30)
    try:
        rows = {
            uid: (relpath, sha)
            for uid, relpath, sha in db.execute(
                "SELECT sop_instance_uid, relpath, sha256 FROM instance"
            )
        }
        result.integrity = str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()
    result.indexed = len(rows)
    for uid, (relpath, _sha) in rows.items():
        if not (store / relpath).is_file():
            result.dangling += 1
            result.problems.append(f"indexed but no file: {uid} {relpath}")
    for uid, sent in acknowledged.items():
        row = rows.get(uid)
        if row is None:
            result.missing += 1
            result.problems.append(f"acknowledged but not indexed: {uid} ({sent.path.name})")
            continue
        path = store / row[0]
        try:
            content = path.read_bytes()
        except OSError:
            continue  # counted as dangling above
        stored_dataset = dicomgen.dataset_bytes(path)
        if (
            hashlib.sha256(content).hexdigest() != row[1]
            or hashlib.sha256(stored_dataset).hexdigest() != sent.dataset_sha256
        ):
            result.corrupt += 1
            result.problems.append(f"acknowledged but corrupt: {uid} ({sent.path.name})")
    return result


# --- one cycle ---------------------------------------------------------------------------------


@dataclass
class Cycle:
    number: int
    sent: int = 0
    acknowledged: int = 0  # in this cycle
    started_at_kill: int = 0
    restart_s: float = 0.0
    reconciled: dict[str, Any] = field(default_factory=dict)
    check: Check = field(default_factory=Check)
    scu_exit_codes: list[int] = field(default_factory=list)


class CrashRun:
    """A work directory, a server on a fixed port, and the ledger of acknowledged instances."""

    def __init__(self, workdir: Path, storescu: str, *, scus: int = 3, **server: Any) -> None:
        self.workdir = workdir
        self.storescu = storescu
        self.scus = scus
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.server = Server(write_config(workdir, self.port, **server), workdir / "server.log")
        self.acknowledged: dict[str, Sent] = {}
        self.cycles: list[Cycle] = []

    def cycle(
        self, files: Sequence[Sent], rng: random.Random, *, scu_timeout: float = 60.0
    ) -> Cycle:
        """Push `files` from the SCUs, SIGKILL the server mid-way, restart it, check everything."""
        cycle = Cycle(len(self.cycles) + 1, sent=len(files))
        if self.server.proc is None or self.server.proc.poll() is not None:
            self.server.start()
        progress = Progress()
        per_scu = -(-len(files) // self.scus)
        batches = [files[i * per_scu : (i + 1) * per_scu] for i in range(self.scus)]
        scus = [
            Scu(
                self.storescu,
                self.port,
                f"CRASH{cycle.number}_{i + 1}",
                batch,
                progress,
                self.workdir / f"storescu-{cycle.number}-{i + 1}.log",
            )
            for i, batch in enumerate(batches)
            if batch
        ]
        # Kill once a random share of the files has been started, plus a few ms: mid-dataset,
        # mid-fsync, mid-commit, between a commit and its response; each cycle somewhere else.
        target = rng.randint(max(1, len(files) // 10), max(1, len(files) * 3 // 4))
        progress.wait_for(target, scu_timeout, lambda: not any(s.running for s in scus))
        time.sleep(rng.random() * 0.05)  # the random moment itself, not a synchronisation
        cycle.started_at_kill = progress.started
        self.server.kill()
        cycle.scu_exit_codes = [s.wait(scu_timeout) for s in scus]
        for scu in scus:
            cycle.acknowledged += len(scu.acknowledged)
            for sent in scu.acknowledged:
                self.acknowledged[sent.sop_instance_uid] = sent
        cycle.restart_s = self.server.start()
        cycle.reconciled = dict(self.server.event("startup_reconciled") or {})
        cycle.check = check(self.workdir, self.acknowledged)
        self.cycles.append(cycle)
        return cycle

    def finish(self) -> Check:
        """Stop the server gracefully and check once more, from a quiet disk."""
        self.server.stop()
        return check(self.workdir, self.acknowledged)

    def close(self) -> None:
        self.server.stop(grace=5.0)
