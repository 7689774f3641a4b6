"""Identifier -> plan -> rows -> response datasets, against a real index (no network), and the
query plans of the benchmark's query shapes."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from dicomd.dimse import status
from dicomd.query.identifier import QueryError, parse_identifier
from dicomd.query.matching import SQL_FUNCTIONS
from dicomd.query.model import MODELS
from dicomd.query.plan import build_plan
from dicomd.query.response import response_identifier
from dicomd.query.row_encoder import ResponseEncoder, text_row
from dicomd.storage.index import Index
from tests.query.data import (
    PATIENT_ROOT,
    PATIENT_STUDY_ONLY,
    STUDY_ROOT,
    item,
    load,
    standard_instances,
)


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[Index]:
    idx = await Index.open(tmp_path / "index.sqlite")
    for name, (nargs, fn) in SQL_FUNCTIONS.items():
        idx.add_sql_function(name, nargs, fn)
    await load(idx, standard_instances())
    try:
        yield idx
    finally:
        await idx.close()


EXPLICIT_LE = "1.2.840.10008.1.2.1"


def identifier(level: str, **keys: Any) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


async def find(
    index: Index,
    ds: Dataset,
    model: str = STUDY_ROOT,
    *,
    relational: bool = False,
    combined: bool = False,
    ci: bool = True,
) -> tuple[list[Dataset], bool]:
    query = parse_identifier(ds, MODELS[model], relational=relational, combined_datetime=combined)
    plan = build_plan(query, pn_case_insensitive=ci)
    encoder = ResponseEncoder(
        query, plan, ae_title="DICOMD", pn_case_insensitive=ci, transfer_syntax=EXPLICIT_LE
    )
    out = []
    async with index.query(plan.sql, plan.params, text_as_bytes=encoder.text_as_bytes) as rows:
        for row in await rows.fetch(1000):
            data = response_identifier(
                query,
                plan,
                text_row(row) if encoder.text_as_bytes else row,
                ae_title="DICOMD",
                pn_case_insensitive=ci,
                transfer_syntax=EXPLICIT_LE,
            )
            assert encoder(row) == data  # the compiled fast path answers byte for byte alike
            out.append(read_dataset(io.BytesIO(data), False, True))
    return out, plan.unsupported


def values(responses: list[Dataset], keyword: str) -> set[str]:
    return {str(getattr(r, keyword)) for r in responses}


# --- levels and models ---------------------------------------------------------------------------


async def test_patient_level_patient_root(index: Index) -> None:
    rsp, _ = await find(
        index,
        identifier(
            "PATIENT",
            PatientName="",
            PatientID="",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedSeries="",
            NumberOfPatientRelatedInstances="",
        ),
        PATIENT_ROOT,
    )
    by_id = {r.PatientID: r for r in rsp}
    assert set(by_id) == {"PA", "PB", "PC", "P%_1"}
    jane = by_id["PA"]
    assert (
        jane.NumberOfPatientRelatedStudies,
        jane.NumberOfPatientRelatedSeries,
        jane.NumberOfPatientRelatedInstances,
    ) == (2, 3, 6)
    # Exactly the requested keys, plus level and retrieve AE title.
    assert {e.keyword for e in jane} == {
        "PatientName",
        "PatientID",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
        "QueryRetrieveLevel",
        "RetrieveAETitle",
    }
    assert jane.QueryRetrieveLevel == "PATIENT" and jane.RetrieveAETitle == "DICOMD"


async def test_study_level_needs_patient_id_in_patient_root(index: Index) -> None:
    with pytest.raises(QueryError) as info:
        await find(index, identifier("STUDY", StudyInstanceUID=""), PATIENT_ROOT)
    assert info.value.code == status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert info.value.offending == (0x00100020,)
    rsp, _ = await find(
        index, identifier("STUDY", PatientID="PA", StudyInstanceUID=""), PATIENT_ROOT
    )
    assert values(rsp, "StudyInstanceUID") == {"1.2.9.1", "1.2.9.2"}
    # Relational: no unique key above is needed.
    rsp, _ = await find(
        index,
        identifier("STUDY", StudyInstanceUID="", StudyDate="20240105"),
        PATIENT_ROOT,
        relational=True,
    )
    assert values(rsp, "StudyInstanceUID") == {"1.2.9.1", "1.2.9.5"}


@pytest.mark.parametrize("bad", ["", "PA*", "PA\\PB"])
async def test_hierarchical_unique_key_above_must_be_single(index: Index, bad: str) -> None:
    with pytest.raises(QueryError) as info:
        await find(index, identifier("STUDY", PatientID=bad, StudyInstanceUID=""), PATIENT_ROOT)
    assert info.value.offending == (0x00100020,)


async def test_study_level_study_root_with_patient_keys(index: Index) -> None:
    rsp, _ = await find(
        index,
        identifier(
            "STUDY",
            PatientName="",
            PatientID="",
            StudyInstanceUID="",
            StudyDate="20240101-20240131",
            ModalitiesInStudy="",
            SOPClassesInStudy="",
            NumberOfStudyRelatedSeries="",
            NumberOfStudyRelatedInstances="",
        ),
    )
    by_uid = {r.StudyInstanceUID: r for r in rsp}
    assert set(by_uid) == {"1.2.9.1", "1.2.9.5"}
    s1 = by_uid["1.2.9.1"]
    assert list(s1.ModalitiesInStudy) == ["CT", "SR"]
    assert set(s1.SOPClassesInStudy) == {
        "1.2.840.10008.5.1.4.1.1.2",
        "1.2.840.10008.5.1.4.1.1.88.11",
    }
    assert (s1.NumberOfStudyRelatedSeries, s1.NumberOfStudyRelatedInstances) == (2, 4)
    assert s1.PatientName == "Doe^Jane" and s1.PatientID == "PA"


async def test_series_and_image_levels(index: Index) -> None:
    rsp, _ = await find(
        index,
        identifier(
            "SERIES",
            StudyInstanceUID="1.2.9.3",
            SeriesInstanceUID="",
            Modality="",
            NumberOfSeriesRelatedInstances="",
        ),
    )
    assert {(r.SeriesInstanceUID, r.Modality, r.NumberOfSeriesRelatedInstances) for r in rsp} == {
        ("1.2.9.3.1", "CT", 2),
        ("1.2.9.3.2", "MR", 1),
    }
    rsp, _ = await find(
        index,
        identifier(
            "IMAGE",
            StudyInstanceUID="1.2.9.1",
            SeriesInstanceUID="1.2.9.1.1",
            SOPInstanceUID="",
            InstanceNumber="2",
            Rows=None,
            ImageType="",
            AvailableTransferSyntaxUID="",
        ),
    )
    assert len(rsp) == 1
    assert rsp[0].SOPInstanceUID == "1.2.9.1.1.2" and rsp[0].Rows == 512
    assert list(rsp[0].ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert rsp[0].AvailableTransferSyntaxUID == "1.2.840.10008.1.2.1"
    # Patient Root needs the patient too.
    with pytest.raises(QueryError):
        await find(
            index,
            identifier(
                "IMAGE",
                StudyInstanceUID="1.2.9.1",
                SeriesInstanceUID="1.2.9.1.1",
                SOPInstanceUID="",
            ),
            PATIENT_ROOT,
        )


@pytest.mark.parametrize(
    ("model", "level"),
    [
        (STUDY_ROOT, "PATIENT"),
        (PATIENT_STUDY_ONLY, "SERIES"),
        (PATIENT_STUDY_ONLY, "IMAGE"),
        (STUDY_ROOT, "FOO"),
        (STUDY_ROOT, ""),
    ],
)
async def test_levels_outside_the_model(index: Index, model: str, level: str) -> None:
    with pytest.raises(QueryError) as info:
        await find(index, identifier(level, PatientID=""), model)
    assert info.value.code == status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    assert info.value.offending == (0x00080052,)


async def test_patient_study_only_model(index: Index) -> None:
    rsp, _ = await find(
        index, identifier("PATIENT", PatientID="PB", PatientName=""), PATIENT_STUDY_ONLY
    )
    assert values(rsp, "PatientName") == {"Müller^Hans"}
    rsp, _ = await find(
        index,
        identifier("STUDY", PatientID="PB", StudyInstanceUID="", StudyDescription=""),
        PATIENT_STUDY_ONLY,
    )
    assert values(rsp, "StudyDescription") == {"Thorax pré-op"}


# --- keys: below the level, from the kept attributes, unsupported matching -----------------------------


async def test_keys_below_level_are_empty_and_flagged_only_with_a_value(index: Index) -> None:
    rsp, unsupported = await find(
        index, identifier("STUDY", StudyInstanceUID="1.2.9.1", SOPInstanceUID="", Modality="")
    )
    assert len(rsp) == 1 and not rsp[0].SOPInstanceUID and not rsp[0].Modality
    assert not unsupported
    rsp, unsupported = await find(
        index, identifier("STUDY", StudyInstanceUID="1.2.9.1", Modality="CT")
    )
    assert unsupported and len(rsp) == 1


async def test_attributes_without_column_are_answered_from_the_kept_attributes(
    index: Index,
) -> None:
    rsp, unsupported = await find(
        index, identifier("STUDY", StudyInstanceUID="1.2.9.1", InstitutionName="", Manufacturer="")
    )
    assert rsp[0].InstitutionName == "General Hospital"
    assert not rsp[0].Manufacturer  # not in the instances: zero length
    assert not unsupported
    rsp, unsupported = await find(
        index, identifier("STUDY", StudyInstanceUID="1.2.9.1", InstitutionName="Other*")
    )
    assert unsupported  # FF01: the value was not used for matching


async def test_counts_are_not_matching_keys(index: Index) -> None:
    rsp, unsupported = await find(
        index, identifier("STUDY", StudyInstanceUID="", NumberOfStudyRelatedInstances="99")
    )
    assert len(rsp) == 5 and unsupported


async def test_instance_availability(index: Index) -> None:
    rsp, _ = await find(
        index, identifier("STUDY", StudyInstanceUID="1.2.9.1", InstanceAvailability="")
    )
    assert rsp[0].InstanceAvailability == "ONLINE"
    rsp, _ = await find(
        index, identifier("STUDY", StudyInstanceUID="1.2.9.1", InstanceAvailability="NEARLINE")
    )
    assert rsp == []


# --- matching through the plan ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientName": "doe*"}, {"1.2.9.1", "1.2.9.2"}),
        ({"PatientName": "MÜLLER^HANS"}, {"1.2.9.3"}),
        ({"PatientName": "王*"}, {"1.2.9.4"}),
        ({"PatientName": "Per%*"}, {"1.2.9.5"}),
        ({"PatientID": "P%_1"}, {"1.2.9.5"}),
        ({"PatientID": "P__1"}, set()),
        ({"AccessionNumber": "ACC?"}, {"1.2.9.1", "1.2.9.2", "1.2.9.3", "1.2.9.4"}),
        ({"AccessionNumber": "A_5"}, {"1.2.9.5"}),
        ({"StudyDate": "-20231231"}, {"1.2.9.4"}),
        ({"StudyDate": "20240201-"}, {"1.2.9.2", "1.2.9.3"}),
        ({"StudyInstanceUID": "1.2.9.1\\1.2.9.3"}, {"1.2.9.1", "1.2.9.3"}),
        ({"ModalitiesInStudy": "MR"}, {"1.2.9.2", "1.2.9.3"}),
        ({"ModalitiesInStudy": "US\\SR"}, {"1.2.9.1", "1.2.9.4"}),
        ({"SOPClassesInStudy": "1.2.840.10008.5.1.4.1.1.88.11"}, {"1.2.9.1"}),
        ({"PatientWeight": "70"}, {"1.2.9.1"}),
        ({"OtherPatientIDs": "OLD2"}, {"1.2.9.1", "1.2.9.2"}),
        ({"StudyDescription": "超*"}, {"1.2.9.4"}),
        ({"StudyDescription": "*pré*"}, {"1.2.9.3"}),
        ({"ReferringPhysicianName": "REF^ONE"}, {"1.2.9.1"}),
    ],
)
async def test_study_matching(index: Index, keys: dict[str, str], expected: set[str]) -> None:
    rsp, _ = await find(
        index,
        identifier("STUDY", StudyInstanceUID="", **keys)
        if "StudyInstanceUID" not in keys
        else identifier("STUDY", **keys),
    )
    assert values(rsp, "StudyInstanceUID") == expected


async def test_pn_case_sensitive_configuration(index: Index) -> None:
    rsp, _ = await find(
        index, identifier("STUDY", StudyInstanceUID="", PatientName="doe*"), ci=False
    )
    assert rsp == []
    rsp, _ = await find(
        index, identifier("STUDY", StudyInstanceUID="", PatientName="Doe*"), ci=False
    )
    assert values(rsp, "StudyInstanceUID") == {"1.2.9.1", "1.2.9.2"}


async def test_invalid_values_are_a900_with_the_offending_key(index: Index) -> None:
    for keys, tag in (
        ({"StudyDate": "yesterday"}, 0x00080020),
        ({"StudyInstanceUID": "1.2.*"}, 0x0020000D),
        ({"StudyTime": "25"}, None),
    ):
        ds = identifier("STUDY", **keys)
        if tag is None:
            # "25" is a well-formed TM value (the hour is not checked); the query just finds none.
            rsp, _ = await find(index, ds)
            assert rsp == []
            continue
        with pytest.raises(QueryError) as info:
            await find(index, ds)
        assert info.value.code == status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
        assert info.value.offending == (tag,)


async def test_combined_date_time_only_when_negotiated(index: Index) -> None:
    keys = dict(StudyInstanceUID="", StudyDate="20240105-20240301", StudyTime="1000-1200")
    separate, _ = await find(index, identifier("STUDY", **keys))
    combined, _ = await find(index, identifier("STUDY", **keys), combined=True)
    # Separately: 10:00-12:00 on any day of the range. Combined: Jan 5 10:00 to Mar 1 12:00.
    assert values(separate, "StudyInstanceUID") == {"1.2.9.1"}
    assert values(combined, "StudyInstanceUID") == {"1.2.9.1", "1.2.9.2"}


async def test_sequence_matching_request_attributes(index: Index) -> None:
    def query(**item_keys: str) -> Dataset:
        return identifier(
            "SERIES",
            StudyInstanceUID="1.2.9.1",
            SeriesInstanceUID="",
            RequestAttributesSequence=[item(**item_keys)],
        )

    rsp, unsupported = await find(
        index, query(RequestedProcedureID="RP2", ScheduledProcedureStepID="")
    )
    assert not unsupported
    assert values(rsp, "SeriesInstanceUID") == {"1.2.9.1.2"}
    seq = rsp[0].RequestAttributesSequence
    # Only the matching item, with only the requested item keys.
    assert len(seq) == 1
    assert seq[0].RequestedProcedureID == "RP2" and seq[0].ScheduledProcedureStepID == "SPS2"
    assert set(seq[0].keys()) == {0x00401001, 0x00400009}
    # An empty item: every series, the whole sequence where there is one.
    rsp, _ = await find(index, query())
    by_uid = {r.SeriesInstanceUID: r for r in rsp}
    assert len(by_uid["1.2.9.1.2"].RequestAttributesSequence) == 2
    assert len(by_uid["1.2.9.1.1"].RequestAttributesSequence) == 0
    # No match on the item keys: no series.
    rsp, _ = await find(index, query(RequestedProcedureID="RP1", ScheduledProcedureStepID="SPS2"))
    assert rsp == []


# --- query plans ------------------------------------------------------------------------------------


async def explain(index: Index, ds: Dataset, model: str = STUDY_ROOT) -> list[str]:
    query = parse_identifier(ds, MODELS[model], relational=True, combined_datetime=False)
    plan = build_plan(query, pn_case_insensitive=True)
    async with index.query("EXPLAIN QUERY PLAN " + plan.sql, plan.params) as rows:
        return [str(r[3]) for r in await rows.fetch(100)]


STUDY_KEYS = dict(
    StudyInstanceUID="",
    StudyDate="",
    StudyTime="",
    AccessionNumber="",
    StudyDescription="",
    PatientName="",
    PatientID="",
    PatientBirthDate="",
    ModalitiesInStudy="",
    NumberOfStudyRelatedSeries="",
    NumberOfStudyRelatedInstances="",
)


def no_scan_of_children(plan: list[str]) -> None:
    # Counts and modalities come from the child -> parent indexes, never from scanning a table.
    for line in plan:
        for alias in ("r2", "i2", "s2", "se ", "i "):
            assert not line.startswith(f"SCAN {alias}"), plan
    assert not any("TEMP B-TREE FOR ORDER BY" in line for line in plan), plan


async def test_plan_study_by_patient_id(index: Index) -> None:
    plan = await explain(index, identifier("STUDY", **{**STUDY_KEYS, "PatientID": "PA"}))
    assert any(
        line.startswith("SEARCH p USING") and "sqlite_autoindex_patient_1 (patient_id=?)" in line
        for line in plan
    ), plan
    assert any(
        line.startswith("SEARCH st USING INDEX study_patient_pk_idx (patient_pk=?)")
        for line in plan
    ), plan
    assert not any(line.startswith(("SCAN p", "SCAN st")) for line in plan), plan
    no_scan_of_children(plan)


async def test_plan_patient_name_prefix(index: Index) -> None:
    plan = await explain(index, identifier("STUDY", **{**STUDY_KEYS, "PatientName": "Doe*"}))
    assert any("patient_name_idx (patient_name>? AND patient_name<?)" in line for line in plan), (
        plan
    )
    assert not any(line.startswith(("SCAN p", "SCAN st")) for line in plan), plan
    no_scan_of_children(plan)


async def test_plan_study_date_range(index: Index) -> None:
    plan = await explain(
        index, identifier("STUDY", **{**STUDY_KEYS, "StudyDate": "20240101-20240131"})
    )
    assert any("study_date_idx (study_date>? AND study_date<?)" in line for line in plan), plan
    assert not any(line.startswith("SCAN st") for line in plan), plan
    no_scan_of_children(plan)


async def test_plan_universal_study_query_streams_without_sorting(index: Index) -> None:
    plan = await explain(index, identifier("STUDY", **STUDY_KEYS))
    assert not any("TEMP B-TREE" in line and "DISTINCT" not in line for line in plan), plan
    no_scan_of_children(plan)
