"""C-STORE SCP end to end through a raw peer: statuses, durability order, nothing half-written."""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
import pytest
import structlog
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from dicomd.app import SPOOL_SPARES
from dicomd.config import IndexConfig
from dicomd.dimse import status
from dicomd.dimse.fragments import fragment
from dicomd.dimse.messages import CStoreRQ, CStoreRSP, decode_command, encode_command
from dicomd.storage.files import FileStore
from dicomd.ul.codes import AbortReason, AbortSource
from dicomd.ul.items import PresentationContextRQ
from dicomd.ul.pdu import PDV, Abort, AssociateAC, PDataTF
from tests.conftest import make_config, run_runtime
from tests.net.rawpeer import IMPLICIT, RawPeer, associate_rq, store_pdus
from tests.reliability.peers import spools

CT = "1.2.840.10008.5.1.4.1.1.2"
SC = "1.2.840.10008.5.1.4.1.1.7"


def dataset_bytes(
    sop_instance: str, *, sop_class: str = CT, pixels: int = 2048, **attrs: Any
) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.PatientName = attrs.pop("PatientName", "Test^Store")
    ds.PatientID = attrs.pop("PatientID", "P1")
    ds.StudyInstanceUID = attrs.pop("StudyInstanceUID", "1.2.3.4.1")
    ds.SeriesInstanceUID = attrs.pop("SeriesInstanceUID", "1.2.3.4.1.1")
    ds.Modality = "CT"
    ds.StudyDate = "20260101"
    for key, value in attrs.items():
        setattr(ds, key, value)
    if pixels:
        ds.Rows, ds.Columns, ds.BitsAllocated = max(1, pixels // 2048), 1024, 16
        ds.PixelData = bytes(range(256)) * (pixels // 256)
    fp = pydicom.filebase.DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = True, True
    pydicom.filewriter.write_dataset(fp, ds)
    return fp.getvalue()


def ctx(sop_class: str = CT, context_id: int = 1) -> PresentationContextRQ:
    return PresentationContextRQ(context_id, sop_class, (IMPLICIT,))


async def associate(port: int, *contexts: PresentationContextRQ) -> RawPeer:
    peer = await RawPeer.connect(port)
    ac = await peer.associate(associate_rq(contexts=contexts or (ctx(),), calling="RAWSCU"))
    assert isinstance(ac, AssociateAC), ac
    return peer


async def send_store(peer: RawPeer, sop_instance: str, data: bytes, **kw: Any) -> CStoreRSP:
    for pdu in store_pdus(
        sop_class=kw.pop("sop_class", CT), sop_instance=sop_instance, dataset=data, **kw
    ):
        await peer.send(pdu)
    rsp = await peer.receive(timeout=10)
    assert isinstance(rsp, PDataTF), rsp
    message = decode_command(b"".join(p.data for p in rsp.pdvs))
    assert isinstance(message, CStoreRSP)
    return message


def stored_files(root: Path) -> list[Path]:
    return sorted((root / "objects").rglob("*.dcm"))


async def test_store_writes_part10_file_and_commits_index_before_success() -> None:
    config = make_config()
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        uid = generate_uid()
        data = dataset_bytes(uid)
        rsp = await send_store(peer, uid, data)
        assert rsp.status == status.SUCCESS
        assert rsp.affected_sop_instance_uid == uid
        # When the response arrived, the row was committed: visible through the index at once.
        row = await runtime.index.get(uid)
        assert row is not None
        path = runtime.files.path(row.relpath)
        assert row.relpath == FileStore.relpath_for(uid)
        content = path.read_bytes()
        assert hashlib.sha256(content).hexdigest() == row.sha256
        assert row.size == len(content)
        # Part 10: preamble, DICM, our meta, then the dataset exactly as received.
        assert content[128:132] == b"DICM"
        assert content.endswith(data)
        ds = pydicom.dcmread(path)
        meta: FileMetaDataset = ds.file_meta
        assert meta.MediaStorageSOPClassUID == CT
        assert meta.MediaStorageSOPInstanceUID == uid
        assert meta.TransferSyntaxUID == ImplicitVRLittleEndian
        assert meta.SourceApplicationEntityTitle == "RAWSCU"
        assert meta.ImplementationClassUID.startswith("1.2.826.0.1.3680043.8.498.")
        assert ds.PatientName == "Test^Store"
        assert spools(config.storage.root) == []
        peer.close()


async def test_spare_spools_are_taken_bounded_and_removed_at_shutdown() -> None:
    config = make_config()
    tmp = config.storage.root / "tmp"
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        for _ in range(2 * SPOOL_SPARES):
            uid = generate_uid()
            assert (await send_store(peer, uid, dataset_bytes(uid))).status == status.SUCCESS
        for _ in range(1000):  # made by a thread in the background: up to 10 s
            if runtime.files.spares_ready == SPOOL_SPARES:
                break
            await asyncio.sleep(0.01)
        left = sorted(tmp.iterdir())
        assert [p.suffix for p in left] == [".spare"] * SPOOL_SPARES
        assert all(p.stat().st_size == 0 for p in left)
        peer.close()
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda uid: dataset_bytes(generate_uid()), status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (lambda uid: dataset_bytes(uid, sop_class=SC), status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (lambda uid: dataset_bytes(uid)[:-100], status.CANNOT_UNDERSTAND),
        (lambda uid: b"\x08\x00\x16\x00\xff\xff\xff\x7f" + b"junk" * 10, status.CANNOT_UNDERSTAND),
        (
            lambda uid: dataset_bytes(uid, StudyInstanceUID=""),
            status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        ),
    ],
    ids=["instance-uid-mismatch", "class-uid-mismatch", "truncated", "garbage", "no-study-uid"],
)
async def test_refused_datasets_leave_nothing(make: Any, expected: int) -> None:
    config = make_config()
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        uid = generate_uid()
        with structlog.testing.capture_logs() as logs:
            rsp = await send_store(peer, uid, make(uid))
        assert rsp.status == expected
        assert rsp.error_comment
        assert await runtime.index.get(uid) is None
        assert stored_files(config.storage.root) == []
        assert spools(config.storage.root) == []
        # The association is still usable: a good instance after a refused one is stored.
        good = generate_uid()
        with structlog.testing.capture_logs() as good_logs:
            assert (await send_store(peer, good, dataset_bytes(good), message_id=2)).status == 0
        # The refusal is logged as a warning with its status; the store that worked, as info.
        levels = [
            (e["log_level"], e["status"])
            for e in [*logs, *good_logs]
            if e["event"] == "c_store_done"
        ]
        assert levels == [("warning", f"{expected:04X}"), ("info", "0000")]
        peer.close()


async def test_abort_in_the_middle_of_a_dataset_stores_nothing() -> None:
    config = make_config()
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        uid = generate_uid()
        pdus = store_pdus(
            sop_class=CT, sop_instance=uid, dataset=dataset_bytes(uid, pixels=2_000_000)
        )
        for pdu in pdus[: len(pdus) // 2]:
            await peer.send(pdu)
        await peer.send(Abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED))
        assert await peer.receive() is None
        for _ in range(100):
            if not server.state.established:
                break
            await asyncio.sleep(0.02)
        assert await runtime.index.get(uid) is None
        assert stored_files(config.storage.root) == []
        assert spools(config.storage.root) == []


async def test_command_and_context_sop_class_must_agree() -> None:
    async with run_runtime() as (server, _runtime):
        peer = await associate(server.port, ctx(CT, 1), ctx(SC, 3))
        uid = generate_uid()
        # A CT dataset and command sent on the Secondary Capture context.
        rsp = await send_store(peer, uid, dataset_bytes(uid), context_id=3)
        assert rsp.status == status.SOP_CLASS_NOT_SUPPORTED
        peer.close()


@pytest.mark.parametrize("policy", ["keep", "replace", "reject"])
async def test_duplicate_policies(policy: str) -> None:
    config = make_config(storage={"duplicate_policy": policy})
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        uid = generate_uid()
        first = dataset_bytes(uid, PatientName="First^Version")
        second = dataset_bytes(uid, PatientName="Second^Version")
        assert (await send_store(peer, uid, first)).status == status.SUCCESS
        rsp = await send_store(peer, uid, second, message_id=2)
        expected = {"keep": 0, "replace": 0, "reject": status.DUPLICATE_SOP_INSTANCE}[policy]
        assert rsp.status == expected
        files = stored_files(config.storage.root)
        assert len(files) == 1
        kept = second if policy == "replace" else first
        assert files[0].read_bytes().endswith(kept)
        row = await runtime.index.get(uid)
        assert row is not None
        assert row.sha256 == hashlib.sha256(files[0].read_bytes()).hexdigest()
        counts = await runtime.index.counts()
        assert counts["instances"] == 1
        assert spools(config.storage.root) == []
        peer.close()


async def test_concurrent_associations_store_the_same_instance_once() -> None:
    config = make_config()
    async with run_runtime(config) as (server, runtime):
        uid = generate_uid()
        data = dataset_bytes(uid)
        peers = [await associate(server.port) for _ in range(4)]
        results = await asyncio.gather(*(send_store(p, uid, data) for p in peers))
        assert [r.status for r in results] == [0, 0, 0, 0]
        assert (await runtime.index.counts())["instances"] == 1
        row = await runtime.index.get(uid)
        assert row is not None
        assert (
            hashlib.sha256(runtime.files.path(row.relpath).read_bytes()).hexdigest() == row.sha256
        )
        for p in peers:
            p.close()


def _big_dataset_chunks(uid: str, pixel_bytes: int) -> Iterator[bytes]:
    head = dataset_bytes(uid, pixels=0)
    # (7FE0,0010) Pixel Data, implicit VR: tag, 4-byte length, then the value in chunks.
    yield head + b"\xe0\x7f\x10\x00" + pixel_bytes.to_bytes(4, "little")
    block = bytes(range(256)) * 4096  # 1 MiB
    for _ in range(pixel_bytes // len(block)):
        yield block


async def test_large_instance_streams_with_bounded_memory() -> None:
    """256 MiB through the server in this process: peak RSS grows far less than the instance."""
    config = make_config(max_pdu_length=2 << 20)  # room for our 1 MiB PDVs
    size = 256 << 20
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        uid = generate_uid()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        command = encode_command(CStoreRQ(1, CT, uid))
        for pdu in fragment(1, command, is_command=True, max_pdu_length=1 << 20):
            await peer.send(pdu)
        chunks = list(_big_dataset_chunks(uid, size))
        for i, chunk in enumerate(chunks):
            last = 0x02 if i == len(chunks) - 1 else 0x00
            await peer.send(PDataTF((PDV(1, last, chunk),)))
        rsp = await peer.receive(timeout=60)
        assert isinstance(rsp, PDataTF)
        assert decode_command(rsp.pdvs[0].data).status == status.SUCCESS  # type: ignore[union-attr]
        grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        assert grown_mib < 100, f"peak RSS grew {grown_mib:.0f} MiB for a 256 MiB instance"
        row = await runtime.index.get(uid)
        assert row is not None and row.size > size
        peer.close()


async def test_disk_full_is_a700_and_storing_resumes(tmp_path: Path) -> None:
    """A store that runs out of space answers A700; what was acknowledged stays intact."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_disk_full_via_seam covers the path")
    mount = tmp_path / "small"
    mount.mkdir()
    proc = await asyncio.create_subprocess_exec(
        "mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)
    )
    assert await proc.wait() == 0, "mount tmpfs failed"
    try:
        # The store fills up; the index lives elsewhere so that what is measured is the store. No
        # reserve: the disk itself is to be full (the reserve has its own test).
        config = make_config(root=mount, storage={"min_free_mb": 0})
        config = replace(config, index=IndexConfig(path=tmp_path / "index.sqlite"))
        async with run_runtime(config) as (server, runtime):
            peer = await associate(server.port)
            acked: dict[str, bytes] = {}
            statuses = []
            for i in range(12):
                uid = generate_uid()
                data = dataset_bytes(uid, pixels=400_000)
                rsp = await send_store(peer, uid, data, message_id=i + 1)
                statuses.append(rsp.status)
                if rsp.status == status.SUCCESS:
                    acked[uid] = data
            assert status.OUT_OF_RESOURCES in statuses, statuses
            assert acked, "some instances should fit"
            for acked_uid, data in acked.items():
                row = await runtime.index.get(acked_uid)
                assert row is not None
                assert runtime.files.path(row.relpath).read_bytes().endswith(data)
            assert spools(config.storage.root) == []
            assert await runtime.index.integrity_check() == "ok"
            # Free space, and storing works again without a restart.
            victim = next(iter(acked))
            row = await runtime.index.get(victim)
            assert row is not None
            await runtime.index.delete(victim)
            runtime.files.remove(row.relpath)
            uid = generate_uid()
            rsp = await send_store(peer, uid, dataset_bytes(uid, pixels=400_000), message_id=99)
            assert rsp.status == status.SUCCESS
            peer.close()
    finally:
        proc = await asyncio.create_subprocess_exec("umount", "-l", str(mount))
        await proc.wait()


async def test_under_the_free_space_reserve_a_store_is_a700_and_nothing_is_written() -> None:
    """[storage] min_free_mb above what the disk has free: the C-STORE is refused with A700 and
    says why, before a spool is started; nothing reaches tmp/, objects/ or the index, and the
    association goes on (the next C-STORE is answered too)."""
    probe = make_config()
    free_mib = FileStore(probe.storage.root).free_bytes() >> 20
    config = make_config(storage={"min_free_mb": free_mib + 1024})
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port)
        for i in range(2):
            uid = generate_uid()
            with structlog.testing.capture_logs() as logs:
                rsp = await send_store(peer, uid, dataset_bytes(uid, pixels=4096), message_id=i + 1)
            assert rsp.status == status.OUT_OF_RESOURCES
            assert rsp.error_comment is not None
            assert rsp.error_comment.startswith("store full: ")
            assert f"under the {free_mib + 1024} MiB reserve" in rsp.error_comment
            assert await runtime.index.get(uid) is None
            # A full store is a warning in the log, not an info line among the stored ones.
            done = [e for e in logs if e["event"] == "c_store_done"]
            assert [(e["log_level"], e["status"], e["outcome"]) for e in done] == [
                ("warning", "A700", "refused")
            ]
            assert done[0]["comment"] == rsp.error_comment
        assert spools(config.storage.root) == []
        assert list(runtime.files.iter_objects()) == []
        peer.close()


async def test_transfer_syntax_list_is_configurable() -> None:
    explicit = "1.2.840.10008.1.2.1"
    jpeg = "1.2.840.10008.1.2.4.50"
    config = make_config(storage={"transfer_syntaxes": (IMPLICIT, jpeg)})
    async with run_runtime(config) as (server, _runtime):
        peer = await RawPeer.connect(server.port)
        contexts = (
            PresentationContextRQ(1, CT, (explicit,)),
            PresentationContextRQ(3, CT, (explicit, IMPLICIT)),
            PresentationContextRQ(5, CT, (IMPLICIT, jpeg)),
        )
        ac = await peer.associate(associate_rq(contexts=contexts))
        assert isinstance(ac, AssociateAC)
        got = {
            pc.context_id: (int(pc.result), pc.transfer_syntax) for pc in ac.presentation_contexts
        }
        assert got[1][0] == 4  # transfer syntaxes not supported
        assert got[3] == (0, IMPLICIT)
        assert got[5] == (0, IMPLICIT)  # our configured order, not the proposer's
        peer.close()


async def test_default_order_prefers_the_proposed_compressed_syntax() -> None:
    jpeg_ls = "1.2.840.10008.1.2.4.80"
    async with run_runtime() as (server, _runtime):
        peer = await RawPeer.connect(server.port)
        contexts = (PresentationContextRQ(1, CT, ("1.2.840.10008.1.2.1", IMPLICIT, jpeg_ls)),)
        ac = await peer.associate(associate_rq(contexts=contexts))
        assert isinstance(ac, AssociateAC)
        assert ac.presentation_contexts[0].transfer_syntax == jpeg_ls
        peer.close()
