"""C-GET and C-MOVE against independent peers: DCMTK getscu/movescu (with DCMTK storescp as the
move destination) and pynetdicom, byte-identical datasets after the round trip."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pydicom
import pytest
import structlog
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomd.config import Config, RemoteAE, RetrieveConfig
from dicomd.dimse import status
from dicomd.net import channel
from dicomd.services import suboperations
from dicomd.services.base import FileSlice
from tests import dicomgen
from tests.conftest import free_port, make_config, require_tool, run_runtime
from tests.interop.test_echo_interop import background, run_tool
from tests.interop.test_store_interop import _pynetdicom_store
from tests.service.test_systemd_unit import dicomd_command, write_config

pytestmark = pytest.mark.interop

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"


def make_study(
    directory: Path, *, n_series: int = 2, per_series: int = 3, seed: int = 1
) -> list[Path]:
    """A study of a few series, uncompressed (so any SCU can take them as stored)."""
    directory.mkdir(parents=True, exist_ok=True)
    study = pydicom.uid.generate_uid(entropy_srcs=["study", str(seed)])
    files = []
    for s in range(n_series):
        series = pydicom.uid.generate_uid(entropy_srcs=["series", str(seed), str(s)])
        for i in range(per_series):
            files.append(
                dicomgen.write_instance(
                    directory / f"s{s}-i{i}.dcm",
                    sop_class_uid=CT if s % 2 == 0 else MR,
                    transfer_syntax_uid=ExplicitVRLittleEndian if i % 2 else ImplicitVRLittleEndian,
                    study_uid=study,
                    series_uid=series,
                    seed=seed * 1000 + s * 100 + i,
                    size_bytes=8192,
                    PatientID=f"PAT{seed}",
                    SeriesNumber=s + 1,
                    InstanceNumber=i + 1,
                )
            )
    return files


def pending_every(seconds: float, config: Config | None = None) -> Config:
    """`config` (by default make_config()'s) with Pending responses at most every `seconds`."""
    return replace(config or make_config(), retrieve=RetrieveConfig(pending_interval=seconds))


def uids(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def by_uid(files: list[Path]) -> dict[str, bytes]:
    return {str(uids(p).SOPInstanceUID): dicomgen.dataset_bytes(p) for p in files}


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _study_identifier(files: list[Path]) -> Dataset:
    """A STUDY-level identifier naming the study of `files[0]`."""
    return _identifier("STUDY", StudyInstanceUID=str(uids(files[0]).StudyInstanceUID))


def _get_association(port: int, model: str, on_store: Callable[[Any], int]) -> Any:
    """A pynetdicom association to dicomd for C-GET (`model`), taking the SCP role for CT and MR
    storage; `on_store` answers each sub-operation's C-STORE."""
    from pynetdicom import AE, build_role, evt

    ae = AE(ae_title="PYGET")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(model)
    roles = []
    for sop in (CT, MR):
        # One context per syntax, so every instance can come back as it was stored.
        ae.add_requested_context(sop, [ExplicitVRLittleEndian])
        ae.add_requested_context(sop, [ImplicitVRLittleEndian])
        roles.append(build_role(sop, scp_role=True))
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="DICOMD",
        ext_neg=[*roles],  # a list display: mypy checks it against the parameter type
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    return assoc


def _pynetdicom_get(
    port: int,
    model: str,
    identifier: Dataset,
    *,
    cancel_after: int | None = None,
    store_delay: float = 0.0,
) -> tuple[list[int], dict[str, bytes], Dataset | None]:
    """C-GET with pynetdicom; returns (statuses, received dataset bytes by UID, last identifier).
    Each sub-operation's C-STORE is answered after `store_delay` seconds."""
    received: dict[str, bytes] = {}
    state: dict[str, Any] = {}

    def on_store(event: Any) -> int:
        time.sleep(store_delay)
        raw = event.request.DataSet.getvalue()
        received[str(event.request.AffectedSOPInstanceUID)] = raw
        if cancel_after is not None and len(received) == cancel_after:
            state["assoc"].send_c_cancel(1, state["ctx"])
        return 0x0000

    assoc = _get_association(port, model, on_store)
    state["assoc"] = assoc
    state["ctx"] = next(c.context_id for c in assoc.accepted_contexts if c.abstract_syntax == model)
    statuses = []
    try:
        for st, _ident in assoc.send_c_get(identifier, model, msg_id=1):
            statuses.append(int(st.Status))
            state["last_status"] = st
    finally:
        assoc.release()
    return statuses, received, state.get("last_status")


@pytest.mark.parametrize(
    ("model", "level"),
    [
        (STUDY_ROOT_GET, "STUDY"),
        (STUDY_ROOT_GET, "SERIES"),
        (STUDY_ROOT_GET, "IMAGE"),
        (PATIENT_ROOT_GET, "PATIENT"),
        (PATIENT_ROOT_GET, "STUDY"),
    ],
)
async def test_pynetdicom_c_get_levels_byte_identical(
    tmp_path: Path, model: str, level: str
) -> None:
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    first = uids(files[0])
    keys: dict[str, str] = {"PatientID": "PAT1"} if model == PATIENT_ROOT_GET else {}
    expected = by_uid(files)
    if level in ("STUDY", "SERIES", "IMAGE"):
        keys["StudyInstanceUID"] = str(first.StudyInstanceUID)
    if level in ("SERIES", "IMAGE"):
        keys["SeriesInstanceUID"] = str(first.SeriesInstanceUID)
        expected = {u: b for u, b in expected.items() if u in by_uid(files[:3])}
    if level == "IMAGE":
        wanted = [str(uids(p).SOPInstanceUID) for p in files[:2]]
        keys["SOPInstanceUID"] = "\\".join(wanted)
        expected = {u: expected[u] for u in wanted}
    async with run_runtime(pending_every(0)) as (server, _runtime):
        assert await asyncio.to_thread(_pynetdicom_store, server.port, files) == [0] * len(files)
        statuses, received, final = await asyncio.to_thread(
            _pynetdicom_get, server.port, model, _identifier(level, **keys)
        )
    assert statuses[-1] == status.SUCCESS
    assert statuses[:-1] == [status.PENDING] * (len(expected) - 1)
    assert received == expected  # byte for byte, the datasets as they were sent
    assert final is not None and final.NumberOfCompletedSuboperations == len(expected)


@pytest.mark.parametrize(("interval", "pendings"), [(0.1, 5), (3600.0, 0)])
async def test_pending_responses_at_most_every_pending_interval(
    tmp_path: Path, interval: float, pendings: int
) -> None:
    """Sub-operations of 0.2 s each: with an interval of 0.1 s every one but the last is followed
    by a Pending response; with an hour, the retrieve gets its final response only."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    study = str(uids(files[0]).StudyInstanceUID)
    async with run_runtime(pending_every(interval)) as (server, _runtime):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)
        statuses, received, final = await asyncio.to_thread(
            _pynetdicom_get,
            server.port,
            STUDY_ROOT_GET,
            _identifier("STUDY", StudyInstanceUID=study),
            store_delay=0.2,
        )
    assert len(files) == 6
    assert statuses == [status.PENDING] * pendings + [status.SUCCESS]
    assert received == by_uid(files)
    assert final is not None and final.NumberOfCompletedSuboperations == len(files)


async def test_a_reload_changes_the_pending_interval(tmp_path: Path) -> None:
    """SIGHUP's reload applies [retrieve]: from an hour between Pending responses (the final
    response only) to 0 (one after every sub-operation but the last), without a restart."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    get = partial(
        _pynetdicom_get,
        model=STUDY_ROOT_GET,
        identifier=_study_identifier(files),
    )
    async with run_runtime(pending_every(3600)) as (server, runtime):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)
        before, _, _ = await asyncio.to_thread(get, server.port)
        with structlog.testing.capture_logs() as logs:
            runtime.reload(lambda: pending_every(0, runtime.config))
        after, received, _ = await asyncio.to_thread(get, server.port)
    assert before == [status.SUCCESS]
    assert after == [status.PENDING] * (len(files) - 1) + [status.SUCCESS]
    assert received == by_uid(files)
    assert runtime.config.retrieve.pending_interval == 0
    [reloaded] = [e for e in logs if e["event"] == "config_reloaded"]
    assert reloaded["restart_needed_for"] is None


async def test_files_read_in_many_chunks_arrive_byte_identical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Files past PRELOAD are streamed by the sender, a FILE_CHUNK at a time: make every file
    # take that path.
    monkeypatch.setattr(suboperations, "PRELOAD", 0)
    monkeypatch.setattr(channel, "FILE_CHUNK", 1000)
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    study = str(uids(files[0]).StudyInstanceUID)
    async with run_runtime() as (server, _runtime):
        assert await asyncio.to_thread(_pynetdicom_store, server.port, files) == [0] * len(files)
        statuses, received, _final = await asyncio.to_thread(
            _pynetdicom_get,
            server.port,
            STUDY_ROOT_GET,
            _identifier("STUDY", StudyInstanceUID=study),
        )
    assert statuses[-1] == status.SUCCESS
    assert received == by_uid(files)


async def test_c_get_cancel_in_the_middle(tmp_path: Path) -> None:
    files = await asyncio.to_thread(make_study, tmp_path / "in", n_series=2, per_series=10)
    async with run_runtime() as (server, _runtime):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)
        identifier = _study_identifier(files)
        statuses, received, final = await asyncio.to_thread(
            _pynetdicom_get, server.port, STUDY_ROOT_GET, identifier, cancel_after=3
        )
    assert statuses[-1] == status.CANCEL
    assert 3 <= len(received) < len(files)
    assert final is not None
    assert final.NumberOfRemainingSuboperations == len(files) - len(received)
    assert final.NumberOfCompletedSuboperations == len(received)


async def test_c_get_without_a_storage_role_fails_every_sub_operation(tmp_path: Path) -> None:
    """No SCP role negotiated for the storage class: nothing can be sent, A702 with the UIDs."""
    from pynetdicom import AE

    files = await asyncio.to_thread(make_study, tmp_path / "in", n_series=1, per_series=2)
    async with run_runtime() as (server, _runtime):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)

        def get() -> tuple[int, Dataset | None]:
            ae = AE(ae_title="NOROLE")
            ae.add_requested_context(STUDY_ROOT_GET)
            assoc = ae.associate("127.0.0.1", server.port, ae_title="DICOMD")
            try:
                *_, (st, ident) = assoc.send_c_get(
                    _study_identifier(files),
                    STUDY_ROOT_GET,
                )
                return int(st.Status), ident
            finally:
                assoc.release()

        code, ident = await asyncio.to_thread(get)
    assert code == status.OUT_OF_RESOURCES_SUBOPS
    assert ident is not None
    assert sorted(ident.FailedSOPInstanceUIDList) == sorted(by_uid(files))


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
async def test_an_unreadable_file_fails_its_sub_operation_only(tmp_path: Path, damage: str) -> None:
    """Instances are read in runs, ahead of the one being sent: a file gone from the store, or shorter
    than its index entry says, still fails just its own sub-operation (B000, one failed; nothing
    of it is sent) and every other instance arrives intact."""
    files = await asyncio.to_thread(make_study, tmp_path / "in", n_series=2, per_series=3)
    expected = by_uid(files)
    lost = sorted(expected)[2]
    async with run_runtime() as (server, runtime):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)
        stored = await runtime.index.get(lost)
        assert stored is not None
        path = runtime.files.path(stored.relpath)
        if damage == "deleted":
            path.unlink()
        else:
            os.truncate(path, stored.size - 100)
        identifier = _study_identifier(files)
        statuses, received, final = await asyncio.to_thread(
            _pynetdicom_get, server.port, STUDY_ROOT_GET, identifier
        )
    assert statuses[-1] == status.SUBOPS_WARNING
    assert final is not None
    assert final.NumberOfFailedSuboperations == 1
    assert final.NumberOfCompletedSuboperations == len(files) - 1
    del expected[lost]
    assert received == expected


def test_runs_of_instances_read_at_once_are_bounded_in_count_and_bytes() -> None:
    def targets(*sizes: int) -> list[suboperations.Target]:
        return [
            suboperations.Target(f"1.2.{i}", CT, ExplicitVRLittleEndian, "x", n)
            for i, n in enumerate(sizes)
        ]

    small = targets(*[8_000] * 40)
    assert [suboperations._run_end(small, start) for start in (0, 16, 32)] == [16, 32, 40]
    ct = targets(*[520_000] * 5)  # two fit in LOAD_BYTES, a third does not
    assert [suboperations._run_end(ct, start) for start in (0, 2, 4)] == [2, 4, 5]
    big = targets(5 << 20, 1000, 600_000, 600_000)  # one file at least, whatever its size
    assert [suboperations._run_end(big, start) for start in (0, 1, 2, 3)] == [1, 3, 3, 4]


def test_a_file_to_convert_is_checked_against_its_indexed_size(tmp_path: Path) -> None:
    (path,) = make_study(tmp_path, n_series=1, per_series=1)  # Implicit VR Little Endian
    size = path.stat().st_size
    converted = suboperations._convert(path, size, ImplicitVRLittleEndian, ExplicitVRLittleEndian)
    back = read_dataset(io.BytesIO(converted), is_implicit_VR=False, is_little_endian=True)
    assert back == pydicom.dcmread(path)
    with pytest.raises(OSError, match="the index says"):
        suboperations._convert(path, size + 2, ImplicitVRLittleEndian, ExplicitVRLittleEndian)


async def test_dcmtk_getscu(tmp_path: Path) -> None:
    getscu = require_tool("getscu")
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    async with run_runtime() as (server, _runtime):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)
        study = str(uids(files[0]).StudyInstanceUID)
        code, text = await run_tool(
            getscu, "-S", "-aec", "DICOMD", "-k", "QueryRetrieveLevel=STUDY",
            "-k", f"StudyInstanceUID={study}", "-od", str(out), "127.0.0.1", str(server.port),
        )  # fmt: skip
        assert code == 0, text
    # getscu proposes one context per storage class (Explicit VR LE first): instances stored in
    # that syntax come back byte for byte; the Implicit VR ones were converted, losslessly.
    received = {str(uids(p).SOPInstanceUID): p for p in out.iterdir()}
    assert set(received) == set(by_uid(files))
    converted = 0
    for original in files:
        back = received[str(uids(original).SOPInstanceUID)]
        same_syntax = (
            uids(original).file_meta.TransferSyntaxUID == uids(back).file_meta.TransferSyntaxUID
        )
        if same_syntax:
            assert dicomgen.dataset_bytes(back) == dicomgen.dataset_bytes(original)
        else:
            converted += 1
            assert pydicom.dcmread(back) == pydicom.dcmread(original)
    assert 0 < converted < len(files)


def in_process(config: Config) -> Config:
    """`config` with C-MOVE sub-operations on the server's event loop, not in mover processes:
    for tests that reach into them with monkeypatch or read their log lines. The mover processes
    run the same LocalMover; test_mover_processes.py tests what the processes add."""
    return replace(config, retrieve=replace(config.retrieve, move_processes=0))


def _with_remote(config: Config, ae_title: str, port: int) -> Config:
    return replace(config, remote=(RemoteAE(ae_title, "127.0.0.1", port),))


async def test_dcmtk_movescu_to_dcmtk_storescp(tmp_path: Path) -> None:
    movescu, storescp = require_tool("movescu"), require_tool("storescp")
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    dest = tmp_path / "dest"
    dest.mkdir()
    dest_port = free_port()
    config = _with_remote(make_config(), "MOVEDEST", dest_port)
    async with (
        background(
            storescp,
            "-aet",
            "MOVEDEST",
            "+xa",
            "-od",
            str(dest),
            str(dest_port),
            ready_port=dest_port,
        ),
        run_runtime(config) as (server, _runtime),
    ):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)
        study = str(uids(files[0]).StudyInstanceUID)
        series = str(uids(files[0]).SeriesInstanceUID)
        for level, keys in (
            ("STUDY", [f"StudyInstanceUID={study}"]),
            ("SERIES", [f"StudyInstanceUID={study}", f"SeriesInstanceUID={series}"]),
        ):
            args = [k for key in keys for k in ("-k", key)]
            code, text = await run_tool(
                movescu, "-S", "-aec", "DICOMD", "-aem", "MOVEDEST",
                "-k", f"QueryRetrieveLevel={level}", *args, "127.0.0.1", str(server.port),
            )  # fmt: skip
            assert code == 0, text
    got = {str(uids(p).SOPInstanceUID): dicomgen.dataset_bytes(p) for p in dest.iterdir()}
    assert got == by_uid(files)


async def test_dicomd_serve_moves_to_a_destination_from_the_environment(tmp_path: Path) -> None:
    """A container's way: the C-MOVE destination exists only in DICOMD_REMOTE."""
    movescu, storescp = require_tool("movescu"), require_tool("storescp")
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    dest = tmp_path / "dest"
    dest.mkdir()
    dest_port, port = free_port(), free_port()
    env = {
        **os.environ,
        "DICOMD_REMOTE": f'[{{ae_title = "ENVDEST", host = "127.0.0.1", port = {dest_port}}}]',
    }
    serve = [*dicomd_command(), "serve", "--config", str(write_config(tmp_path, port))]
    async with (
        background(
            storescp, "-aet", "ENVDEST", "+xa", "-od", str(dest), str(dest_port),
            ready_port=dest_port,
        ),
        background(*serve, ready_port=port, env=env),
    ):  # fmt: skip
        await asyncio.to_thread(_pynetdicom_store, port, files)
        study = str(uids(files[0]).StudyInstanceUID)
        code, text = await run_tool(
            movescu, "-S", "-aec", "DICOMD", "-aem", "ENVDEST",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "127.0.0.1", str(port),
        )  # fmt: skip
        assert code == 0, text
    got = {str(uids(p).SOPInstanceUID): dicomgen.dataset_bytes(p) for p in dest.iterdir()}
    assert got == by_uid(files)


def _move_association(port: int, *, dimse_timeout: float = 30) -> Any:
    """A pynetdicom association to dicomd for Study Root C-MOVE (calling AE title PYMOVE)."""
    from pynetdicom import AE

    ae = AE(ae_title="PYMOVE")
    ae.acse_timeout = ae.network_timeout = 30
    ae.dimse_timeout = dimse_timeout
    ae.add_requested_context(STUDY_ROOT_MOVE)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMD")
    assert assoc.is_established
    return assoc


def _move_responses(
    assoc: Any, destination: str, identifier: Dataset
) -> list[tuple[int, Any, Dataset | None]]:
    """C-MOVE (Message ID 1) on `assoc`: each response's status code, its status dataset and its
    identifier (if any)."""
    return [
        (int(s.Status), s, ident)
        for s, ident in assoc.send_c_move(identifier, destination, STUDY_ROOT_MOVE, msg_id=1)
    ]


def _pynetdicom_move(
    port: int, destination: str, identifier: Dataset
) -> list[tuple[int, Any, Dataset | None]]:
    """_move_responses() on an association of its own."""
    assoc = _move_association(port)
    try:
        return _move_responses(assoc, destination, identifier)
    finally:
        assoc.release()


class _Destination:
    """A pynetdicom storage SCP that records what it receives (and the move originator). With
    `only_one`, once an association is established it rejects every new one (A-ASSOCIATE-RJ,
    calling AE title not recognised)."""

    def __init__(
        self,
        *,
        only_one: bool = False,
        abort_at: int | None = None,
        stall_at: int | None = None,
        stall: float = 0.0,
    ) -> None:
        from pynetdicom import AE, evt

        self.received: dict[str, bytes] = {}
        self.originators: set[tuple[str, int]] = set()
        self.aborts = 0  # A-ABORTs received
        self.associations = 0  # associations established
        self.aborted = threading.Event()
        self.lock = threading.Lock()
        self._only_one = only_one
        self._abort_at = abort_at
        self._stall_at = stall_at  # this C-STORE is answered after `stall` seconds
        self._stall = stall
        self.stores = 0  # C-STORE requests seen
        self.ae = ae = AE(ae_title="PYDEST")
        for sop in (CT, MR):
            ae.add_supported_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.port = free_port()
        server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_ABORTED, self._on_abort),
                (evt.EVT_ESTABLISHED, self._on_established),
            ],
        )
        assert server is not None  # block=False: the server, running
        self.server = server

    def _on_established(self, _event: Any) -> None:
        with self.lock:
            self.associations += 1
            if self._only_one:
                self.ae.require_calling_aet = ["NOT-DICOMD"]

    def _on_abort(self, _event: Any) -> None:
        with self.lock:
            self.aborts += 1
        self.aborted.set()

    def _on_store(self, event: Any) -> int:
        rq = event.request
        with self.lock:
            self.stores += 1
            if self.stores == self._abort_at:
                event.assoc.abort()
                return 0xA700  # not sent: the association is gone
            stall = self.stores == self._stall_at
        if stall:
            time.sleep(self._stall)
        with self.lock:
            self.received[str(rq.AffectedSOPInstanceUID)] = rq.DataSet.getvalue()
            self.originators.add(
                (str(rq.MoveOriginatorApplicationEntityTitle), int(rq.MoveOriginatorMessageID))
            )
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


async def test_pynetdicom_move_two_at_once_with_originator(tmp_path: Path) -> None:
    study_a = await asyncio.to_thread(make_study, tmp_path / "a", seed=1)
    study_b = await asyncio.to_thread(make_study, tmp_path / "b", seed=2)
    dest = await asyncio.to_thread(_Destination)
    try:
        config = _with_remote(pending_every(0), "PYDEST", dest.port)
        async with run_runtime(config) as (server, _runtime):
            await asyncio.to_thread(_pynetdicom_store, server.port, study_a + study_b)
            results = await asyncio.gather(
                *(
                    asyncio.to_thread(
                        _pynetdicom_move,
                        server.port,
                        "PYDEST",
                        _identifier("STUDY", StudyInstanceUID=str(uids(s[0]).StudyInstanceUID)),
                    )
                    for s in (study_a, study_b)
                )
            )
        for result in results:
            assert result[-1][0] == status.SUCCESS
            assert [code for code, *_ in result[:-1]] == [status.PENDING] * (len(study_a) - 1)
            assert result[-1][1].NumberOfCompletedSuboperations == len(study_a)
        assert dest.received == by_uid(study_a + study_b)
        assert {ae for ae, _mid in dest.originators} == {"PYMOVE"}
    finally:
        await asyncio.to_thread(dest.close)


def _fail_mid_stream(monkeypatch: pytest.MonkeyPatch, victim: Path, *, gone: bool = False) -> None:
    """Every stored file is streamed 1000 bytes at a time, and `victim`'s file loses its tail
    just after it was found whole: its first chunk reads, a later one comes short, once the
    C-STORE-RQ and part of the data set are on the wire. With `gone`, the file is removed
    instead, so that its first read fails."""
    monkeypatch.setattr(suboperations, "PRELOAD", 0)
    monkeypatch.setattr(channel, "FILE_CHUNK", 1000)
    real = suboperations._file_slice

    def damaged(path: Path, indexed_size: int) -> FileSlice:
        source = real(path, indexed_size)
        if path == victim and gone:
            path.unlink()
        elif path == victim:
            os.truncate(path, source.offset + 2500)
        return source

    monkeypatch.setattr(suboperations, "_file_slice", damaged)


@contextlib.asynccontextmanager
async def _serving_a_damaged_file(
    monkeypatch: pytest.MonkeyPatch,
    dest: _Destination,
    files: list[Path],
    lost: str,
    *,
    gone: bool = False,
) -> AsyncIterator[Any]:
    """dicomd with `dest` as the remote PYDEST and `files` stored, `lost`'s file damaged as
    _fail_mid_stream says; yields the server."""
    config = _with_remote(in_process(make_config()), "PYDEST", dest.port)
    async with run_runtime(config) as (server, runtime):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)
        stored = await runtime.index.get(lost)
        assert stored is not None
        _fail_mid_stream(monkeypatch, runtime.files.path(stored.relpath), gone=gone)
        yield server


@pytest.mark.parametrize("damage", ["short", "gone"])
async def test_a_streamed_file_that_fails_to_read_during_a_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """The third of six files fails while the move streams it. short: a later chunk comes short,
    with part of the data set sent, which cannot be taken back; the sub-association is aborted
    (the destination stores nothing of it), and the three not yet sent go on a new association.
    gone: its first read fails before its C-STORE-RQ is queued; it fails alone, nothing sent,
    and the others go on the same association. Either way, only the damaged file fails, and
    the next move of the study works the same."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    # The sub-operations go in series and instance number order.
    lost = str(uids(files[2]).SOPInstanceUID)
    identifier = _study_identifier(files)
    dest = await asyncio.to_thread(_Destination)
    try:
        async with _serving_a_damaged_file(
            monkeypatch, dest, files, lost, gone=damage == "gone"
        ) as server:
            move = partial(_pynetdicom_move, server.port, "PYDEST", identifier)
            code, final, failed = (await asyncio.to_thread(move))[-1]
            first = dict(dest.received)
            dest.received.clear()
            again_code, again, failed_again = (await asyncio.to_thread(move))[-1]
        others = by_uid(files[:2] + files[3:])
        assert code == again_code == status.SUBOPS_WARNING
        for response, failed_list in ((final, failed), (again, failed_again)):
            assert response.NumberOfCompletedSuboperations == 5
            assert response.NumberOfFailedSuboperations == 1
            assert failed_list is not None
            assert failed_list.FailedSOPInstanceUIDList == lost
        assert first == dest.received == others
        assert dest.aborts == (0 if damage == "gone" else 1)
    finally:
        await asyncio.to_thread(dest.close)


def _assert_first_two_completed_and_the_rest_failed(
    final_response: tuple[int, Any, Dataset | None], files: list[Path]
) -> None:
    """A C-MOVE's or C-GET's final response (status, response, identifier) is B000 with the first
    two of `files` completed and the rest failed, in its Failed SOP Instance UID List."""
    code, final, failed = final_response
    assert code == status.SUBOPS_WARNING
    assert final.NumberOfCompletedSuboperations == 2
    assert final.NumberOfFailedSuboperations == len(files) - 2
    assert failed is not None
    assert sorted(failed.FailedSOPInstanceUIDList) == sorted(by_uid(files[2:]))


async def test_a_destination_that_refuses_the_new_association_fails_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The third of six files fails half-sent, so the sub-association is aborted, and the
    destination then rejects the association dicomd opens for the three not yet sent: those fail
    too. The move ends in B000 with the four failed UIDs and the two that arrived intact."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    lost = str(uids(files[2]).SOPInstanceUID)
    identifier = _study_identifier(files)
    dest = await asyncio.to_thread(partial(_Destination, only_one=True))
    try:
        async with _serving_a_damaged_file(monkeypatch, dest, files, lost) as server:
            with structlog.testing.capture_logs() as logs:
                responses = await asyncio.to_thread(
                    _pynetdicom_move, server.port, "PYDEST", identifier
                )
            assert await asyncio.to_thread(dest.aborted.wait, 10)
        _assert_first_two_completed_and_the_rest_failed(responses[-1], files)
        assert dest.received == by_uid(files[:2])
        assert (dest.aborts, dest.associations) == (1, 1)
        assert [e["event"] for e in logs if e["event"].startswith(("sub_a", "c_move_d"))] == [
            "sub_association_aborted",
            "c_move_destination_failed",
            "c_move_done",
        ]
    finally:
        await asyncio.to_thread(dest.close)


async def test_a_move_cancelled_between_its_two_sub_associations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A C-CANCEL that arrives after a half-sent file aborted the sub-association, and before
    the next one is opened: no new association is made, and the move ends in FE00 with the
    three unsent instances as remaining, the two sent as completed and the damaged one failed."""

    files = await asyncio.to_thread(make_study, tmp_path / "in")
    lost = str(uids(files[2]).SOPInstanceUID)
    identifier = _study_identifier(files)
    real_run = suboperations.SubOperations.run

    async def run_then_wait_for_the_cancel(
        self: suboperations.SubOperations, *a: Any, cancel: suboperations.Cancel, **k: Any
    ) -> Any:
        unsent = await real_run(self, *a, cancel=cancel, **k)
        if unsent:
            async with asyncio.timeout(10):
                await cancel.wait_cancel()
        return unsent

    monkeypatch.setattr(suboperations.SubOperations, "run", run_then_wait_for_the_cancel)

    def move_and_cancel(port: int) -> list[tuple[int, Any, Dataset | None]]:
        assoc = _move_association(port)
        context_id = assoc.accepted_contexts[0].context_id

        def cancel_once_aborted() -> None:
            if dest.aborted.wait(10):
                assoc.send_c_cancel(1, context_id)

        canceller = threading.Thread(target=cancel_once_aborted, daemon=True)
        canceller.start()
        try:
            return _move_responses(assoc, "PYDEST", identifier)
        finally:
            canceller.join(10)
            assoc.release()

    dest = await asyncio.to_thread(_Destination)
    try:
        async with _serving_a_damaged_file(monkeypatch, dest, files, lost) as server:
            responses = await asyncio.to_thread(move_and_cancel, server.port)
        code, final, failed = responses[-1]
        assert code == status.CANCEL
        assert final.NumberOfRemainingSuboperations == 3
        assert final.NumberOfCompletedSuboperations == 2
        assert final.NumberOfFailedSuboperations == 1
        assert failed is not None
        assert failed.FailedSOPInstanceUIDList == lost
        assert dest.received == by_uid(files[:2])
        assert (dest.aborts, dest.associations) == (1, 1)
    finally:
        await asyncio.to_thread(dest.close)


async def test_a_move_cancelled_mid_file_aborts_its_sub_association(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The originator aborts its C-MOVE while a file is half-way to the destination: the
    sub-association ends in an A-ABORT, not an A-RELEASE-RQ after half a message."""

    monkeypatch.setattr(suboperations, "PRELOAD", 0)
    monkeypatch.setattr(channel, "FILE_CHUNK", 1000)
    reading, resume = threading.Event(), threading.Event()
    real = channel._open_and_read

    class Stalled:  # the file's second chunk is read once the originator has gone
        def __init__(self, f: Any) -> None:
            self._f = f

        def read(self, n: int) -> bytes:
            reading.set()
            resume.wait(10)
            return bytes(self._f.read(n))

        def close(self) -> None:
            self._f.close()

    def stalling(source: FileSlice, size: int) -> tuple[Any, bytes]:
        f, chunk = real(source, size)
        return Stalled(f), chunk

    monkeypatch.setattr(channel, "_open_and_read", stalling)
    files = await asyncio.to_thread(make_study, tmp_path / "in", n_series=1, per_series=2)
    identifier = _study_identifier(files)

    def move_and_abort(port: int) -> None:
        # dimse_timeout: how long its C-MOVE waits on, once aborted.
        assoc = _move_association(port, dimse_timeout=2)
        moving = threading.Thread(
            daemon=True,
            target=lambda: list(assoc.send_c_move(identifier, "PYDEST", STUDY_ROOT_MOVE)),
        )
        moving.start()
        assert reading.wait(10)
        assoc.abort()
        moving.join(10)

    dest = await asyncio.to_thread(_Destination)
    try:
        config = _with_remote(in_process(make_config()), "PYDEST", dest.port)
        async with run_runtime(config) as (server, _runtime):
            await asyncio.to_thread(_pynetdicom_store, server.port, files)
            await asyncio.to_thread(move_and_abort, server.port)
            resume.set()
            assert await asyncio.to_thread(dest.aborted.wait, 10)
        assert dest.received == {}
    finally:
        resume.set()
        await asyncio.to_thread(dest.close)


async def test_a_file_failing_mid_stream_aborts_the_c_get_association(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """C-GET's sub-operations travel on the SCU's association: dicomd aborts it (nothing can follow
    a part-sent data set), what came before is intact, and the server serves the next client."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    lost = str(uids(files[2]).SOPInstanceUID)
    received: dict[str, bytes] = {}

    def on_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    def get(port: int) -> tuple[bool, list[Dataset]]:
        assoc = _get_association(port, STUDY_ROOT_GET, on_store)
        identifier = _study_identifier(files)
        responses = [st for st, _ in assoc.send_c_get(identifier, STUDY_ROOT_GET)]
        if assoc.is_established:
            assoc.release()
        return assoc.is_aborted, responses

    async with run_runtime() as (server, runtime):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)
        stored = await runtime.index.get(lost)
        assert stored is not None
        _fail_mid_stream(monkeypatch, runtime.files.path(stored.relpath))
        with structlog.testing.capture_logs() as logs:
            aborted, responses = await asyncio.to_thread(get, server.port)
        assert await asyncio.to_thread(_pynetdicom_store, server.port, files[:1]) == [0]
    assert aborted
    assert all("Status" not in r or r.Status == status.PENDING for r in responses)
    assert received == by_uid(files[:2])
    # Said before the association went: the instance, and how many of the C-GET were not sent.
    (said,) = [e for e in logs if e["event"] == "sub_operations_abandoned"]
    assert (said["sop_instance_uid"], said["failed"]) == (lost, 4)


async def test_a_c_get_scu_that_does_not_answer_in_time(tmp_path: Path) -> None:
    """The C-GET SCU takes 3 s to answer the third of six C-STOREs, past the 1 s DIMSE timeout.
    dicomd sends no more C-STOREs and ends the C-GET: B000, two completed, the third and the
    three not sent failed. The association stays up: the late answer is dropped, not taken for a
    protocol error, and the SCU gets its final response and releases."""
    from tests.interop.test_echo_interop import _pynetdicom_echo

    files = await asyncio.to_thread(make_study, tmp_path / "in")
    identifier = _study_identifier(files)
    received: dict[str, bytes] = {}
    slow: list[int] = []  # the Message ID of the C-STORE answered late

    def on_store(event: Any) -> int:
        received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        if len(received) == 3:
            slow.append(int(event.request.MessageID))
            time.sleep(3.0)
        return 0x0000

    def get(port: int) -> tuple[list[tuple[Dataset, Dataset | None]], bool]:
        assoc = _get_association(port, STUDY_ROOT_GET, on_store)
        try:
            responses = list(assoc.send_c_get(identifier, STUDY_ROOT_GET))
        finally:
            assoc.release()
        return responses, assoc.is_released

    async with run_runtime(make_config(dimse_timeout=1.0)) as (server, _runtime):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)
        with structlog.testing.capture_logs() as logs:
            responses, released = await asyncio.to_thread(get, server.port)
            assert await asyncio.to_thread(_pynetdicom_echo, server.port) == status.SUCCESS
    assert released
    final, failed = responses[-1]
    _assert_first_two_completed_and_the_rest_failed((int(final.Status), final, failed), files)
    assert received == by_uid(files[:3])  # the third was stored, but too late to count
    failure, unanswered = [e for e in logs if e["event"].startswith("sub_")]
    assert failure["event"] == "sub_operation_failed"
    assert "DIMSE timeout" in failure["error"]
    assert (unanswered["event"], unanswered["failed"]) == ("sub_operations_unanswered", 3)
    assert [e["message_id"] for e in logs if e["event"] == "late_response_dropped"] == slow
    assert not [e for e in logs if e["event"] == "association_aborted"]


async def test_a_destination_that_aborts_mid_move(tmp_path: Path) -> None:
    """The destination aborts its association on the third of six C-STOREs: that one and the
    three after it fail at once, without a new association (the destination ended that one
    itself), and the move ends in B000 with their UIDs; dicomd goes on serving."""
    from tests.interop.test_echo_interop import _pynetdicom_echo

    files = await asyncio.to_thread(make_study, tmp_path / "in")
    identifier = _study_identifier(files)
    dest = await asyncio.to_thread(partial(_Destination, abort_at=3))
    try:
        config = _with_remote(in_process(make_config()), "PYDEST", dest.port)
        async with run_runtime(config) as (server, _runtime):
            await asyncio.to_thread(_pynetdicom_store, server.port, files)
            with structlog.testing.capture_logs() as logs:
                responses = await asyncio.to_thread(
                    _pynetdicom_move, server.port, "PYDEST", identifier
                )
            assert await asyncio.to_thread(_pynetdicom_echo, server.port) == status.SUCCESS
        _assert_first_two_completed_and_the_rest_failed(responses[-1], files)
        assert dest.received == by_uid(files[:2])
        assert (dest.associations, dest.stores) == (1, 3)
        # The third's failure, then one line for the three after it, not one each.
        failure, lost = [e for e in logs if e["event"].startswith("sub_")]
        assert failure["event"] == "sub_operation_failed"
        assert (lost["event"], lost["failed"]) == ("sub_association_lost", 3)
        assert (
            failure["sop_instance_uid"]
            == lost["sop_instance_uid"]
            == str(uids(files[2]).SOPInstanceUID)
        )
    finally:
        await asyncio.to_thread(dest.close)


async def test_a_destination_that_does_not_answer_in_time(tmp_path: Path) -> None:
    """The destination takes 4 s to answer the third of six C-STOREs, past the 1 s DIMSE
    timeout. dicomd aborts the sub-association at the timeout: a late answer must not be taken
    for the next request's. The third and the three not sent fail; the move ends well before
    the late answer would have come."""
    files = await asyncio.to_thread(make_study, tmp_path / "in")
    identifier = _study_identifier(files)
    dest = await asyncio.to_thread(partial(_Destination, stall_at=3, stall=4.0))
    try:
        config = _with_remote(make_config(dimse_timeout=1.0), "PYDEST", dest.port)
        async with run_runtime(config) as (server, _runtime):
            await asyncio.to_thread(_pynetdicom_store, server.port, files)
            started = time.monotonic()
            responses = await asyncio.to_thread(_pynetdicom_move, server.port, "PYDEST", identifier)
            took = time.monotonic() - started
            assert await asyncio.to_thread(dest.aborted.wait, 10)
        _assert_first_two_completed_and_the_rest_failed(responses[-1], files)
        assert (dest.stores, dest.aborts) == (3, 1)  # the last three were never sent
        assert took < 3.5, took
    finally:
        await asyncio.to_thread(dest.close)


async def test_move_unknown_destination_and_destination_down(tmp_path: Path) -> None:
    files = await asyncio.to_thread(make_study, tmp_path / "in", n_series=1, per_series=2)
    config = _with_remote(make_config(dimse_timeout=5.0), "NOBODY", free_port())
    async with run_runtime(config) as (server, _runtime):
        await asyncio.to_thread(_pynetdicom_store, server.port, files)
        identifier = _study_identifier(files)
        unknown = await asyncio.to_thread(_pynetdicom_move, server.port, "STRANGER", identifier)
        assert [code for code, *_ in unknown] == [status.MOVE_DESTINATION_UNKNOWN]
        down = await asyncio.to_thread(_pynetdicom_move, server.port, "NOBODY", identifier)
    code, final, _ = down[-1]
    assert code == status.OUT_OF_RESOURCES_SUBOPS
    assert final.NumberOfFailedSuboperations == len(files)
    assert final.NumberOfCompletedSuboperations == 0


async def test_retrieve_level_and_key_errors(tmp_path: Path) -> None:
    async with run_runtime() as (server, _runtime):
        for identifier in (_identifier("PATIENT", PatientID="X"), _identifier("STUDY")):
            statuses, received, _final = await asyncio.to_thread(
                _pynetdicom_get, server.port, STUDY_ROOT_GET, identifier
            )
            assert statuses == [status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS]
            assert received == {}
