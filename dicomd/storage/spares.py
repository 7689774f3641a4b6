"""Spool files created ahead of need, so that a C-STORE does not wait for a new inode.

Creating a file allocates an inode and writes a directory entry. On a quiet filesystem that takes
tens of microseconds (about 16 us on the ext4 volume where dicomd's benchmarks run); after many
deletions it can take a millisecond or more: ext4 without a journal makes each new inode step over
every inode of its block group freed in the last minutes (`recently_deleted()` in
fs/ext4/ialloc.c). A C-STORE would pay that between its last fragment and its answer, on the
critical path of a modality that sends one instance at a time.

The pool keeps a few empty files ready in tmp/, named `<uuid>.spare`. Taking one renames it to
`<uuid>.part`: a directory entry changes, nothing is allocated. A background thread makes its
replacement once the spool has left tmp/, installed or discarded (the Spool calls refill() then,
see FileStore.create_spool), not when it is taken: while the thread creates a file in tmp/ it
holds the directory's lock, and the install's rename out of tmp/ would wait for it. Woken at
take(), the thread's create and that rename met on every C-STORE: with creates at 1.1 ms, the
rename took 390 us (CT) and 700 us (small instances) instead of 12 us; woken after it, 25 us and
160 us (the next instance can still arrive before the create is over). The store never depends
on the pool: when it is empty, or the thread cannot create files (a full disk), the caller creates
its spool itself and meets the error there, where it is answered.

The pool takes the cost off the critical path, not off the machine: on a filesystem that creates
slowly, the thread's kernel time competes with the rest of the server for the CPU.

Owns: the spare files and the thread that makes them.
Must not know: what a spool holds, DIMSE, the index.

A crash leaves spares behind, as it leaves spools: FileStore.clean_tmp() removes both at start-up.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

SPARE_SUFFIX = ".spare"
PART_SUFFIX = ".part"


class SparePool:
    """Up to `size` empty files in `directory`, each made by `opener` (which creates the file at
    the path it is given and returns it open for writing). Thread-safe."""

    def __init__(self, directory: Path, opener: Callable[[Path], BinaryIO], size: int) -> None:
        self._directory = directory
        self._opener = opener
        self._size = size
        self._ready: list[tuple[Path, BinaryIO]] = []
        self._wake = threading.Condition()
        self._closed = False
        self._stalled = False  # the last creation failed: wait for the next take() to retry
        self._thread: threading.Thread | None = None

    def take(self) -> tuple[Path, BinaryIO] | None:
        """A spare, renamed to `<uuid>.part` and open for writing; None when none is ready. Its
        replacement is made at the next refill().

        The first call starts the thread that fills the pool: a store that never receives (the
        `reindex` command, a start-up that cleans tmp/) makes no spares."""
        with self._wake:
            if self._closed:
                return None
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._fill, name="dicomd-spares", daemon=True
                )
                self._thread.start()
            spare = self._ready.pop() if self._ready else None
        if spare is None:
            return None
        path, file = spare
        part = path.with_suffix(PART_SUFFIX)
        try:
            os.rename(path, part)
        except OSError:
            # Gone behind our back (tmp/ cleaned by hand): the caller creates a spool instead.
            with suppress(OSError):
                file.close()
            return None
        return part, file

    def refill(self) -> None:
        """Make what the pool lacks now (after a failed creation too). Called once a spool has
        left the directory: see the module docstring for why not at take()."""
        with self._wake:
            self._stalled = False
            self._wake.notify()

    @property
    def ready(self) -> int:
        """Spares ready now."""
        with self._wake:
            return len(self._ready)

    def close(self) -> None:
        """Stop the thread and remove the spares. Takes after this return None."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10.0)
        with self._wake:
            ready, self._ready = self._ready, []
        for path, file in ready:
            _remove(path, file)

    def _fill(self) -> None:
        while True:
            with self._wake:
                while not self._closed and (self._stalled or len(self._ready) >= self._size):
                    self._wake.wait()
                if self._closed:
                    return
            path = self._directory / f"{uuid.uuid4().hex}{SPARE_SUFFIX}"
            try:
                file = create(self._opener, path)
            except OSError:
                with self._wake:
                    self._stalled = True
                continue
            with self._wake:
                if not self._closed:
                    self._ready.append((path, file))
                    continue
            _remove(path, file)  # closed while this one was being made
            return


def create(opener: Callable[[Path], BinaryIO], path: Path) -> BinaryIO:
    """opener(path); when it fails, whatever it may have created first is removed."""
    try:
        return opener(path)
    except OSError:
        with suppress(OSError):
            os.unlink(path)
        raise


def _remove(path: Path, file: BinaryIO) -> None:
    with suppress(OSError):
        file.close()
    with suppress(OSError):
        os.unlink(path)
