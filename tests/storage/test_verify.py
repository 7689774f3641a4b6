"""`dicomd verify` finds corrupt, missing and orphan files; `dicomd stats` counts what is stored."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from pydicom.uid import generate_uid

from tests.conftest import make_config, run_runtime
from tests.services.test_store import associate, dataset_bytes, send_store
from tests.storage.test_reconcile import orphan


async def _cli(*args: str) -> tuple[int, dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dicomd.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, _err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, json.loads(out)


async def test_verify_and_stats(tmp_path: Path) -> None:
    config = make_config(root=tmp_path)
    toml = tmp_path / "dicomd.toml"
    toml.write_text(
        f'[storage]\nroot = "{config.storage.root}"\n[index]\npath = "{config.index.path}"\n'
    )
    uids = [generate_uid() for _ in range(4)]
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        for i, uid in enumerate(uids):
            assert (await send_store(peer, uid, dataset_bytes(uid), message_id=i + 1)).status == 0
        peer.close()
        code, report = await _cli("verify", "--config", str(toml))
        assert (code, report["ok"], report["intact"]) == (0, True, 4)
        code, stats = await _cli("stats", "--config", str(toml))
        assert code == 0
        assert stats["instances"] == 4 and stats["studies"] == 1
        assert stats["by_modality"] == {"CT": {"instances": 4, "bytes": stats["bytes"]}}
        # Damage the archive three ways.
        rows = [await runtime.index.get(uid) for uid in uids[:2]]
        assert rows[0] is not None and rows[1] is not None
        corrupt = runtime.files.path(rows[0].relpath)
        data = bytearray(corrupt.read_bytes())
        data[-1] ^= 0xFF
        corrupt.write_bytes(bytes(data))
        runtime.files.path(rows[1].relpath).unlink()
        extra = generate_uid()
        relpath = orphan(runtime.files, extra, dataset_bytes(extra))
    code, report = await _cli("verify", "--config", str(toml))
    assert code == 1 and report["ok"] is False
    assert report["corrupt"] == [uids[0]]
    assert report["missing"] == [uids[1]]
    assert report["orphans"] == [relpath]
    assert report["intact"] == 2
