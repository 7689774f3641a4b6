"""C-STORE from independent SCUs (DCMTK storescu, pynetdicom): every file stored byte for byte."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from dicomd.app import Runtime
from dicomd.storage.files import FileStore
from tests import dicomgen
from tests.conftest import make_config, require_tool, run_runtime
from tests.interop.test_echo_interop import run_tool

pytestmark = pytest.mark.interop


async def assert_stored_exactly(runtime: Runtime, sent: list[Path], calling_ae: str) -> None:
    """Each sent file is in the store, its dataset byte-identical and its index row right."""
    for path in sent:
        ds = await asyncio.to_thread(pydicom.dcmread, path, stop_before_pixels=True)
        uid = str(ds.SOPInstanceUID)
        row = await runtime.index.get(uid)
        assert row is not None, f"{path.name} ({ds.SOPClassUID.name}) not indexed"
        assert row.relpath == FileStore.relpath_for(uid)
        assert row.sop_class_uid == ds.SOPClassUID
        stored = runtime.files.path(row.relpath)
        assert await asyncio.to_thread(dicomgen.dataset_bytes, stored) == await asyncio.to_thread(
            dicomgen.dataset_bytes, path
        ), f"{path.name}: stored dataset differs from the sent one"
        meta = (await asyncio.to_thread(pydicom.dcmread, stored, stop_before_pixels=True)).file_meta
        assert meta.TransferSyntaxUID == row.transfer_syntax_uid
        assert meta.SourceApplicationEntityTitle == calling_ae


async def storescu(port: int, *files: Path, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    tool = require_tool("storescu")
    return await run_tool(
        tool, "-aet", "STORESCU", "-aec", "DICOMD", *extra, "127.0.0.1", str(port),
        *map(str, files), timeout=120,
    )  # fmt: skip


# storescu proposes a compressed syntax only when told to, one option per syntax.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
    "1.2.840.10008.1.2.4.100": "-xm",
    "1.2.840.10008.1.2.4.102": "-xn",
    "1.2.840.10008.1.2.4.107": "-x4",
}


def by_transfer_syntax(paths: list[Path]) -> dict[str, list[Path]]:
    """Files grouped by transfer syntax, for the syntaxes DCMTK 3.6.7 can propose (HTJ2K, newer
    than that DCMTK, goes through pynetdicom)."""
    groups: dict[str, list[Path]] = {}
    for p in paths:
        ts = str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        if ts in STORESCU_PROPOSE:
            groups.setdefault(ts, []).append(p)
    return groups


async def test_storescu_spread_of_sop_classes_and_transfer_syntaxes(tmp_path: Path) -> None:
    files = await asyncio.to_thread(dicomgen.spread, tmp_path / "in")
    groups = await asyncio.to_thread(by_transfer_syntax, files)
    sendable = [p for group in groups.values() for p in group]
    assert len(groups) >= 9 and len(sendable) >= 18
    async with run_runtime() as (server, runtime):
        for ts, group in groups.items():
            # -R: only the contexts these files need, with their own transfer syntax.
            code, out = await storescu(server.port, *group, extra=("-R", STORESCU_PROPOSE[ts]))
            assert code == 0, f"{ts}: {out}"
            assert "Converting transfer syntax" not in out
        await assert_stored_exactly(runtime, sendable, "STORESCU")
        counts = await runtime.index.counts()
        assert counts["instances"] == len(sendable)


async def test_storescu_large_instance_over_small_pdus(tmp_path: Path) -> None:
    big = await asyncio.to_thread(
        dicomgen.write_instance,
        tmp_path / "big.dcm",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        size_bytes=6 * 1024 * 1024,
        seed=7,
    )
    assert big.stat().st_size > 5 * 1024 * 1024
    async with run_runtime(make_config(max_pdu_length=4096)) as (server, runtime):
        code, out = await storescu(server.port, big, extra=("-R",))
        assert code == 0, out
        await assert_stored_exactly(runtime, [big], "STORESCU")


async def test_storescu_many_instances_one_association(tmp_path: Path) -> None:
    files = await asyncio.to_thread(dicomgen.small_instances, tmp_path / "small", 60)
    async with run_runtime() as (server, runtime):
        code, out = await storescu(server.port, *files, extra=("-R",))
        assert code == 0, out
        await assert_stored_exactly(runtime, files, "STORESCU")


def _pynetdicom_store(port: int, paths: list[Path]) -> list[int]:
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title="PYNETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    seen: set[tuple[str, str]] = set()
    for ds in datasets:
        key = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        if key not in seen:
            seen.add(key)
            ae.add_requested_context(key[0], [key[1]])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMD")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


async def test_pynetdicom_scu_stores_every_family(tmp_path: Path) -> None:
    files = await asyncio.to_thread(dicomgen.spread, tmp_path / "in")
    async with run_runtime() as (server, runtime):
        statuses = await asyncio.to_thread(_pynetdicom_store, server.port, files)
        assert statuses == [0] * len(files)
        await assert_stored_exactly(runtime, files, "PYNETSCU")
