"""C-FIND SCP end to end: a server on port 0, a raw peer that proposes what each test needs
(extended negotiation, transfer syntaxes), every model and level, statuses, cancel, limits."""

from __future__ import annotations

import io
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from dicomd.config import QueryConfig
from dicomd.dimse import status
from dicomd.dimse.fragments import CommandReceived, MessageAssembler, fragment
from dicomd.dimse.messages import CCancelRQ, CFindRQ, CFindRSP, encode_command
from dicomd.ul.codes import ContextResult
from dicomd.ul.items import PresentationContextRQ, SOPClassExtendedNegotiation, UserInformation
from dicomd.ul.pdu import AssociateAC, PDataTF
from tests.conftest import make_config, run_runtime
from tests.net.rawpeer import RawPeer, associate_rq
from tests.query.data import (
    PATIENT_ROOT,
    PATIENT_STUDY_ONLY,
    STUDY_ROOT,
    instance,
    load,
    record_of,
    standard_instances,
)
from tests.query.test_identifier import BIG, DEFLATED, EXPLICIT, IMPLICIT, encode

MODELS = (PATIENT_ROOT, STUDY_ROOT, PATIENT_STUDY_ONLY)


def decode(data: bytes, ts: str) -> Dataset:
    if ts == DEFLATED:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    return read_dataset(io.BytesIO(data), ts == IMPLICIT, ts != BIG)


def identifier(level: str, charset: str | None = None, **keys: Any) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


@dataclass
class Result:
    matches: list[Dataset]
    pending: list[int]
    final: CFindRSP


class FindClient:
    def __init__(self, peer: RawPeer, ac: AssociateAC, contexts: dict[str, int], ts: str) -> None:
        self.peer = peer
        self.ac = ac
        self.contexts = contexts
        self.ts = ts
        self._message_id = 0

    @classmethod
    async def open(
        cls, port: int, *, ts: str = EXPLICIT, extended: dict[str, bytes] | None = None
    ) -> FindClient:
        contexts = tuple(PresentationContextRQ(2 * i + 1, m, (ts,)) for i, m in enumerate(MODELS))
        rq = associate_rq(contexts=contexts, calling="FINDTEST")
        if extended:
            items = rq.user_information.items + tuple(
                SOPClassExtendedNegotiation(uid, info) for uid, info in extended.items()
            )
            rq = replace(rq, user_information=UserInformation(items))
        peer = await RawPeer.connect(port)
        ac = await peer.associate(rq)
        assert isinstance(ac, AssociateAC), ac
        accepted = {
            MODELS[(pc.context_id - 1) // 2]: pc.context_id
            for pc in ac.presentation_contexts
            if pc.result == ContextResult.ACCEPTANCE
        }
        assert set(accepted) == set(MODELS)
        return cls(peer, ac, accepted, ts)

    async def find(
        self,
        ds: Dataset | bytes,
        model: str = STUDY_ROOT,
        *,
        cancel_after: int | None = None,
    ) -> Result:
        self._message_id += 1
        cid = self.contexts[model]
        data = ds if isinstance(ds, bytes) else encode(ds, self.ts)
        command = encode_command(CFindRQ(self._message_id, model))
        for request_pdu in [
            *fragment(cid, command, is_command=True, max_pdu_length=16384),
            *fragment(cid, data, is_command=False, max_pdu_length=16384),
        ]:
            await self.peer.send(request_pdu)
        assembler = MessageAssembler()
        result = Result([], [], CFindRSP(0, None, 0, False))
        current: CFindRSP | None = None
        buffer = bytearray()
        while True:
            pdu = await self.peer.receive(timeout=20)
            assert isinstance(pdu, PDataTF), pdu
            for item in assembler.feed(pdu):
                if isinstance(item, CommandReceived):
                    rsp = item.command
                    assert isinstance(rsp, CFindRSP), rsp
                    assert rsp.message_id_being_responded_to == self._message_id
                    assert rsp.affected_sop_class_uid == model
                    if rsp.status in (status.PENDING, status.PENDING_WARNING):
                        assert rsp.has_dataset
                        current = rsp
                        continue
                    assert not rsp.has_dataset
                    result.final = rsp
                    return result
                buffer += item.data
                if item.is_last:
                    assert current is not None
                    result.matches.append(decode(bytes(buffer), self.ts))
                    result.pending.append(current.status)
                    buffer.clear()
                    if cancel_after is not None and len(result.matches) == cancel_after:
                        command = encode_command(CCancelRQ(self._message_id))
                        for c in fragment(cid, command, is_command=True, max_pdu_length=16384):
                            await self.peer.send(c)

    def close(self) -> None:
        self.peer.close()


@asynccontextmanager
async def server(**query: Any) -> AsyncIterator[Any]:
    config = make_config()
    if query:
        config = replace(config, query=QueryConfig(**query))
    async with run_runtime(config) as (srv, runtime):
        await load(runtime.index, standard_instances())
        yield srv, runtime


@pytest.fixture
async def client() -> AsyncIterator[FindClient]:
    async with server() as (srv, _runtime):
        c = await FindClient.open(srv.port)
        yield c
        c.close()


def values(result: Result, keyword: str) -> set[str]:
    return {str(getattr(m, keyword)) for m in result.matches}


# --- every model, every level --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "level", "keys", "keyword", "expected"),
    [
        (PATIENT_ROOT, "PATIENT", {"PatientID": "", "PatientName": "doe*"}, "PatientID", {"PA"}),
        (
            PATIENT_ROOT,
            "STUDY",
            {"PatientID": "PA", "StudyInstanceUID": ""},
            "StudyInstanceUID",
            {"1.2.9.1", "1.2.9.2"},
        ),
        (
            PATIENT_ROOT,
            "SERIES",
            {"PatientID": "PA", "StudyInstanceUID": "1.2.9.1", "SeriesInstanceUID": ""},
            "SeriesInstanceUID",
            {"1.2.9.1.1", "1.2.9.1.2"},
        ),
        (
            PATIENT_ROOT,
            "IMAGE",
            {
                "PatientID": "PA",
                "StudyInstanceUID": "1.2.9.1",
                "SeriesInstanceUID": "1.2.9.1.1",
                "SOPInstanceUID": "",
            },
            "SOPInstanceUID",
            {"1.2.9.1.1.1", "1.2.9.1.1.2", "1.2.9.1.1.3"},
        ),
        (
            STUDY_ROOT,
            "STUDY",
            {"StudyInstanceUID": "", "AccessionNumber": "ACC3"},
            "StudyInstanceUID",
            {"1.2.9.3"},
        ),
        (
            STUDY_ROOT,
            "SERIES",
            {"StudyInstanceUID": "1.2.9.3", "SeriesInstanceUID": "", "Modality": "MR"},
            "SeriesInstanceUID",
            {"1.2.9.3.2"},
        ),
        (
            STUDY_ROOT,
            "IMAGE",
            {
                "StudyInstanceUID": "1.2.9.1",
                "SeriesInstanceUID": "1.2.9.1.1",
                "SOPInstanceUID": "",
                "InstanceNumber": "3",
            },
            "SOPInstanceUID",
            {"1.2.9.1.1.3"},
        ),
        (
            PATIENT_STUDY_ONLY,
            "PATIENT",
            {"PatientID": "P*"},
            "PatientID",
            {"PA", "PB", "PC", "P%_1"},
        ),
        (
            PATIENT_STUDY_ONLY,
            "STUDY",
            {"PatientID": "PB", "StudyInstanceUID": ""},
            "StudyInstanceUID",
            {"1.2.9.3"},
        ),
    ],
)
async def test_every_model_and_level(
    client: FindClient,
    model: str,
    level: str,
    keys: dict[str, str],
    keyword: str,
    expected: set[str],
) -> None:
    result = await client.find(identifier(level, **keys), model)
    assert result.final.status == status.SUCCESS
    assert values(result, keyword) == expected
    assert set(result.pending) == {status.PENDING}
    for m in result.matches:
        # Exactly the requested keys, the level, and our Retrieve AE Title.
        assert {e.keyword for e in m} == {*keys, "QueryRetrieveLevel", "RetrieveAETitle"}
        assert m.QueryRetrieveLevel == level and m.RetrieveAETitle == "DICOMD"


async def test_computed_keys(client: FindClient) -> None:
    result = await client.find(
        identifier(
            "STUDY",
            StudyInstanceUID="1.2.9.1",
            ModalitiesInStudy="",
            SOPClassesInStudy="",
            NumberOfStudyRelatedSeries="",
            NumberOfStudyRelatedInstances="",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedInstances="",
        )
    )
    (m,) = result.matches
    assert list(m.ModalitiesInStudy) == ["CT", "SR"]
    assert len(m.SOPClassesInStudy) == 2
    assert (m.NumberOfStudyRelatedSeries, m.NumberOfStudyRelatedInstances) == (2, 4)
    assert (m.NumberOfPatientRelatedStudies, m.NumberOfPatientRelatedInstances) == (2, 6)


# --- hierarchical and relational -----------------------------------------------------------------


async def test_extended_negotiation_is_answered() -> None:
    async with server() as (srv, _runtime):
        c = await FindClient.open(
            srv.port, extended={PATIENT_ROOT: b"\x01\x01\x01\x01", STUDY_ROOT: b"\x00\x01"}
        )
        answers = {i.sop_class_uid: i.info for i in c.ac.user_information.extended_negotiations}
        # Relational and combined date-time kept; fuzzy names and timezone adjustment refused.
        assert answers == {PATIENT_ROOT: b"\x01\x01\x00\x00", STUDY_ROOT: b"\x00\x01"}
        c.close()


async def test_relational_queries_need_negotiation() -> None:
    query = identifier("STUDY", StudyInstanceUID="", StudyDate="20240105")
    series = identifier("SERIES", SeriesInstanceUID="", Modality="CT", PatientName="doe*")
    async with server() as (srv, _runtime):
        plain = await FindClient.open(srv.port)
        refused = await plain.find(query, PATIENT_ROOT)
        assert refused.final.status == status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
        assert refused.final.offending_element == (0x00100020,)
        assert refused.final.error_comment and "PatientID" in refused.final.error_comment
        assert refused.matches == []
        refused = await plain.find(series, STUDY_ROOT)
        assert refused.final.offending_element == (0x0020000D,)
        # The association carries on after a refusal.
        ok = await plain.find(identifier("PATIENT", PatientID="PA"), PATIENT_ROOT)
        assert ok.final.status == status.SUCCESS and len(ok.matches) == 1
        plain.close()

        relational = await FindClient.open(
            srv.port, extended={PATIENT_ROOT: b"\x01", STUDY_ROOT: b"\x01"}
        )
        found = await relational.find(query, PATIENT_ROOT)
        assert found.final.status == status.SUCCESS
        assert values(found, "StudyInstanceUID") == {"1.2.9.1", "1.2.9.5"}
        found = await relational.find(series, STUDY_ROOT)
        assert values(found, "SeriesInstanceUID") == {"1.2.9.1.1"}
        relational.close()


async def test_combined_date_time_when_negotiated() -> None:
    query = identifier(
        "STUDY", StudyInstanceUID="", StudyDate="20240105-20240301", StudyTime="1000-1200"
    )
    async with server() as (srv, _runtime):
        plain = await FindClient.open(srv.port)
        assert values(await plain.find(query), "StudyInstanceUID") == {"1.2.9.1"}
        plain.close()
        combined = await FindClient.open(srv.port, extended={STUDY_ROOT: b"\x00\x01"})
        assert values(await combined.find(query), "StudyInstanceUID") == {"1.2.9.1", "1.2.9.2"}
        combined.close()


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "ds", "code", "offending"),
    [
        (
            STUDY_ROOT,
            identifier("PATIENT", PatientID=""),
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            (0x00080052,),
        ),
        (
            PATIENT_STUDY_ONLY,
            identifier("SERIES", PatientID="PA"),
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            (0x00080052,),
        ),
        (
            STUDY_ROOT,
            identifier("WARD", StudyInstanceUID=""),
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            (0x00080052,),
        ),
        (
            STUDY_ROOT,
            identifier("STUDY", StudyDate="last week"),
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            (0x00080020,),
        ),
        (
            STUDY_ROOT,
            identifier("STUDY", StudyInstanceUID="1.2.*"),
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            (0x0020000D,),
        ),
        (STUDY_ROOT, b"\x08\x00\x52\x00CS\xff\x00STUDY", status.UNABLE_TO_PROCESS, None),
    ],
)
async def test_failure_statuses(
    client: FindClient,
    model: str,
    ds: Dataset | bytes,
    code: int,
    offending: tuple[int, ...] | None,
) -> None:
    result = await client.find(ds, model)
    assert result.final.status == code
    assert result.final.offending_element == offending
    assert result.final.error_comment
    assert result.matches == []
    assert (await client.find(identifier("STUDY", StudyInstanceUID="1.2.9.1"))).final.status == 0


async def test_pending_warning_when_a_value_was_not_matched(client: FindClient) -> None:
    result = await client.find(identifier("STUDY", StudyInstanceUID="", InstitutionName="Nowhere*"))
    assert result.final.status == status.SUCCESS
    assert len(result.matches) == 5 and set(result.pending) == {status.PENDING_WARNING}
    # The kept attribute is answered all the same.
    assert values(result, "InstitutionName") == {"General Hospital"}


async def test_injection_attempts_find_nothing_and_break_nothing(client: FindClient) -> None:
    for value in ("'; DROP TABLE study; --", "%", "_", "x\\'; --", "*' OR '1'='1"):
        result = await client.find(
            identifier("STUDY", StudyInstanceUID="", PatientName=value, AccessionNumber="")
        )
        assert result.final.status == status.SUCCESS, value
        assert result.matches == [], value
    result = await client.find(identifier("STUDY", StudyInstanceUID=""))
    assert len(result.matches) == 5


# --- limits and cancel ---------------------------------------------------------------------------


async def add_series(runtime: Any, n: int) -> None:
    for i in range(n):
        ds = instance(
            PatientName="Many^Series",
            PatientID="PMANY",
            StudyInstanceUID="7.7",
            StudyDate="20240601",
            SeriesInstanceUID=f"7.7.{i}",
            Modality="CT",
            SeriesNumber=i,
            SOPInstanceUID=f"7.7.{i}.1",
            SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
        )
        await runtime.index.put(record_of(ds, n=1000 + i), policy="keep")


async def test_max_matches_ends_with_out_of_resources() -> None:
    async with server(max_matches=3) as (srv, _runtime):
        c = await FindClient.open(srv.port)
        result = await c.find(identifier("STUDY", StudyInstanceUID=""))
        assert len(result.matches) == 3
        assert result.final.status == status.OUT_OF_RESOURCES
        assert result.final.error_comment and "3" in result.final.error_comment
        # Exactly the limit is not "exceeded".
        result = await c.find(
            identifier("SERIES", StudyInstanceUID="1.2.9.3", SeriesInstanceUID="")
        )
        assert (len(result.matches), result.final.status) == (2, status.SUCCESS)
        c.close()


async def test_cancel_ends_a_large_result_early() -> None:
    async with server() as (srv, runtime):
        await add_series(runtime, 300)
        c = await FindClient.open(srv.port)
        query = identifier("SERIES", StudyInstanceUID="7.7", SeriesInstanceUID="", SeriesNumber="")
        result = await c.find(query, cancel_after=2)
        assert result.final.status == status.CANCEL
        assert 2 <= len(result.matches) < 300, len(result.matches)
        # Nothing is left over: the next query on the association is answered normally.
        result = await c.find(query)
        assert (len(result.matches), result.final.status) == (300, status.SUCCESS)
        c.close()


# --- transfer syntaxes and character sets --------------------------------------------------------


@pytest.mark.parametrize("ts", [IMPLICIT, EXPLICIT, BIG, DEFLATED])
async def test_transfer_syntaxes(ts: str) -> None:
    async with server() as (srv, _runtime):
        c = await FindClient.open(srv.port, ts=ts)
        result = await c.find(
            identifier(
                "STUDY", "GB18030", StudyInstanceUID="", PatientName="王*", StudyDescription=""
            )
        )
        assert result.final.status == status.SUCCESS
        (m,) = result.matches
        assert m.SpecificCharacterSet == "GB18030"
        assert str(m.PatientName) == "Wang^XiaoDong=王^小东" and m.StudyDescription == "超声"
        c.close()


@pytest.mark.parametrize(
    ("charset", "name", "expected_name", "answered_in"),
    [
        ("GB18030", "王^小东", "Wang^XiaoDong=王^小东", "GB18030"),
        ("ISO_IR 192", "=王^小东", "Wang^XiaoDong=王^小东", "ISO_IR 192"),
        ("ISO_IR 100", "müller*", "Müller^Hans", "ISO_IR 100"),
        ("ISO_IR 100", "wang*", "Wang^XiaoDong=王^小东", "ISO_IR 192"),  # Latin-1 cannot say 王
        (None, "wang^xiaodong", "Wang^XiaoDong=王^小东", "ISO_IR 192"),
        (None, "doe^jane", "Doe^Jane", None),
    ],
)
async def test_character_sets(
    client: FindClient, charset: str | None, name: str, expected_name: str, answered_in: str | None
) -> None:
    result = await client.find(
        identifier("PATIENT", charset, PatientID="", PatientName=name), PATIENT_ROOT
    )
    assert result.final.status == status.SUCCESS
    (m,) = result.matches
    assert str(m.PatientName) == expected_name
    assert m.get("SpecificCharacterSet") == answered_in


@pytest.mark.parametrize(
    ("info", "answer"),
    [
        (b"", None),
        (b"\x00", b"\x00"),
        (b"\x01", b"\x01"),
        (b"\x01\x01\x01\x01", b"\x01\x01\x00\x00"),
        (b"\x00\x01\x00\x01", b"\x00\x01\x00\x00"),
        (b"\x02\x07", b"\x00\x00"),  # only the value 1 means "requested"
        (b"\x01\x01\x01\x01\x01\x01", b"\x01\x01\x00\x00"),  # bytes FIND does not define
    ],
)
def test_extended_negotiation_answer(info: bytes, answer: bytes | None) -> None:
    from dicomd.services.find import extended_negotiation

    assert extended_negotiation(info) == answer
