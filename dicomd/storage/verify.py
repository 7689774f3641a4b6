"""`dicomd verify` and `dicomd stats`: what the archive holds, checked against its own index.

Owns: re-hashing every stored file against the SHA-256 the index recorded when the instance was
acknowledged, finding files the index does not know (orphans) and rows whose file is gone, and the
counts and sizes an administrator asks for. Reads only; `reindex` is the one that repairs.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicomd.storage.files import FileStore
from dicomd.storage.index import Index

_CHUNK = 1 << 20


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    intact: int = 0
    missing: list[str] = field(default_factory=list)  # SOP Instance UIDs whose file is gone
    corrupt: list[str] = field(default_factory=list)  # SOP Instance UIDs whose file changed
    orphans: list[str] = field(default_factory=list)  # stored files the index does not know

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.orphans)


def _digest(path: Path) -> tuple[str, int] | None:
    try:
        sha = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                sha.update(chunk)
                size += len(chunk)
        return sha.hexdigest(), size
    except FileNotFoundError:
        return None


async def verify(files: FileStore, index: Index) -> VerifyReport:
    report = VerifyReport()
    known: set[str] = set()
    async for item in index.iter_instances():
        report.checked += 1
        known.add(item.relpath)
        found = await asyncio.to_thread(_digest, files.path(item.relpath))
        if found is None:
            report.missing.append(item.sop_instance_uid)
        elif found != (item.sha256, item.size):
            report.corrupt.append(item.sop_instance_uid)
        else:
            report.intact += 1
    on_disk = await asyncio.to_thread(lambda: list(files.iter_objects()))
    report.orphans = [relpath for relpath in on_disk if relpath not in known]
    return report


_STATS = """
SELECT se.modality, COUNT(*), COALESCE(SUM(i.size), 0)
  FROM instance AS i JOIN series AS se ON se.pk = i.series_pk
 GROUP BY se.modality ORDER BY se.modality
"""


async def stats(files: FileStore, index: Index) -> dict[str, Any]:
    counts = await index.counts()
    by_modality: dict[str, dict[str, int]] = {}
    async with index.query(_STATS) as rows:
        while batch := await rows.fetch(500):
            for modality, instances, size in batch:
                by_modality[modality or "(none)"] = {"instances": instances, "bytes": size}
    total = sum(m["bytes"] for m in by_modality.values())
    free = await asyncio.to_thread(files.free_bytes)
    return {**counts, "bytes": total, "free_bytes": free, "by_modality": by_modality}
