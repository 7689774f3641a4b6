"""C-FIND against independent SCUs: DCMTK findscu (-P/-S/-O, -k keys, query files, -X extracted
responses, --cancel, transfer syntaxes) and pynetdicom (every model and level, relational queries
through extended negotiation, a C-CANCEL in the middle of 300 matches). The data goes in through
C-STORE from the same peers, in three character sets besides the default one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dicomd.app import Runtime
from dicomd.net.server import DicomServer
from tests import dicomgen
from tests.conftest import make_config, require_tool, run_runtime
from tests.interop.test_echo_interop import run_tool
from tests.query.data import PATIENT_ROOT, PATIENT_STUDY_ONLY, STUDY_ROOT
from tests.storage.test_index import make_record

# Series in the large result a C-CANCEL interrupts (300 of them stored as files): dicomd streams a
# few hundred responses within milliseconds, before a C-CANCEL sent after the third can arrive, so
# the result must be large enough to still be streaming then.
LARGE_RESULT = 5000

pytestmark = pytest.mark.interop

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"

# (file stem, charset, patient name, patient id, study, study date, time, accession, series, modality)
PEOPLE: tuple[tuple[str, str | None, str, str, str, str, str, str, str, str], ...] = (
    (
        "jane-ct-1",
        None,
        "Doe^Jane",
        "PA",
        "1.2.826.9.1",
        "20240105",
        "101500",
        "ACC1",
        "1.2.826.9.1.1",
        "CT",
    ),
    (
        "jane-ct-2",
        None,
        "Doe^Jane",
        "PA",
        "1.2.826.9.1",
        "20240105",
        "101500",
        "ACC1",
        "1.2.826.9.1.1",
        "CT",
    ),
    (
        "jane-mr",
        None,
        "Doe^Jane",
        "PA",
        "1.2.826.9.2",
        "20240210",
        "083000",
        "ACC2",
        "1.2.826.9.2.1",
        "MR",
    ),
    (
        "hans",
        "ISO_IR 100",
        "Müller^Hans",
        "PB",
        "1.2.826.9.3",
        "20240301",
        "140000",
        "ACC3",
        "1.2.826.9.3.1",
        "CT",
    ),
    (
        "wang",
        "GB18030",
        "Wang^XiaoDong=王^小东",
        "PC",
        "1.2.826.9.4",
        "20231231",
        "235900",
        "ACC4",
        "1.2.826.9.4.1",
        "CT",
    ),
    (
        "li",
        "ISO_IR 192",
        "Li^Na=李^娜",
        "PD",
        "1.2.826.9.5",
        "20240620",
        "090000",
        "ACC5",
        "1.2.826.9.5.1",
        "MR",
    ),
)


def write_people(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (stem, charset, name, pid, study, day, time, acc, series, modality) in enumerate(PEOPLE):
        attrs: dict[str, Any] = dict(
            PatientID=pid,
            StudyDate=day,
            StudyTime=time,
            AccessionNumber=acc,
            InstanceNumber=i + 1,
            PatientSex="F" if pid in ("PA", "PD") else "M",
            StudyDescription="超声检查"
            if charset == "GB18030"
            else "Thorax pré-op"
            if charset
            else "Head",
        )
        if stem == "jane-ct-2":
            attrs["RequestAttributesSequence"] = [
                _item(RequestedProcedureID="RP7", ScheduledProcedureStepID="S7")
            ]
        paths.append(
            dicomgen.write_instance(
                directory / f"{stem}.dcm",
                sop_class_uid=CT if modality == "CT" else MR,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                size_bytes=512,
                patient_name=name,
                charset=charset,
                study_uid=study,
                series_uid=series,
                sop_instance_uid=f"{series}.{i + 1}",
                seed=i,
                **attrs,
            )
        )
    return paths


def _item(**attrs: Any) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def write_many_series(directory: Path, n: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return [
        dicomgen.write_instance(
            directory / f"m{i:04d}.dcm",
            sop_class_uid=CT,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            size_bytes=64,
            patient_name="Many^Series",
            study_uid="1.2.826.9.9",
            series_uid=f"1.2.826.9.9.{i + 1}",
            sop_instance_uid=f"1.2.826.9.9.{i + 1}.1",
            seed=i,
            PatientID="PMANY",
            SeriesNumber=i + 1,
        )
        for i in range(n)
    ]


# --- DCMTK ---------------------------------------------------------------------------------------


@asynccontextmanager
async def dcmtk_server(
    tmp_path: Path, extra: list[Path] | None = None
) -> AsyncIterator[tuple[DicomServer, Runtime]]:
    storescu = require_tool("storescu")
    files = await asyncio.to_thread(write_people, tmp_path / "in")
    files += extra or []
    # Relaxed durability: these tests are about queries, not about fsync.
    async with run_runtime(make_config(storage={"durability": "relaxed"})) as (server, runtime):
        code, out = await run_tool(
            storescu, "-aec", "DICOMD", "-R", "127.0.0.1", str(server.port), *map(str, files),
            timeout=120,
        )  # fmt: skip
        assert code == 0, out
        assert (await runtime.index.counts())["instances"] == len(files)
        yield server, runtime


async def findscu(
    port: int, out_dir: Path, *args: str, query_file: Path | None = None
) -> tuple[str, list[Dataset]]:
    """Run findscu with -X into a fresh directory; its log and the responses it wrote."""
    tool = require_tool("findscu")
    await asyncio.to_thread(out_dir.mkdir, parents=True)
    argv = [tool, "-v", "-aec", "DICOMD", "-X", "-od", str(out_dir), *args, "127.0.0.1", str(port)]
    if query_file is not None:
        argv.append(str(query_file))
    code, out = await run_tool(*argv, timeout=60)
    assert code == 0, out
    paths = await asyncio.to_thread(lambda: sorted(out_dir.glob("rsp*.dcm")))
    responses: list[Dataset] = [
        await asyncio.to_thread(pydicom.dcmread, p, force=True) for p in paths
    ]
    return out, responses


def final_status(log: str) -> str:
    lines = [line for line in log.splitlines() if "Final Find Response" in line]
    assert len(lines) == 1, log
    return lines[0]


def keys(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("-k", pair)]


LEVEL_CASES: list[tuple[str, str, list[str], str, set[str]]] = [
    ("-P", "PATIENT", ["PatientID", "PatientName=doe*"], "PatientID", {"PA"}),
    (
        "-P",
        "STUDY",
        ["PatientID=PA", "StudyInstanceUID"],
        "StudyInstanceUID",
        {"1.2.826.9.1", "1.2.826.9.2"},
    ),
    (
        "-P",
        "SERIES",
        ["PatientID=PA", "StudyInstanceUID=1.2.826.9.1", "SeriesInstanceUID", "Modality"],
        "SeriesInstanceUID",
        {"1.2.826.9.1.1"},
    ),
    (
        "-P",
        "IMAGE",
        [
            "PatientID=PA",
            "StudyInstanceUID=1.2.826.9.1",
            "SeriesInstanceUID=1.2.826.9.1.1",
            "SOPInstanceUID",
            "InstanceNumber",
        ],
        "SOPInstanceUID",
        {"1.2.826.9.1.1.1", "1.2.826.9.1.1.2"},
    ),
    (
        "-S",
        "STUDY",
        ["StudyInstanceUID", "PatientName", "ModalitiesInStudy=MR"],
        "StudyInstanceUID",
        {"1.2.826.9.2", "1.2.826.9.5"},
    ),
    (
        "-S",
        "SERIES",
        ["StudyInstanceUID=1.2.826.9.3", "SeriesInstanceUID", "NumberOfSeriesRelatedInstances"],
        "SeriesInstanceUID",
        {"1.2.826.9.3.1"},
    ),
    (
        "-S",
        "IMAGE",
        [
            "StudyInstanceUID=1.2.826.9.1",
            "SeriesInstanceUID=1.2.826.9.1.1",
            "SOPInstanceUID",
            "SOPClassUID",
        ],
        "SOPInstanceUID",
        {"1.2.826.9.1.1.1", "1.2.826.9.1.1.2"},
    ),
    ("-O", "PATIENT", ["PatientID=P?", "PatientName"], "PatientID", {"PA", "PB", "PC", "PD"}),
    (
        "-O",
        "STUDY",
        ["PatientID=PB", "StudyInstanceUID", "StudyDate"],
        "StudyInstanceUID",
        {"1.2.826.9.3"},
    ),
]


async def test_findscu_every_model_and_level(tmp_path: Path) -> None:
    async with dcmtk_server(tmp_path) as (server, _runtime):
        for n, (model, level, query, keyword, expected) in enumerate(LEVEL_CASES):
            log, rsp = await findscu(
                server.port,
                tmp_path / f"out{n}",
                model,
                *keys(f"QueryRetrieveLevel={level}", *query),
            )
            assert "(Success)" in final_status(log), (model, query)
            assert {str(getattr(r, keyword)) for r in rsp} == expected, (model, query)
            requested = {q.split("=")[0] for q in query} | {"QueryRetrieveLevel", "RetrieveAETitle"}
            for r in rsp:
                assert {e.keyword for e in r} - {"SpecificCharacterSet"} == requested
                assert r.RetrieveAETitle == "DICOMD"


MATCHING_CASES: list[tuple[list[str], set[str]]] = [
    (["AccessionNumber=ACC3"], {"1.2.826.9.3"}),  # single value
    (["PatientName=d?e*"], {"1.2.826.9.1", "1.2.826.9.2"}),  # wildcards, case-insensitive PN
    (["StudyDate=20240101-20240229"], {"1.2.826.9.1", "1.2.826.9.2"}),  # closed range
    (["StudyDate=-20231231"], {"1.2.826.9.4"}),  # open range
    (["StudyDate=20240301-"], {"1.2.826.9.3", "1.2.826.9.5"}),
    (["StudyTime=0800-1030"], {"1.2.826.9.1", "1.2.826.9.2", "1.2.826.9.5"}),
    (["StudyInstanceUID=1.2.826.9.1\\1.2.826.9.4"], {"1.2.826.9.1", "1.2.826.9.4"}),  # UID list
    (["PatientName"], {f"1.2.826.9.{i}" for i in range(1, 6)}),  # universal
    (["PatientName=*"], {f"1.2.826.9.{i}" for i in range(1, 6)}),
]


async def test_findscu_matching_types(tmp_path: Path) -> None:
    async with dcmtk_server(tmp_path) as (server, _runtime):
        for n, (query, expected) in enumerate(MATCHING_CASES):
            log, rsp = await findscu(
                server.port,
                tmp_path / f"out{n}",
                "-S",
                *keys("QueryRetrieveLevel=STUDY", "StudyInstanceUID", *query),
            )
            assert "(Success)" in final_status(log), query
            assert {r.StudyInstanceUID for r in rsp} == expected, query


async def test_findscu_sequence_matching(tmp_path: Path) -> None:
    async with dcmtk_server(tmp_path) as (server, _runtime):
        base = keys(
            "QueryRetrieveLevel=SERIES", "StudyInstanceUID=1.2.826.9.1", "SeriesInstanceUID"
        )
        log, rsp = await findscu(
            server.port,
            tmp_path / "hit",
            "-S",
            *base,
            *keys("(0040,0275)[0].(0040,1001)=RP7", "(0040,0275)[0].(0040,0009)"),
        )
        assert "(Success)" in final_status(log)
        (r,) = rsp
        (item,) = r.RequestAttributesSequence
        assert item.RequestedProcedureID == "RP7" and item.ScheduledProcedureStepID == "S7"
        log, rsp = await findscu(
            server.port, tmp_path / "miss", "-S", *base, *keys("(0040,0275)[0].(0040,1001)=RP8")
        )
        assert rsp == []


def write_query(path: Path, model: str, charset: str | None, **attrs: Any) -> Path:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(model)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dcmwrite(path, ds, enforce_file_format=True)
    return path


CHARSET_CASES: list[tuple[str, str, str, str]] = [
    ("GB18030", "王*", "Wang^XiaoDong=王^小东", "GB18030"),
    ("ISO_IR 192", "李*", "Li^Na=李^娜", "ISO_IR 192"),
    ("ISO_IR 100", "MÜLLER*", "Müller^Hans", "ISO_IR 100"),
    ("ISO_IR 100", "wang*", "Wang^XiaoDong=王^小东", "ISO_IR 192"),
]


async def test_findscu_character_sets(tmp_path: Path) -> None:
    async with dcmtk_server(tmp_path) as (server, _runtime):
        for n, (charset, name, expected, answered_in) in enumerate(CHARSET_CASES):
            query = write_query(
                tmp_path / f"q{n}.dcm",
                STUDY_ROOT,
                charset,
                QueryRetrieveLevel="STUDY",
                PatientName=name,
                StudyInstanceUID="",
                StudyDescription="",
            )
            log, rsp = await findscu(server.port, tmp_path / f"out{n}", "-S", query_file=query)
            assert "(Success)" in final_status(log), log
            (r,) = rsp
            assert r.SpecificCharacterSet == answered_in, charset
            assert str(r.PatientName) == expected


async def test_findscu_transfer_syntaxes(tmp_path: Path) -> None:
    async with dcmtk_server(tmp_path) as (server, _runtime):
        for proposal in ("-xi", "-xe", "-xb", "-xd"):
            log, rsp = await findscu(
                server.port, tmp_path / proposal, "-S", proposal,
                *keys("QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientID=PC", "StudyDescription"),
            )  # fmt: skip
            assert "(Success)" in final_status(log), proposal
            (r,) = rsp
            assert r.StudyDescription == "超声检查" and r.SpecificCharacterSet == "ISO_IR 192"


async def test_findscu_hierarchical_refusal(tmp_path: Path) -> None:
    async with dcmtk_server(tmp_path) as (server, _runtime):
        log, rsp = await findscu(
            server.port,
            tmp_path / "out",
            "-P",
            *keys("QueryRetrieveLevel=STUDY", "StudyInstanceUID"),
        )
        # DCMTK names A900 after C-STORE's meaning of the code.
        assert "DataSetDoesNotMatchSOPClass" in final_status(log)
        assert rsp == []


async def _more_series(runtime: Runtime, first: int, last: int) -> None:
    """Index rows of series first..last of the study write_many_series() stores, put straight into
    the index (storing thousands of files would take a minute)."""
    extra = [
        make_record(
            n,
            patient_id="PMANY",
            patient_name="Many^Series",
            study_instance_uid="1.2.826.9.9",
            series_instance_uid=f"1.2.826.9.9.{n}",
            sop_instance_uid=f"1.2.826.9.9.{n}.1",
            series_number=n,
        )
        for n in range(first, last + 1)
    ]
    for start in range(0, len(extra), 500):
        chunk = extra[start : start + 500]
        await asyncio.gather(*(runtime.index.put(r, policy="keep") for r in chunk))


async def test_findscu_cancel(tmp_path: Path) -> None:
    many = await asyncio.to_thread(write_many_series, tmp_path / "many", 300)
    async with dcmtk_server(tmp_path, many) as (server, runtime):
        await _more_series(runtime, 301, LARGE_RESULT)
        log, rsp = await findscu(
            server.port, tmp_path / "out", "-S", "--cancel", "3",
            *keys("QueryRetrieveLevel=SERIES", "StudyInstanceUID=1.2.826.9.9", "SeriesInstanceUID"),
        )  # fmt: skip
        assert "Sending Cancel Request" in log
        assert "(Cancel: MatchingTerminatedDueToCancelRequest)" in final_status(log)
        assert 3 <= len(rsp) < LARGE_RESULT


# --- pynetdicom ----------------------------------------------------------------------------------


def _store(port: int, paths: list[Path]) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="PYNETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    datasets = [pydicom.dcmread(p) for p in paths]
    for sop in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMD")
    assert assoc.is_established
    try:
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0
    finally:
        assoc.release()


def _find(
    port: int,
    model: str,
    query: Dataset,
    *,
    relational: bool = False,
    cancel_after: int | None = None,
) -> tuple[list[Dataset], list[int]]:
    """(identifiers of the pending responses, every status in order)."""
    from pynetdicom import AE
    from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

    ae = AE(ae_title="PYNETSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(model)
    ext = []
    if relational:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = model
        item.service_class_application_information = b"\x01"
        ext.append(item)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMD", ext_neg=[*ext])
    assert assoc.is_established
    identifiers: list[Dataset] = []
    statuses: list[int] = []
    try:
        for st, ident in assoc.send_c_find(query, model, msg_id=7):
            assert st is not None, "no response from the SCP"
            statuses.append(int(st.Status))
            if ident is not None and st.Status in (0xFF00, 0xFF01):
                identifiers.append(ident)
                if cancel_after is not None and len(identifiers) == cancel_after:
                    assoc.send_c_cancel(7, query_model=model)
    finally:
        assoc.release()
    return identifiers, statuses


@asynccontextmanager
async def pynetdicom_server(tmp_path: Path) -> AsyncIterator[DicomServer]:
    files = await asyncio.to_thread(write_people, tmp_path / "in")
    async with run_runtime() as (server, runtime):
        await asyncio.to_thread(_store, server.port, files)
        assert (await runtime.index.counts())["instances"] == len(files)
        yield server


def query(level: str, charset: str | None = None, **attrs: Any) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


async def test_pynetdicom_every_model_and_level_and_matching_type(tmp_path: Path) -> None:
    cases: list[tuple[str, Dataset, str, set[str]]] = [
        (PATIENT_ROOT, query("PATIENT", PatientID="", PatientName="DOE^*"), "PatientID", {"PA"}),
        (
            PATIENT_ROOT,
            query("STUDY", PatientID="PA", StudyInstanceUID="", StudyDate="20240201-"),
            "StudyInstanceUID",
            {"1.2.826.9.2"},
        ),
        (
            PATIENT_ROOT,
            query(
                "SERIES",
                PatientID="PB",
                StudyInstanceUID="1.2.826.9.3",
                SeriesInstanceUID="",
                Modality="CT",
            ),
            "SeriesInstanceUID",
            {"1.2.826.9.3.1"},
        ),
        (
            PATIENT_ROOT,
            query(
                "IMAGE",
                PatientID="PA",
                StudyInstanceUID="1.2.826.9.1",
                SeriesInstanceUID="1.2.826.9.1.1",
                SOPInstanceUID="1.2.826.9.1.1.2\\1.2.826.9.1.1.9",
            ),
            "SOPInstanceUID",
            {"1.2.826.9.1.1.2"},
        ),
        (
            STUDY_ROOT,
            query("STUDY", StudyInstanceUID="", AccessionNumber="ACC?", StudyDate="-20240210"),
            "StudyInstanceUID",
            {"1.2.826.9.1", "1.2.826.9.2", "1.2.826.9.4"},
        ),
        (
            STUDY_ROOT,
            query("SERIES", StudyInstanceUID="1.2.826.9.5", SeriesInstanceUID="", Modality=""),
            "SeriesInstanceUID",
            {"1.2.826.9.5.1"},
        ),
        (
            STUDY_ROOT,
            query(
                "IMAGE",
                StudyInstanceUID="1.2.826.9.1",
                SeriesInstanceUID="1.2.826.9.1.1",
                SOPInstanceUID="",
                InstanceNumber="1",
            ),
            "SOPInstanceUID",
            {"1.2.826.9.1.1.1"},
        ),
        (
            PATIENT_STUDY_ONLY,
            query("PATIENT", PatientID="", PatientSex="F"),
            "PatientID",
            {"PA", "PD"},
        ),
        (
            PATIENT_STUDY_ONLY,
            query("STUDY", PatientID="PD", StudyInstanceUID="", ModalitiesInStudy=""),
            "StudyInstanceUID",
            {"1.2.826.9.5"},
        ),
    ]
    async with pynetdicom_server(tmp_path) as server:
        for model, q, keyword, expected in cases:
            idents, statuses = await asyncio.to_thread(_find, server.port, model, q)
            assert statuses[-1] == 0, (q, statuses)
            assert {str(getattr(i, keyword)) for i in idents} == expected, q


async def test_pynetdicom_relational_queries(tmp_path: Path) -> None:
    q = query("STUDY", StudyInstanceUID="", PatientName="", AccessionNumber="ACC3")
    async with pynetdicom_server(tmp_path) as server:
        idents, statuses = await asyncio.to_thread(_find, server.port, PATIENT_ROOT, q)
        assert statuses == [0xA900] and idents == []
        idents, statuses = await asyncio.to_thread(
            _find, server.port, PATIENT_ROOT, q, relational=True
        )
        assert statuses[-1] == 0
        assert [(i.StudyInstanceUID, str(i.PatientName)) for i in idents] == [
            ("1.2.826.9.3", "Müller^Hans")
        ]


async def test_pynetdicom_character_sets(tmp_path: Path) -> None:
    cases = [
        ("GB18030", "王^小东", "Wang^XiaoDong=王^小东", "GB18030"),
        ("ISO_IR 192", "=李^娜", "Li^Na=李^娜", "ISO_IR 192"),
        ("ISO_IR 100", "müller^hans", "Müller^Hans", "ISO_IR 100"),
        ("ISO_IR 100", "li^na", "Li^Na=李^娜", "ISO_IR 192"),
    ]
    async with pynetdicom_server(tmp_path) as server:
        for charset, name, expected, answered_in in cases:
            q = query("STUDY", charset, PatientName=name, StudyInstanceUID="", StudyDescription="")
            idents, statuses = await asyncio.to_thread(_find, server.port, STUDY_ROOT, q)
            assert statuses[-1] == 0, charset
            (ident,) = idents
            assert ident.SpecificCharacterSet == answered_in, charset
            assert str(ident.PatientName) == expected


async def test_pynetdicom_cancel_in_the_middle_of_a_large_result(tmp_path: Path) -> None:
    # 300 series stored with storescu (pynetdicom leaves Nagle on and takes ~80 ms a store here).
    many = await asyncio.to_thread(write_many_series, tmp_path / "many", 300)
    async with dcmtk_server(tmp_path, many) as (server, runtime):
        await _more_series(runtime, 301, LARGE_RESULT)
        q = query("SERIES", StudyInstanceUID="1.2.826.9.9", SeriesInstanceUID="", SeriesNumber="")
        idents, statuses = await asyncio.to_thread(
            _find, server.port, STUDY_ROOT, q, cancel_after=3
        )
        assert statuses[-1] == 0xFE00, statuses[-5:]
        assert 3 <= len(idents) < LARGE_RESULT
        # Uncancelled, the same query yields all of them.
        idents, statuses = await asyncio.to_thread(_find, server.port, STUDY_ROOT, q)
        assert statuses[-1] == 0 and len(idents) == LARGE_RESULT
