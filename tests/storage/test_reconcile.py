"""Start-up repair and `dicomd reindex`: orphans adopted, stale spools removed, dangling rows dropped."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from pydicom.uid import generate_uid

from dicomd import IMPLEMENTATION_CLASS_UID
from dicomd.app import CLEAN_SHUTDOWN_MARKER
from dicomd.storage.files import FileMeta
from tests.conftest import make_config, run_runtime
from tests.services.test_store import CT, associate, dataset_bytes, send_store

IMPLICIT = "1.2.840.10008.1.2"


def orphan(runtime_files: object, uid: str, data: bytes) -> str:
    """What a crash between the rename and the index commit leaves behind: an installed file."""
    files = runtime_files
    spool = files.create_spool(  # type: ignore[attr-defined]
        FileMeta(CT, uid, IMPLICIT, IMPLEMENTATION_CLASS_UID, "TEST", "CRASHED")
    )
    spool.write(data)
    return files.install(spool, uid).relpath  # type: ignore[attr-defined, no-any-return]


async def test_unclean_start_adopts_orphans_and_removes_spools(tmp_path: Path) -> None:
    config = make_config(root=tmp_path)
    uid_acked, uid_orphan = generate_uid(), generate_uid()
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        assert (await send_store(peer, uid_acked, dataset_bytes(uid_acked))).status == 0
        peer.close()
        relpath = orphan(runtime.files, uid_orphan, dataset_bytes(uid_orphan, PatientID="ORPH"))
        stale = runtime.files.create_spool(FileMeta(CT, "1.2.3", IMPLICIT, "1.2", "T", "X"))
        stale.write(b"half a dataset")
    # The block above shut down cleanly; make it look like a crash.
    (config.storage.root / CLEAN_SHUTDOWN_MARKER).unlink()
    async with run_runtime(config) as (_server, runtime):
        row = await runtime.index.get(uid_orphan)
        assert row is not None and row.relpath == relpath
        assert await runtime.index.get(uid_acked) is not None
        assert list((config.storage.root / "tmp").iterdir()) == []
        assert (await runtime.index.counts())["instances"] == 2


async def test_clean_start_does_not_scan(tmp_path: Path) -> None:
    config = make_config(root=tmp_path)
    uid = generate_uid()
    async with run_runtime(config) as (_server, runtime):
        orphan(runtime.files, uid, dataset_bytes(uid))
    assert (config.storage.root / CLEAN_SHUTDOWN_MARKER).exists()
    async with run_runtime(config) as (_server, runtime):
        # A clean shutdown promises no orphans: nothing is scanned, so this one stays unknown.
        assert await runtime.index.get(uid) is None


async def test_reindex_command(tmp_path: Path) -> None:
    config = make_config(root=tmp_path)
    toml = tmp_path / "dicomd.toml"
    toml.write_text(
        f'[storage]\nroot = "{config.storage.root}"\n[index]\npath = "{config.index.path}"\n'
        '[log]\nformat = "json"\n'
    )
    kept, gone, adopted = generate_uid(), generate_uid(), generate_uid()
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        for i, uid in enumerate((kept, gone)):
            assert (await send_store(peer, uid, dataset_bytes(uid), message_id=i + 1)).status == 0
        peer.close()
        row = await runtime.index.get(gone)
        assert row is not None
        runtime.files.path(row.relpath).unlink()  # someone deleted a file by hand
        orphan(runtime.files, adopted, dataset_bytes(adopted))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dicomd.cli", "reindex", "--config", str(toml),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["adopted"] == 1
    assert report["missing_files"] == 1
    assert report["index_instances"] == 2
    async with run_runtime(config) as (_server, runtime):
        assert await runtime.index.get(adopted) is not None
        assert await runtime.index.get(gone) is None
        assert await runtime.index.get(kept) is not None


async def test_start_up_never_drops_rows_and_reindex_guards_an_unmounted_store(
    tmp_path: Path,
) -> None:
    """A store volume that failed to mount: start-up keeps every row; reindex refuses to drop
    them all unless forced."""
    config = make_config(root=tmp_path)
    uid = generate_uid()
    async with run_runtime(config) as (server, _runtime):
        peer = await associate(server.port)
        assert (await send_store(peer, uid, dataset_bytes(uid))).status == 0
        peer.close()
    objects = config.storage.root / "objects"
    objects.rename(tmp_path / "elsewhere")  # as if the volume were not mounted
    (config.storage.root / CLEAN_SHUTDOWN_MARKER).unlink()  # and the last run crashed
    async with run_runtime(config) as (_server, runtime):
        assert await runtime.index.get(uid) is not None
    toml = tmp_path / "dicomd.toml"
    toml.write_text(
        f'[storage]\nroot = "{config.storage.root}"\n[index]\npath = "{config.index.path}"\n'
    )

    async def reindex(*extra: str) -> tuple[int, dict[str, object]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dicomd.cli", "reindex", "--config", str(toml), *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(60):
            out, _err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, json.loads(out)

    code, report = await reindex()
    assert code == 1 and "mounted" in str(report["error"])
    code, report = await reindex("--force")
    assert code == 0 and report["dropped"] == 1 and report["index_instances"] == 0
