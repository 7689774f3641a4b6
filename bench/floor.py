"""What the durable C-STORE protocol's I/O alone costs on this filesystem, and the bound it sets.

Over one association a modality sends the next instance only after the answer to the last one, so
each instance's disk waits add up. A server that answers Success only once the image is durable
(issue: spool -> fsync -> atomic rename -> fsync of the directory -> index row committed with WAL
synchronous=FULL) pays, on top of what storescp does (receive, create and write a file), at least:

    fsync of the file + rename into a fan-out directory + fsync of that directory + one SQLite
    commit (WAL, synchronous=FULL)

This module measures those steps by themselves, one instance at a time, with no network, no
parsing and no Python between them beyond the calls: a file of the scenario's size is created and
written (not timed: storescp does that too), then the four steps are timed (the directory's
fsync is dicomd's own call). The SQLite row is a lean one (a key, a number, a 2 KiB blob; one
unique index), lighter than dicomd's.

The bound for a one-association scenario: if a server did everything storescp does per instance at
storescp's own speed, then these steps, it would reach 1 / (1 / storescp's inst/s + their time).
No server that keeps the durable order can beat it here: the steps cannot overlap each other (each
one's durability depends on the one before) nor the next instance (the peer waits for the answer).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from dicomd.storage.files import fsync_dir

FANOUT = 256  # leaf directories, as the file store's fan-out spreads instances
ROW_BLOB = 2048


@dataclass(frozen=True, slots=True)
class Floor:
    size: int  # bytes per file
    count: int
    fsync_us: float  # means, microseconds
    rename_us: float
    dir_fsync_us: float
    commit_us: float

    @property
    def extra_s(self) -> float:
        """Seconds the durable steps add to each instance, serially."""
        return (self.fsync_us + self.rename_us + self.dir_fsync_us + self.commit_us) / 1e6

    def bound(self, storescp_per_s: float) -> float:
        """Instances/s of a server as fast as storescp that also waits for these steps."""
        return 1.0 / (1.0 / storescp_per_s + self.extra_s)


def measure(directory: Path, size: int, count: int) -> Floor:
    """Time the durable steps for `count` files of `size` bytes under `directory` (created, and
    left for the caller to remove)."""
    spool = directory / "tmp"
    spool.mkdir(parents=True)
    leaves = [directory / "objects" / f"{i:02x}" for i in range(FANOUT)]
    for leaf in leaves:
        leaf.mkdir(parents=True)
    fsync_dir(directory / "objects")
    payload = os.urandom(size)
    blob = os.urandom(ROW_BLOB)
    db = sqlite3.connect(directory / "index.sqlite", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE row (pk INTEGER PRIMARY KEY, uid TEXT UNIQUE, size INT, blob)")
        totals = [0.0] * 4  # seconds in each step: fsync, rename, directory fsync, commit
        for n in range(count):
            uid = f"1.2.826.0.1.3680043.10.1.{n}"
            name = hashlib.sha256(uid.encode()).hexdigest()
            part = spool / f"{name}.part"
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                os.write(fd, payload)
                t0 = time.perf_counter()
                os.fsync(fd)
            finally:
                os.close(fd)
            t1 = time.perf_counter()
            leaf = leaves[int(name[:2], 16) % FANOUT]
            os.replace(part, leaf / name)
            t2 = time.perf_counter()
            fsync_dir(leaf)
            t3 = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO row (uid, size, blob) VALUES (?, ?, ?)", (uid, size, blob))
            db.execute("COMMIT")
            t4 = time.perf_counter()
            for step, (start, end) in enumerate(((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
                totals[step] += end - start
    finally:
        db.close()
    fsync_us, rename_us, dir_fsync_us, commit_us = (t / count * 1e6 for t in totals)
    return Floor(size, count, fsync_us, rename_us, dir_fsync_us, commit_us)
