"""The hashed file store: File Meta bytes, spooling, the durability protocol, errors, layout."""

from __future__ import annotations

import errno
import hashlib
import io
import itertools
import os
import struct
import threading
from array import array
from pathlib import Path
from typing import BinaryIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

import dicomd.storage.files as files_module
from dicomd.storage.files import (
    BelowReserve,
    FileMeta,
    FileStore,
    OutOfSpace,
    Spool,
    StorageError,
    encode_file_meta,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
META = FileMeta(
    sop_class_uid=CT,
    sop_instance_uid="1.2.3.4.5",
    transfer_syntax_uid=EXPLICIT_LE,
    implementation_class_uid="1.2.826.0.1.3680043.9.7.1",
    implementation_version_name="DICOMD_01",
    source_ae_title="MODALITY",
)


def meta_for(uid: str) -> FileMeta:
    return FileMeta(CT, uid, EXPLICIT_LE, "1.2.3", "", "")


def dataset_bytes(uid: str = "1.2.3.4.5") -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = uid
    ds.PatientName = "Doe^John"
    fp = DicomBytesIO()
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    write_dataset(fp, ds)
    return fp.getvalue()


def uid_in_same_directory_as(uid: str) -> str:
    """Another UID whose file lands in the same fan-out directory (1 in 65536 do)."""
    directory = FileStore.relpath_for(uid).rsplit("/", 1)[0]
    return next(
        other
        for other in (f"{uid}.{i}" for i in range(10_000_000))
        if FileStore.relpath_for(other).startswith(directory + "/")
    )


def tree(root: Path, sub: str) -> list[str]:
    """Every file under root/sub, relative to root."""
    return sorted(str(p.relative_to(root)) for p in (root / sub).rglob("*") if not p.is_dir())


# --- File Meta Information -----------------------------------------------------------------------


def test_file_meta_golden_bytes() -> None:
    expected = (
        bytes(128)  # preamble
        + b"DICM"
        # (0002,0000) UL, length 4, value 162 = 14 + 34 + 18 + 28 + 34 + 18 + 16, the elements below
        + bytes.fromhex("0200 0000 554c 0400 a2000000")
        # (0002,0001) OB, 2 reserved bytes, 4-byte length 2, value 00H 01H
        + bytes.fromhex("0200 0100 4f42 0000 02000000 0001")
        # (0002,0002) UI length 26: the 25-character CT Image Storage UID + NUL padding
        + bytes.fromhex("0200 0200 5549 1a00")
        + b"1.2.840.10008.5.1.4.1.1.2\x00"
        # (0002,0003) UI length 10: "1.2.3.4.5" + NUL
        + bytes.fromhex("0200 0300 5549 0a00")
        + b"1.2.3.4.5\x00"
        # (0002,0010) UI length 20: "1.2.840.10008.1.2.1" + NUL
        + bytes.fromhex("0200 1000 5549 1400")
        + b"1.2.840.10008.1.2.1\x00"
        # (0002,0012) UI length 26: 25 characters + NUL
        + bytes.fromhex("0200 1200 5549 1a00")
        + b"1.2.826.0.1.3680043.9.7.1\x00"
        # (0002,0013) SH length 10: "DICOMD_01" + space
        + bytes.fromhex("0200 1300 5348 0a00")
        + b"DICOMD_01 "
        # (0002,0016) AE length 8, even already: no padding
        + bytes.fromhex("0200 1600 4145 0800")
        + b"MODALITY"
    )
    assert encode_file_meta(META) == expected
    group_length = struct.unpack_from("<I", expected, 128 + 4 + 8)[0]
    assert group_length == len(expected) - (128 + 4 + 12)


def test_file_meta_leaves_out_empty_type_3_elements() -> None:
    encoded = encode_file_meta(FileMeta(CT, "1.2.3.4", EXPLICIT_LE, "1.2.3", "", ""))
    assert b"\x02\x00\x13\x00SH" not in encoded
    assert b"\x02\x00\x16\x00AE" not in encoded
    assert encoded.endswith(b"\x02\x00\x12\x00UI\x06\x001.2.3\x00")


def test_pydicom_reads_our_file_meta(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(encode_file_meta(META) + dataset_bytes())
    ds = dcmread(path)
    meta = ds.file_meta
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert meta.MediaStorageSOPClassUID == CT
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4.5"
    assert meta.TransferSyntaxUID == EXPLICIT_LE
    assert meta.ImplementationClassUID == META.implementation_class_uid
    assert meta.ImplementationVersionName == "DICOMD_01"
    assert meta.SourceApplicationEntityTitle == "MODALITY"
    assert ds.PatientName == "Doe^John"
    assert ds.SOPInstanceUID == "1.2.3.4.5"


@pytest.mark.parametrize(
    "meta",
    [
        FileMeta(CT, "1." + "2" * 63, EXPLICIT_LE, "1.2", "", ""),  # UI over 64 bytes
        FileMeta(CT, "1.2.3", EXPLICIT_LE, "1.2", "V" * 17, ""),  # SH over 16 bytes
        FileMeta(CT, "1.2.3", EXPLICIT_LE, "1.2", "", "A" * 17),  # AE over 16 bytes
        FileMeta(CT, "1.2.3\u00e9", EXPLICIT_LE, "1.2", "", ""),  # not ASCII
    ],
)
def test_file_meta_refuses_values_that_do_not_fit(meta: FileMeta) -> None:
    with pytest.raises(ValueError):
        encode_file_meta(meta)


# --- spooling -------------------------------------------------------------------------------------


def test_spool_starts_with_the_meta_and_counts_bytes(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    spool = store.create_spool(META)
    header = encode_file_meta(META)
    assert spool.path.parent == tmp_path / "tmp"
    assert spool.path.name.endswith(".part")
    assert spool.dataset_offset == len(header) == spool.size
    spool.write(b"abcd")
    assert spool.size == len(header) + 4
    spool.sync()
    assert spool.path.read_bytes() == header + b"abcd"
    assert spool.path.stat().st_mode & 0o777 == 0o640 & ~_umask()
    spool.discard()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_many_chunks_equal_one_chunk(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    store = FileStore(tmp_path, fsync=False)
    one = store.create_spool(META)
    one.write(data)
    many = store.create_spool(META)
    cuts = [0, 1, 2, 7, 4096, 65_536, 65_537, 200_000, 299_999, len(data)]
    for start, stop in itertools.pairwise(cuts):
        many.write(memoryview(data)[start:stop])
    many.write(b"")
    one_file = store.install(one, "1.1")
    many_file = store.install(many, "1.2")
    assert (tmp_path / one_file.relpath).read_bytes() == (tmp_path / many_file.relpath).read_bytes()
    assert one_file.sha256 == many_file.sha256
    assert one_file.size == many_file.size == len(encode_file_meta(META)) + len(data)


def test_write_takes_bytes_bytearray_and_any_memoryview(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    spool = store.create_spool(META)
    words = array("H", [0x0102, 0x0304])
    spool.write(b"ab")
    spool.write(bytearray(b"cd"))
    spool.write(memoryview(words))  # a non-byte format: written as its 4 bytes
    spool.sync()
    tail = spool.path.read_bytes()[spool.dataset_offset :]
    assert tail == b"abcd" + words.tobytes()
    assert spool.size == spool.dataset_offset + 8
    spool.discard()


def test_sha256_is_the_hash_of_the_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    spool = store.create_spool(META)
    for _ in range(5):
        spool.write(os.urandom(10_000))
    spool.sync()
    assert spool.sha256() == hashlib.sha256(spool.path.read_bytes()).hexdigest()
    stored = store.install(spool, "1.2.3")
    content = (tmp_path / stored.relpath).read_bytes()
    assert stored.sha256 == hashlib.sha256(content).hexdigest()
    assert stored.size == len(content)


def test_discard_leaves_nothing_and_is_idempotent(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    spool = store.create_spool(META)
    spool.write(b"x" * 1000)
    spool.discard()
    spool.discard()
    assert tree(tmp_path, "tmp") == []
    assert tree(tmp_path, "objects") == []
    with pytest.raises(ValueError):
        spool.write(b"more")


def test_discard_after_install_keeps_the_installed_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    spool = store.create_spool(META)
    stored = store.install(spool, "1.2.3")
    spool.discard()
    assert tree(tmp_path, "objects") == [stored.relpath]


# --- errors through the opener seam ---------------------------------------------------------------


class FaultyFile(io.FileIO):
    """A real spool file that takes `room` bytes and then fails writes with `error`, like a disk
    filling up (the last write that fits partly is short, the next fails)."""

    def __init__(self, path: Path, room: int, error: int, fail_flush: bool = False) -> None:
        super().__init__(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640), "wb")
        self.room = room
        self.error = error
        self.fail_flush = fail_flush

    def write(self, data: object) -> int:
        view = memoryview(data).cast("B")  # type: ignore[arg-type]
        if self.room == 0:
            raise OSError(self.error, os.strerror(self.error))
        written = super().write(view[: self.room])
        assert written is not None
        self.room -= written
        return written

    def flush(self) -> None:
        if self.fail_flush:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super().flush()


def faulty_store(
    root: Path, room: int, error: int = errno.ENOSPC, fail_flush: bool = False
) -> FileStore:
    def opener(path: Path) -> BinaryIO:
        return FaultyFile(path, room, error, fail_flush)

    return FileStore(root, fsync=True, opener=opener)


@pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT])
def test_out_of_space_mid_dataset_removes_the_spool(tmp_path: Path, error: int) -> None:
    store = faulty_store(tmp_path, room=5000, error=error)
    spool = store.create_spool(META)
    spool.write(b"x" * 1000)
    with pytest.raises(OutOfSpace):
        spool.write(b"y" * 10_000)
    assert tree(tmp_path, "tmp") == []
    assert tree(tmp_path, "objects") == []
    spool.discard()  # the caller's cleanup path still works


def test_out_of_space_in_the_meta_removes_the_spool(tmp_path: Path) -> None:
    store = faulty_store(tmp_path, room=100)
    with pytest.raises(OutOfSpace):
        store.create_spool(META)
    assert tree(tmp_path, "tmp") == []


def test_other_io_errors_are_storage_errors_not_out_of_space(tmp_path: Path) -> None:
    store = faulty_store(tmp_path, room=0, error=errno.EIO)
    with pytest.raises(StorageError) as caught:
        store.create_spool(META)
    assert not isinstance(caught.value, OutOfSpace)
    assert isinstance(caught.value.__cause__, OSError)
    assert tree(tmp_path, "tmp") == []


def test_failing_sync_in_install_leaves_no_file(tmp_path: Path) -> None:
    store = faulty_store(tmp_path, room=1 << 20, fail_flush=True)
    spool = store.create_spool(META)
    spool.write(dataset_bytes())
    with pytest.raises(StorageError):
        store.install(spool, "1.2.3.4.5")
    assert tree(tmp_path, "tmp") == []
    assert tree(tmp_path, "objects") == []


def test_failing_rename_in_install_leaves_no_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    (tmp_path / store.relpath_for("1.2.3")).mkdir(parents=True)  # a directory in the way
    spool = store.create_spool(META)
    with pytest.raises(StorageError):
        store.install(spool, "1.2.3")
    assert tree(tmp_path, "tmp") == []
    assert tree(tmp_path, "objects") == []


def test_a_failing_opener_is_mapped_too(tmp_path: Path) -> None:
    def opener(path: Path) -> BinaryIO:
        raise OSError(errno.ENOSPC, "No space left on device")

    store = FileStore(tmp_path, opener=opener)
    with pytest.raises(OutOfSpace):
        store.create_spool(META)


# --- install --------------------------------------------------------------------------------------


def test_install_moves_the_spool_to_its_hashed_path(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    spool = store.create_spool(META)
    spool.write(dataset_bytes())
    stored = store.install(spool, "1.2.3.4.5")
    assert stored.relpath == FileStore.relpath_for("1.2.3.4.5")
    assert tree(tmp_path, "tmp") == []
    assert tree(tmp_path, "objects") == [stored.relpath]
    assert dcmread(tmp_path / stored.relpath).SOPInstanceUID == "1.2.3.4.5"


def test_install_replaces_an_existing_file_by_rename(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    first = store.create_spool(META)
    first.write(b"first")
    stored = store.install(first, "1.2.3")
    path = tmp_path / stored.relpath
    with open(path, "rb") as old:
        old_inode = os.fstat(old.fileno()).st_ino
        second = store.create_spool(META)
        second.write(b"second")
        store.install(second, "1.2.3")
        # A reader of the old file keeps the old bytes: the new file took the name in one step,
        # nothing was rewritten in place.
        assert old.read().endswith(b"first")
    assert path.read_bytes().endswith(b"second")
    assert path.stat().st_ino != old_inode
    assert tree(tmp_path, "objects") == [stored.relpath]
    assert tree(tmp_path, "tmp") == []


def test_fan_out_is_created_once_when_the_store_is_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real_fsync_dir = files_module.fsync_dir

    def fsync_dir(path: Path) -> None:
        synced.append(path)
        real_fsync_dir(path)

    monkeypatch.setattr(files_module, "fsync_dir", fsync_dir)
    FileStore(tmp_path)
    objects = tmp_path / "objects"
    assert sorted(p.name for p in objects.iterdir()) == [f"{i:03x}" for i in range(4096)]
    assert synced.count(objects) == 2  # objects/ created (its parent's entry), then its entries
    synced.clear()
    FileStore(tmp_path)  # opened again: nothing to create or sync
    assert synced == []


def test_install_fsyncs_file_and_final_dir_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path)
    synced_dirs: list[Path] = []
    file_syncs: list[int] = []
    mkdirs: list[Path] = []
    real_fsync_dir, real_fsync, real_mkdir = files_module.fsync_dir, os.fsync, os.mkdir

    def fsync_dir(path: Path) -> None:
        synced_dirs.append(path)
        real_fsync_dir(path)

    def fsync(fd: int) -> None:
        file_syncs.append(fd)
        real_fsync(fd)

    def mkdir(path: Path, mode: int = 0o777) -> None:
        mkdirs.append(Path(path))
        real_mkdir(path, mode)

    monkeypatch.setattr(files_module, "fsync_dir", fsync_dir)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "mkdir", mkdir)

    spool = store.create_spool(META)
    stored = store.install(spool, "1.2.3")
    leaf = (tmp_path / stored.relpath).parent
    # The fan-out exists from the start: no mkdir; the file, then its directory after the rename.
    assert mkdirs == []
    assert synced_dirs == [leaf]
    assert len(file_syncs) == 2  # the spool, and the directory (fsync_dir calls os.fsync too)

    synced_dirs.clear()
    file_syncs.clear()
    store.install(store.create_spool(META), uid_in_same_directory_as("1.2.3"))
    assert mkdirs == []
    assert synced_dirs == [leaf]
    assert len(file_syncs) == 2


def test_fsync_false_skips_every_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(fd))
    store = FileStore(tmp_path / "root", fsync=False)
    spool = store.create_spool(META)
    spool.write(b"data")
    spool.sync()
    stored = store.install(spool, "1.2.3")
    store.remove(stored.relpath)
    assert calls == []


def test_a_fan_out_dir_removed_behind_the_cache_is_recreated(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    stored = store.install(store.create_spool(META), "1.2.3")
    store.remove(stored.relpath)
    leaf = (tmp_path / stored.relpath).parent
    leaf.rmdir()
    again = store.install(store.create_spool(META), "1.2.3")
    assert (tmp_path / again.relpath).exists()


def test_concurrent_installs(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                spool = store.create_spool(META)
                spool.write(f"{n}.{i}".encode())
                store.install(spool, f"1.2.{n}.{i}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(list(store.iter_objects())) == 160
    assert (tmp_path / store.relpath_for("1.2.7.19")).read_bytes().endswith(b"7.19")


# --- layout ---------------------------------------------------------------------------------------


def test_relpath_is_a_fan_out_of_the_uid_hash() -> None:
    uid = "1.2.840.113619.2.55.3.604688119.971.1234567890.123"
    digest = hashlib.sha256(uid.encode("ascii")).hexdigest()
    relpath = FileStore.relpath_for(uid)
    assert relpath == f"objects/{digest[:3]}/{digest}.dcm"
    assert FileStore.relpath_for(uid) == relpath
    assert FileStore.relpath_for(uid + "1") != relpath


@pytest.mark.parametrize("uid", ["../../etc/passwd", "/abs", "a/b", "", " 1.2 ", "x" * 300])
def test_relpath_never_contains_the_peer_string(uid: str) -> None:
    relpath = FileStore.relpath_for(uid)
    name = relpath.split("/")[-1]
    assert len(relpath.split("/")) == 3
    assert len(name) == 64 + 4 and all(c in "0123456789abcdef" for c in name[:64])


def test_relpath_refuses_a_non_ascii_uid() -> None:
    with pytest.raises(ValueError):
        FileStore.relpath_for("1.2.\u0663")


@pytest.mark.parametrize(
    "relpath",
    [
        "../x",
        "objects/../../x",
        "objects/..",
        "/etc/passwd",
        "",
        ".",
        "./.",
        "//",
        "objects/a\x00b",
    ],
)
def test_path_refuses_anything_outside_root(tmp_path: Path, relpath: str) -> None:
    store = FileStore(tmp_path, fsync=False)
    with pytest.raises(ValueError):
        store.path(relpath)
    with pytest.raises(ValueError):
        store.remove(relpath)


def test_path_inside_root(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    assert store.path("objects/ab/cd/x.dcm") == tmp_path / "objects" / "ab" / "cd" / "x.dcm"


def test_remove(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    stored = store.install(store.create_spool(META), "1.2.3")
    store.remove(stored.relpath)
    assert tree(tmp_path, "objects") == []
    store.remove(stored.relpath)  # absent: nothing to do


def test_clean_tmp_removes_spools_left_by_a_crash(tmp_path: Path) -> None:
    crashed = FileStore(tmp_path)
    spools: list[Spool] = [crashed.create_spool(META) for _ in range(3)]
    spools[0].write(b"partial")
    (tmp_path / "tmp" / "notes.txt").write_text("not ours")
    restarted = FileStore(tmp_path)
    assert restarted.clean_tmp() == 3
    assert tree(tmp_path, "tmp") == ["tmp/notes.txt"]
    assert restarted.clean_tmp() == 0
    for spool in spools:
        spool.discard()  # the crashed process's handles: nothing left to remove


def test_iter_objects_lists_every_stored_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path, fsync=False)
    uids = [f"1.2.3.{i}" for i in range(30)]
    for uid in uids:
        store.install(store.create_spool(meta_for(uid)), uid)
    (tmp_path / "objects" / "stray.txt").write_text("x")
    (tmp_path / store.relpath_for("1.2.3.0")).with_suffix(".tmp").write_text("x")
    assert list(store.iter_objects()) == sorted(store.relpath_for(uid) for uid in uids)


def test_no_spool_is_started_under_the_free_space_reserve(tmp_path: Path) -> None:
    free = FileStore(tmp_path / "probe").free_bytes()
    short = FileStore(tmp_path / "short", min_free_bytes=free + (1 << 30))
    with pytest.raises(BelowReserve, match="MiB free, under the") as caught:
        short.create_spool(meta_for("1.2.3"))
    assert isinstance(caught.value, OutOfSpace)  # answered as a full disk is: A700
    assert list((tmp_path / "short" / "tmp").iterdir()) == []
    ample = FileStore(tmp_path / "ample", min_free_bytes=1 << 20)
    ample.install(ample.create_spool(meta_for("1.2.3")), "1.2.3")
    assert list(ample.iter_objects()) == [ample.relpath_for("1.2.3")]


def test_init_creates_the_layout_and_free_bytes(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "tmp").is_dir()
    assert (tmp_path / "a" / "b" / "objects").is_dir()
    assert store.root == tmp_path / "a" / "b"
    assert store.free_bytes() > 0
    FileStore(tmp_path / "a" / "b")  # reopening an existing store


def test_init_on_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "root").write_text("not a directory")
    with pytest.raises(StorageError):
        FileStore(tmp_path / "root")
