"""Bring the index back in line with the files: start-up repair and `dicomd reindex`.

Owns: what happens after a crash. The C-STORE path writes the file before the index row, so a crash
can leave (a) a spool file in tmp/ — never acknowledged, deleted — or (b) an installed file with no
index row — never acknowledged either, adopted here so that the archive holds what its disk holds.
An index row without its file cannot come from a crash (the row is committed after the rename and the
directory fsync); it means someone deleted files, and `reindex` reports and removes such rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from pydicom.filereader import read_file_meta_info

from dicomd.storage.files import PART10_HEAD, FileStore, dataset_offset
from dicomd.storage.index import Index
from dicomd.storage.record import InstanceRecord, RecordError, record_from_dataset
from dicomd.storage.scan import ScanError, scan
from dicomd.transfer_syntaxes import EXPLICIT_VR_BE

log = structlog.get_logger("dicomd.reconcile")

_HASH_CHUNK = 1 << 20


@dataclass(slots=True)
class ReconcileReport:
    removed_spools: int = 0
    scanned: int = 0
    adopted: int = 0
    reread: int = 0
    unreadable: int = 0
    missing_files: int = 0
    dropped: int = 0


class UnreadableFile(Exception):
    pass


def read_stored(path: Path, relpath: str) -> InstanceRecord:
    """The index record of a stored Part 10 file, read from the file alone (worker thread)."""
    try:
        with open(path, "rb") as f:
            head = f.read(PART10_HEAD)
            st = os.fstat(f.fileno())
            sha = hashlib.sha256(head)
            while chunk := f.read(_HASH_CHUNK):
                sha.update(chunk)
    except OSError as e:
        raise UnreadableFile(f"{relpath}: {e.strerror}") from e
    try:
        offset = dataset_offset(head)
    except ValueError as e:
        raise UnreadableFile(f"{relpath}: {e}") from e
    try:
        meta = read_file_meta_info(path)
        transfer_syntax = str(meta.TransferSyntaxUID)
        calling = str(meta.get("SourceApplicationEntityTitle", "") or "").strip()
        with open(path, "rb") as f:
            scanned = scan(f, offset, st.st_size, transfer_syntax)
        return record_from_dataset(
            scanned.dataset(),
            transfer_syntax_uid=transfer_syntax,
            relpath=relpath,
            size=st.st_size,
            sha256=sha.hexdigest(),
            received_at=datetime.fromtimestamp(st.st_mtime, UTC).isoformat(timespec="microseconds"),
            calling_ae_title=calling,
            attributes=scanned.blob,
            attributes_transfer_syntax=scanned.blob_transfer_syntax,
            raw=scanned.elements,
            little_endian=scanned.blob_transfer_syntax != EXPLICIT_VR_BE,
        )
    except (ScanError, RecordError, AttributeError, ValueError, OSError) as e:
        raise UnreadableFile(f"{relpath}: {e}") from e


class StoreLooksMissing(Exception):
    """Every indexed file is missing: more likely an unmounted volume than deleted files."""


async def reconcile(
    files: FileStore,
    index: Index,
    *,
    rebuild: bool = False,
    drop_missing: bool = False,
    force: bool = False,
) -> ReconcileReport:
    """Adopt files the index does not know; with `rebuild`, re-read every file into the index.

    Rows whose file size differs from the index (a `replace` interrupted between rename and commit)
    are re-read from the file. Rows whose file is missing are counted and logged, and removed only
    with `drop_missing` (an administrator's `dicomd reindex`, never start-up: a store volume that
    failed to mount must not empty the index). Even then, when every indexed file is missing the
    rows are kept unless `force`.
    """
    report = ReconcileReport()
    report.removed_spools = await asyncio.to_thread(files.clean_tmp)
    known: dict[str, tuple[str, int]] = {}
    async for item in index.iter_instances():
        known[item.relpath] = (item.sop_instance_uid, item.size)
    on_disk = await asyncio.to_thread(lambda: list(files.iter_objects()))
    report.scanned = len(on_disk)
    for relpath in on_disk:
        entry = known.pop(relpath, None)
        path = files.path(relpath)
        if entry is not None and not rebuild:
            size = await asyncio.to_thread(lambda p=path: p.stat().st_size)  # type: ignore[misc]
            if size == entry[1]:
                continue
        try:
            record = await asyncio.to_thread(read_stored, path, relpath)
        except UnreadableFile as e:
            report.unreadable += 1
            log.warning("reconcile_unreadable_file", detail=str(e))
            continue
        try:
            expected = files.relpath_for(record.sop_instance_uid)
        except ValueError:  # a UID that is not ASCII cannot be ours
            expected = None
        if record.relpath != expected:
            report.unreadable += 1
            log.warning("reconcile_misplaced_file", relpath=relpath)
            continue
        await index.put(record, policy="replace")
        if entry is None:
            report.adopted += 1
            log.info("reconcile_adopted", relpath=relpath, sop_instance_uid=record.sop_instance_uid)
        else:
            report.reread += 1
    report.missing_files = len(known)
    for relpath, (uid, _size) in known.items():
        log.warning("reconcile_missing_file", relpath=relpath, sop_instance_uid=uid)
    if known and drop_missing:
        if report.scanned == 0 and not force:
            raise StoreLooksMissing(
                f"none of the {len(known)} indexed files is in {files.root}: is the volume "
                "mounted? (dicomd reindex --force drops the rows anyway)"
            )
        for uid, _size in known.values():
            await index.delete(uid)
        report.dropped = len(known)
    return report
