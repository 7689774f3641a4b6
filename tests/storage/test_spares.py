"""Spare spool files: made ahead by a thread, taken as spools, made again at a refill (not at the
take), bounded, removed at close."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from pydicom import dcmread

from dicomd.storage.files import FileMeta, FileStore, OutOfSpace
from dicomd.storage.spares import SparePool

CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def opener(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    return open(fd, "wb", buffering=0)


def names(directory: Path, suffix: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == suffix)


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[SparePool]:
    pool = SparePool(tmp_path, opener, 3)
    yield pool
    pool.close()


def test_nothing_is_made_before_the_first_take(tmp_path: Path, pool: SparePool) -> None:
    time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []
    assert pool.take() is None  # empty: the caller creates its own spool; the filling starts
    wait_until(lambda: pool.ready == 3)
    assert len(names(tmp_path, ".spare")) == 3


def test_a_take_is_a_part_file_open_for_writing_and_is_replaced(
    tmp_path: Path, pool: SparePool
) -> None:
    pool.take()
    wait_until(lambda: pool.ready == 3)
    spares = names(tmp_path, ".spare")
    taken = pool.take()
    assert taken is not None
    path, file = taken
    assert path.suffix == ".part" and path.exists()
    assert path.with_suffix(".spare").name in spares  # the spare itself, renamed
    file.write(b"data")
    file.close()
    assert path.read_bytes() == b"data"
    time.sleep(0.05)
    assert pool.ready == 2  # not made again at the take: tmp/ stays free for the install
    pool.refill()
    wait_until(lambda: pool.ready == 3)  # made again in the background
    assert len(names(tmp_path, ".spare")) == 3
    assert path.with_suffix(".spare").name not in names(tmp_path, ".spare")


def test_the_pool_never_holds_more_than_its_size(tmp_path: Path, pool: SparePool) -> None:
    taken = [pool.take() for _ in range(10)]
    for _ in range(10):
        pool.refill()
    wait_until(lambda: pool.ready == 3)
    time.sleep(0.05)
    assert len(names(tmp_path, ".spare")) == 3
    for t in taken:
        if t is not None:
            t[1].close()


def test_close_removes_the_spares_and_later_takes_get_none(tmp_path: Path) -> None:
    pool = SparePool(tmp_path, opener, 2)
    pool.take()
    wait_until(lambda: pool.ready == 2)
    pool.close()
    assert list(tmp_path.iterdir()) == []
    assert pool.take() is None
    time.sleep(0.05)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_opener_stalls_the_pool_until_the_next_refill(tmp_path: Path) -> None:
    calls = 0

    def full_disk(path: Path) -> BinaryIO:
        nonlocal calls
        calls += 1
        raise OSError(errno.ENOSPC, "No space left on device")

    pool = SparePool(tmp_path, full_disk, 2)
    try:
        assert pool.take() is None
        wait_until(lambda: calls == 1)
        time.sleep(0.1)
        assert calls == 1  # no busy retrying while the disk is full
        assert pool.take() is None
        time.sleep(0.1)
        assert calls == 1  # a take is no reason to try again
        pool.refill()
        wait_until(lambda: calls == 2)
        assert list(tmp_path.iterdir()) == []
    finally:
        pool.close()


def test_a_spare_removed_behind_the_pools_back_is_not_handed_out(
    tmp_path: Path, pool: SparePool
) -> None:
    pool.take()
    wait_until(lambda: pool.ready == 3)
    for name in names(tmp_path, ".spare"):
        (tmp_path / name).unlink()
    assert pool.take() is None


# --- through the FileStore ------------------------------------------------------------------------


def test_spools_come_from_the_spares_and_install_as_usual(tmp_path: Path) -> None:
    store = FileStore(tmp_path, spares=2)
    try:
        store.create_spool(FileMeta(CT, "1.2.3", IMPLICIT, "1.2", "", "")).discard()
        wait_until(lambda: store.spares_ready == 2)
        spares = names(tmp_path / "tmp", ".spare")
        spool = store.create_spool(FileMeta(CT, "1.2.3.4", IMPLICIT, "1.2", "", "STORESCU"))
        assert spool.path.with_suffix(".spare").name in spares
        assert spool.path.suffix == ".part"
        assert store.spares_ready == 1
        stored = store.install(spool, "1.2.3.4")
        assert dcmread(tmp_path / stored.relpath).file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
        assert names(tmp_path / "tmp", ".part") == []
        wait_until(lambda: store.spares_ready == 2)  # the install made the pool whole again
    finally:
        store.close()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_discarded_spool_refills_the_pool_as_an_install_does(tmp_path: Path) -> None:
    # A refused store (out of space, a dataset that does not match its command) discards its
    # spool; the stores after it must still find a spare ready.
    store = FileStore(tmp_path, spares=2)
    try:
        store.create_spool(FileMeta(CT, "1.2.3", IMPLICIT, "1.2", "", "")).discard()
        for n in range(3):
            wait_until(lambda: store.spares_ready == 2)
            time.sleep(0.05)  # the filling thread has seen the pool full and waits for a refill
            spool = store.create_spool(FileMeta(CT, f"1.2.3.{n}", IMPLICIT, "1.2", "", ""))
            assert spool.path.suffix == ".part"
            time.sleep(0.05)
            assert store.spares_ready == 1  # taking a spare does not wake the thread
            spool.discard()
            wait_until(lambda: store.spares_ready == 2)
        assert names(tmp_path / "tmp", ".part") == []
    finally:
        store.close()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_clean_tmp_removes_spares_and_counts_only_spools(tmp_path: Path) -> None:
    store = FileStore(tmp_path, spares=2)
    store.create_spool(FileMeta(CT, "1.2.3", IMPLICIT, "1.2", "", "")).write(b"half")
    wait_until(lambda: store.spares_ready == 2)
    # As after a crash: a fresh FileStore over the same root, before it serves.
    assert FileStore(tmp_path).clean_tmp() == 1
    assert list((tmp_path / "tmp").iterdir()) == []
    store.close()


def test_without_spares_a_full_disk_is_still_answered_by_create_spool(tmp_path: Path) -> None:
    def full_disk(path: Path) -> BinaryIO:
        raise OSError(errno.ENOSPC, "No space left on device")

    store = FileStore(tmp_path, opener=full_disk, spares=2)
    try:
        with pytest.raises(OutOfSpace):
            store.create_spool(FileMeta(CT, "1.2.3", IMPLICIT, "1.2", "", ""))
        with pytest.raises(OutOfSpace):
            store.create_spool(FileMeta(CT, "1.2.3", IMPLICIT, "1.2", "", ""))
    finally:
        store.close()
