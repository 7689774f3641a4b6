"""The hashed file store: spool files, fsync, atomic rename into a content-addressed tree.

Owns: the on-disk layout under one root directory, the PS3.10 File Meta Information we write in
front of every stored dataset, and the durability protocol of a C-STORE:

    root/tmp/<uuid>.part                 spool: File Meta written by us, then the dataset as received
    root/tmp/<uuid>.spare                empty, made ahead of need; becomes a spool (spares.py)
    root/objects/ab/cd/<sha256(uid)>.dcm  installed: renamed from tmp/ once complete and fsynced

A file is durable when install() returns: the spool was fsynced, renamed with os.replace (atomic on
one filesystem, which is why tmp/ lives under the same root), and the directory holding the new name
was fsynced, as was the parent of every fan-out directory created for it. A crash before that point
leaves a stale spool in tmp/ (clean_tmp() removes it) or an installed file nobody was told about
(reindex adopts it); never half a file under objects/.
Must not know: DIMSE, the index, what the dataset says (header.py parses it).

Errors: ENOSPC and EDQUOT become OutOfSpace (the caller answers A700), any other OSError becomes
StorageError; a spool whose write, fsync or install fails is removed before the error is raised.
Every method is synchronous and blocking: the caller runs them in a worker thread.

References: PS3.10 7.1 (File Meta Information), PS3.5 7.1.2 (Explicit VR Little Endian encoding),
PS3.5 6.2 (UI padded with NUL, SH and AE with space; UI at most 64, SH and AE at most 16 bytes).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import struct
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from dicomd.storage.spares import PART_SUFFIX, SPARE_SUFFIX, SparePool, create

__all__ = [
    "FileMeta",
    "FileStore",
    "OutOfSpace",
    "Spool",
    "SpoolOpener",
    "StorageError",
    "StoredFile",
    "encode_file_meta",
    "fsync_dir",
]

# --- PS3.10 7.1 File Meta Information -------------------------------------------------------------

_PREAMBLE: Final = bytes(128)  # PS3.10 7.1: 128-byte preamble, zeros when not used
_PREFIX: Final = b"DICM"
# Explicit VR Little Endian element headers (PS3.5 7.1.2):
#   short VRs (UL, UI, SH, AE): 1-4 tag (group, element), 5-6 VR, 7-8 value length
#   OB: 1-4 tag, 5-6 VR, 7-8 reserved 0000H, 9-12 value length
_SHORT_HEADER: Final = struct.Struct("<HH2sH")
_LONG_HEADER: Final = struct.Struct("<HH2s2xL")
_UL_VALUE: Final = struct.Struct("<L")
_META_VERSION: Final = b"\x00\x01"  # (0002,0001) File Meta Information Version: 00H 01H
_MAX_LENGTH: Final = {b"UI": 64, b"SH": 16, b"AE": 16}  # PS3.5 Table 6.2-1
_PAD: Final = {b"UI": b"\x00", b"SH": b" ", b"AE": b" "}


@dataclass(frozen=True, slots=True)
class FileMeta:
    """PS3.10 7.1 File Meta Information, written by us in front of each stored dataset."""

    sop_class_uid: str  # (0002,0002) Media Storage SOP Class UID
    sop_instance_uid: str  # (0002,0003) Media Storage SOP Instance UID
    transfer_syntax_uid: str  # (0002,0010)
    implementation_class_uid: str  # (0002,0012)
    implementation_version_name: str  # (0002,0013), type 3: left out when empty
    source_ae_title: str  # (0002,0016) Source Application Entity Title, type 3: left out when empty


def _short_element(element: int, vr: bytes, text: str) -> bytes:
    try:
        value = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"(0002,{element:04X}) {vr.decode()} must be ASCII: {text!r}") from None
    if len(value) > _MAX_LENGTH[vr]:
        raise ValueError(
            f"(0002,{element:04X}) {vr.decode()} longer than {_MAX_LENGTH[vr]} bytes: {text!r}"
        )
    if len(value) % 2:
        value += _PAD[vr]  # PS3.5 7.1.1: every value has an even length
    return _SHORT_HEADER.pack(0x0002, element, vr, len(value)) + value


def encode_file_meta(meta: FileMeta) -> bytes:
    """Preamble, "DICM" and group 0002 in Explicit VR Little Endian, ready to precede the dataset.

    Raises ValueError for a value that is not ASCII or too long for its VR (a peer's UID can be).
    """
    elements = [
        _LONG_HEADER.pack(0x0002, 0x0001, b"OB", len(_META_VERSION)) + _META_VERSION,
        _short_element(0x0002, b"UI", meta.sop_class_uid),
        _short_element(0x0003, b"UI", meta.sop_instance_uid),
        _short_element(0x0010, b"UI", meta.transfer_syntax_uid),
        _short_element(0x0012, b"UI", meta.implementation_class_uid),
    ]
    if meta.implementation_version_name:
        elements.append(_short_element(0x0013, b"SH", meta.implementation_version_name))
    if meta.source_ae_title:
        elements.append(_short_element(0x0016, b"AE", meta.source_ae_title))
    body = b"".join(elements)
    # (0002,0000) File Meta Information Group Length counts the bytes after its own element.
    group_length = _SHORT_HEADER.pack(0x0002, 0x0000, b"UL", 4) + _UL_VALUE.pack(len(body))
    return _PREAMBLE + _PREFIX + group_length + body


# --- errors ---------------------------------------------------------------------------------------


# What dataset_offset() reads: preamble, "DICM", and the (0002,0000) element (12 bytes, PS3.10 7.1).
PART10_HEAD: Final = 128 + 4 + 12


def dataset_offset(head: bytes) -> int:
    """Where the dataset starts in a Part 10 file whose first PART10_HEAD bytes are `head`: after
    the File Meta group, whose length its first element, (0002,0000) UL, gives (explicit VR LE:
    tag 4, VR 2, length 2, value 4). ValueError when the head is not that."""
    if len(head) < PART10_HEAD or head[128:132] != _PREFIX:
        raise ValueError("not a DICOM Part 10 file")
    if head[132:136] != b"\x02\x00\x00\x00" or head[136:138] != b"UL":
        raise ValueError("no File Meta Information Group Length")
    return PART10_HEAD + int.from_bytes(head[140:144], "little")


class StorageError(Exception):
    """An I/O failure of the store other than running out of space."""


class OutOfSpace(StorageError):
    """ENOSPC or EDQUOT: the disk or the quota is full (the caller answers A700)."""


class BelowReserve(OutOfSpace):
    """The filesystem has less free space than the store keeps in reserve (min_free_bytes): no new
    spool is started (the caller answers A700)."""


_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EDQUOT})


def _mapped(exc: OSError, action: str) -> StorageError:
    kind = OutOfSpace if exc.errno in _SPACE_ERRNOS else StorageError
    return kind(f"{action}: {exc.strerror or exc}")


# --- the spool ------------------------------------------------------------------------------------

SpoolOpener = Callable[[Path], BinaryIO]
"""Creates the spool file at the given path and returns it open for writing (the test seam)."""


def _open_spool(path: Path) -> BinaryIO:
    # O_EXCL: a name collision (or someone else's file) is an error, never overwritten.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    # Unbuffered: the caller hands over large chunks, each one write(2) with no extra copy.
    return open(fd, "wb", buffering=0)


def fsync_dir(path: Path) -> None:
    """Make `path`'s entries durable (a rename into it, a new subdirectory): fsync(2) of the
    directory."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A dataset being received: File Meta plus the fragments so far, in root/tmp.

    Used by one thread at a time. After install() or discard() it is finished; discard() is then a
    no-op, so a caller may discard unconditionally on its error paths. `on_gone` is called once the
    file has left tmp/, installed or discarded (the store refills its spare pool then).
    """

    __slots__ = (
        "_file",
        "_finished",
        "_fsync",
        "_hash",
        "_on_gone",
        "dataset_offset",
        "path",
        "size",
    )

    def __init__(
        self,
        path: Path,
        file: BinaryIO,
        *,
        fsync: bool,
        on_gone: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self.size = 0  # bytes written so far, preamble and meta included
        self.dataset_offset = 0  # set by FileStore.create_spool once the meta is written
        self._file: BinaryIO | None = file
        self._fsync = fsync
        self._hash = hashlib.sha256()
        self._finished = False
        self._on_gone = on_gone

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append `data` and fold it into the running SHA-256."""
        file = self._live_file()
        view = memoryview(data).cast("B")
        try:
            done = 0
            while done < len(view):  # a raw write may be short; loop until all of it is down
                written = file.write(view[done:])
                if not written:  # 0, or None from a non-blocking file: never for a disk file
                    raise OSError(errno.EIO, "write made no progress")
                done += written
        except OSError as exc:
            self.discard()
            raise _mapped(exc, f"writing {self.path.name}") from exc
        self._hash.update(view)
        self.size += len(view)

    def sha256(self) -> str:
        """Hex SHA-256 of the whole file as written so far."""
        return self._hash.hexdigest()

    def sync(self) -> None:
        """Flush and fsync the file (nothing is fsynced when the store was made with fsync=False)."""
        file = self._live_file()
        try:
            file.flush()
            if self._fsync:
                os.fsync(file.fileno())
        except OSError as exc:
            self.discard()
            raise _mapped(exc, f"syncing {self.path.name}") from exc

    def discard(self) -> None:
        """Close and unlink the spool; idempotent, never raises."""
        if self._finished:
            return
        self._finished = True
        file, self._file = self._file, None
        if file is not None:
            with suppress(OSError):
                file.close()
        with suppress(OSError):
            os.unlink(self.path)
        if self._on_gone is not None:
            self._on_gone()

    def _live_file(self) -> BinaryIO:
        if self._file is None:
            raise ValueError(f"spool {self.path.name} is already installed or discarded")
        return self._file

    def _close_for_install(self) -> None:
        # Raises OSError: a failing close may be the first report of a failed write (NFS).
        file = self._live_file()
        self._file = None
        file.close()

    def _mark_installed(self) -> None:
        self._finished = True
        if self._on_gone is not None:
            self._on_gone()


@dataclass(frozen=True, slots=True)
class StoredFile:
    relpath: str  # relative to the store root, POSIX separators
    size: int
    sha256: str


# --- the store ------------------------------------------------------------------------------------

_DIR_MODE: Final = 0o750  # matches the 0o640 of the files: owner writes, group reads
FAN_OUT_CHARS: Final = 3  # hex digits of the UID hash naming the directory: 4096 directories


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, outermost first."""
    missing: list[Path] = []
    while not path.is_dir() and path != path.parent:
        missing.append(path)
        path = path.parent
    missing.reverse()
    return missing


def stored_path(root: Path, relpath: str) -> Path:
    """root / relpath; ValueError for anything absolute, empty, or climbing out with "..".

    Relpaths come from our own index, but the index is a file someone could edit. (A function as
    well as FileStore.path: a mover process resolves paths without opening the store.)
    """
    # Checked on the string (a retrieve asks for every instance it sends): POSIX separators, as
    # the index stores them.
    if (
        relpath.startswith("/")
        or "\x00" in relpath
        or not relpath.strip("/.")
        or ".." in relpath.split("/")
    ):
        raise ValueError(f"not a path inside the store: {relpath!r}")
    return root / relpath


class FileStore:
    """The files under `root`; see the module docstring for the layout and durability protocol."""

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        opener: SpoolOpener | None = None,
        spares: int = 0,
        min_free_bytes: int = 0,
    ) -> None:
        """`spares`: how many empty spool files to keep ready in tmp/ (spares.py); 0 for none.
        `min_free_bytes`: create_spool() raises BelowReserve when the filesystem has less free."""
        self.root = Path(root)
        self._fsync = fsync
        self._min_free = min_free_bytes
        self._opener: SpoolOpener = opener or _open_spool
        self._tmp = self.root / "tmp"
        self._objects = self.root / "objects"
        self._spares = SparePool(self._tmp, self._opener, spares) if spares > 0 else None
        # Fan-out directories ("ab/cd") known to exist durably, so the hot path of install()
        # costs no mkdir or stat. Only ever grows; the lock serialises the slow path that creates.
        self._known_dirs: set[str] = set()
        self._dirs_lock = threading.Lock()
        try:
            for directory in (self._tmp, self._objects):
                created = _missing_dirs(directory)
                for new in created:
                    os.mkdir(new, _DIR_MODE)
                if self._fsync:
                    for new in created:
                        fsync_dir(new)
                        fsync_dir(new.parent)
            same_filesystem = os.stat(self._tmp).st_dev == os.stat(self._objects).st_dev
            self._create_fan_out()
        except OSError as exc:
            raise _mapped(exc, f"preparing {self.root}") from exc
        if not same_filesystem:
            # os.replace would fail with EXDEV on every store; say so once, at start-up.
            raise StorageError(f"{self._tmp} and {self._objects} are on different filesystems")

    def _create_fan_out(self) -> None:
        """All 4096 fan-out directories, once, when the store is first opened: no C-STORE then
        pays for a mkdir and the fsyncs that make a new directory durable. The last one created
        marks the set complete (they are made in order)."""
        names = [f"{i:0{FAN_OUT_CHARS}x}" for i in range(16**FAN_OUT_CHARS)]
        if not (self._objects / names[-1]).is_dir():
            for name in names:
                with suppress(FileExistsError):
                    os.mkdir(self._objects / name, _DIR_MODE)
            if self._fsync:
                # The new entries live in objects/: one fsync makes them all durable. Each leaf
                # is fsynced by install() after a rename into it.
                fsync_dir(self._objects)
        self._known_dirs.update(names)

    def create_spool(self, meta: FileMeta) -> Spool:
        """A new spool in root/tmp with the File Meta already written (ValueError on a bad meta;
        BelowReserve when free space is under min_free_bytes)."""
        header = encode_file_meta(meta)
        if self._min_free:
            free = self.free_bytes()  # one statvfs(2): microseconds, on the caller's worker thread
            if free < self._min_free:
                raise BelowReserve(
                    f"{free // 2**20} MiB free, under the {self._min_free // 2**20} MiB reserve"
                )
        spare = self._spares.take() if self._spares is not None else None
        if spare is not None:
            path, file = spare
        else:
            path = self._tmp / f"{uuid.uuid4().hex}{PART_SUFFIX}"
            try:
                file = create(self._opener, path)
            except OSError as exc:
                raise _mapped(exc, f"creating {path.name}") from exc
        # Installed or discarded (a refused store), the spool leaves tmp/: see spares.py.
        refill = self._spares.refill if self._spares is not None else None
        spool = Spool(path, file, fsync=self._fsync, on_gone=refill)
        spool.write(header)  # maps its own errors and removes the file
        spool.dataset_offset = len(header)
        return spool

    @staticmethod
    def relpath_for(sop_instance_uid: str) -> str:
        """Where a SOP Instance lives: "objects/abc/<sha256 hex>.dcm".

        Only the hash of the UID reaches the filesystem, never the peer's string itself: no path
        tricks, fixed-length names, and an even spread over 4096 directories (about 2,400 files
        each at ten million instances, which hashed directories of ext4 and XFS handle well). A
        UID is ASCII (PS3.5 9.1); anything else raises ValueError.
        """
        digest = hashlib.sha256(sop_instance_uid.encode("ascii")).hexdigest()
        return f"objects/{digest[:FAN_OUT_CHARS]}/{digest}.dcm"

    def install(self, spool: Spool, sop_instance_uid: str) -> StoredFile:
        """fsync the spool, rename it to its hashed path (replacing any file there), fsync the dir.

        On any failure before the rename the spool is removed. If only the final directory fsync
        fails, the renamed file stays where it is (an orphan at worst, as after a crash) and
        StorageError is raised: nothing may be acknowledged for it.
        """
        try:
            relpath = self.relpath_for(sop_instance_uid)
            final = self.root / relpath
            spool.sync()
            spool._close_for_install()
            self._ensure_dir(final.parent)
            try:
                os.replace(spool.path, final)
            except FileNotFoundError:
                # A cached fan-out directory removed behind our back: recreate it once.
                self._known_dirs.discard(self._dir_key(final.parent))
                self._ensure_dir(final.parent)
                os.replace(spool.path, final)
        except OSError as exc:
            spool.discard()
            raise _mapped(exc, f"installing {spool.path.name}") from exc
        except BaseException:
            spool.discard()
            raise
        spool._mark_installed()  # tmp/ is free again: the spare pool refills (spares.py)
        if self._fsync:
            try:
                fsync_dir(final.parent)
            except OSError as exc:
                raise _mapped(exc, f"syncing the directory of {relpath}") from exc
        return StoredFile(relpath, spool.size, spool.sha256())

    def close(self) -> None:
        """Remove the spare spool files and stop the thread that makes them (spares.py)."""
        if self._spares is not None:
            self._spares.close()

    @property
    def spares_ready(self) -> int:
        """Empty spool files ready in tmp/ now."""
        return self._spares.ready if self._spares is not None else 0

    def path(self, relpath: str) -> Path:
        """root / relpath; ValueError for anything absolute, empty, or climbing out with ".."."""
        return stored_path(self.root, relpath)

    def remove(self, relpath: str) -> None:
        """Unlink the file if present and fsync its directory."""
        target = self.path(relpath)
        try:
            os.unlink(target)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _mapped(exc, f"removing {relpath}") from exc
        if self._fsync:
            try:
                fsync_dir(target.parent)
            except OSError as exc:
                raise _mapped(exc, f"syncing the directory of {relpath}") from exc

    def clean_tmp(self) -> int:
        """Remove the spool files a crash left in tmp/, and its empty spares; returns how many
        spools. Only at start-up: a spool in use would be removed too."""
        removed = spares = 0
        try:
            with os.scandir(self._tmp) as entries:
                for entry in entries:
                    spool = entry.name.endswith(PART_SUFFIX)
                    if not (spool or entry.name.endswith(SPARE_SUFFIX)):
                        continue
                    if entry.is_file(follow_symlinks=False):
                        with suppress(FileNotFoundError):
                            os.unlink(entry.path)
                            removed += spool
                            spares += not spool
            if (removed or spares) and self._fsync:
                fsync_dir(self._tmp)
        except OSError as exc:
            raise _mapped(exc, "cleaning tmp") from exc
        return removed

    def iter_objects(self) -> Iterator[str]:
        """Relpaths of every stored object file, sorted (for reindex and verify)."""
        try:
            for directory in _sorted_names(self._objects, dirs=True):
                for name in _sorted_names(self._objects / directory, dirs=False):
                    if name.endswith(".dcm"):
                        yield f"objects/{directory}/{name}"
        except OSError as exc:
            raise _mapped(exc, "listing objects") from exc

    def free_bytes(self) -> int:
        try:
            return shutil.disk_usage(self.root).free
        except OSError as exc:
            raise _mapped(exc, "measuring free space") from exc

    def _dir_key(self, directory: Path) -> str:
        return directory.relative_to(self._objects).as_posix()

    def _ensure_dir(self, directory: Path) -> None:
        key = self._dir_key(directory)
        if key in self._known_dirs:  # the hot path: one set lookup, no syscall
            return
        with self._dirs_lock:
            if key in self._known_dirs:
                return
            created = _missing_dirs(directory)
            for new in created:
                with suppress(FileExistsError):  # another process may race us; fine
                    os.mkdir(new, _DIR_MODE)
            if self._fsync:
                # Each new directory's entry lives in its parent: fsync the parents. The leaf
                # itself is fsynced by install() right after the rename, before anyone is told.
                for parent in sorted({new.parent for new in created}, key=lambda p: -len(p.parts)):
                    fsync_dir(parent)
            self._known_dirs.add(key)


def _sorted_names(directory: Path, *, dirs: bool) -> list[str]:
    with os.scandir(directory) as entries:
        names = [
            entry.name
            for entry in entries
            if (
                entry.is_dir(follow_symlinks=False)
                if dirs
                else entry.is_file(follow_symlinks=False)
            )
        ]
    return sorted(names)
