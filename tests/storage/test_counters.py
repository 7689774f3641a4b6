"""The counters the index keeps with triggers (schema version 2): Number of Patient/Study/Series
Related Studies/Series/Instances and Modalities in Study always equal what counting the rows gives,
whatever path changed the hierarchy: new instances, replacements into another series, study or
patient, series moved between studies, deletions and the cleanup of empty parents, batches, a
foreign-key cascade, and the migration of a version 1 database that already holds rows.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

from dicomd.storage.index import Index
from dicomd.storage.record import InstanceRecord
from dicomd.storage.schema import MIGRATIONS, migrate
from tests.storage.test_index import in_one_batch, make_record, oracle

# Stored value, computed value: one row per entity whose counters are wrong.
_MISMATCHES = r"""
SELECT 'series', pk, number_of_instances,
       (SELECT count(*) FROM instance WHERE series_pk = series.pk)
  FROM series
 WHERE number_of_instances IS NOT (SELECT count(*) FROM instance WHERE series_pk = series.pk)
UNION ALL
SELECT 'study', pk, number_of_series || '/' || number_of_instances || '/' || modalities_in_study,
       c.s || '/' || c.i || '/' || c.m
  FROM study
  JOIN (SELECT st.pk AS spk,
               (SELECT count(*) FROM series WHERE study_pk = st.pk) AS s,
               (SELECT count(*) FROM series se JOIN instance i ON i.series_pk = se.pk
                 WHERE se.study_pk = st.pk) AS i,
               coalesce((SELECT group_concat(m, '\') FROM
                   (SELECT DISTINCT modality AS m FROM series
                     WHERE study_pk = st.pk AND modality <> '' ORDER BY 1)), '') AS m
          FROM study st) AS c ON c.spk = study.pk
 WHERE number_of_series IS NOT c.s OR number_of_instances IS NOT c.i
    OR modalities_in_study IS NOT c.m
UNION ALL
SELECT 'patient', pk, number_of_studies || '/' || number_of_series || '/' || number_of_instances,
       c.st || '/' || c.se || '/' || c.i
  FROM patient
  JOIN (SELECT p.pk AS ppk,
               (SELECT count(*) FROM study WHERE patient_pk = p.pk) AS st,
               (SELECT count(*) FROM study s JOIN series se ON se.study_pk = s.pk
                 WHERE s.patient_pk = p.pk) AS se,
               (SELECT count(*) FROM study s JOIN series se ON se.study_pk = s.pk
                 JOIN instance i ON i.series_pk = se.pk WHERE s.patient_pk = p.pk) AS i
          FROM patient p) AS c ON c.ppk = patient.pk
 WHERE number_of_studies IS NOT c.st OR number_of_series IS NOT c.se
    OR number_of_instances IS NOT c.i
"""


def mismatches(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    return conn.execute(_MISMATCHES).fetchall()


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[Index]:
    idx = await Index.open(tmp_path / "index.sqlite")
    try:
        yield idx
    finally:
        await idx.close()


def _random_record(rng: random.Random, n: int) -> InstanceRecord:
    """Instance n (of 16) placed at random in a small hierarchy, so that replacements move
    instances between series, series between studies and studies between patients."""
    patient = rng.choice("ABC")
    study = rng.randrange(4)
    series = rng.randrange(6)
    return make_record(
        n,
        patient_id=f"P{patient}",
        study_instance_uid=f"1.2.{study}",
        series_instance_uid=f"1.2.{study}.{series}",
        modality=rng.choice(["CT", "MR", "SR", ""]),
    )


@pytest.mark.parametrize("seed", range(4))
async def test_counters_follow_every_change(index: Index, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    for step in range(40):
        if rng.random() < 0.25:
            uids = [f"1.2.1.1.{rng.randrange(16)}" for _ in range(rng.randrange(1, 4))]
            await in_one_batch(index, *(index.delete(uid) for uid in uids))
        else:
            records = [_random_record(rng, rng.randrange(16)) for _ in range(rng.randrange(1, 4))]
            await in_one_batch(index, *(index.put(r, policy="replace") for r in records))
        with oracle(tmp_path / "index.sqlite") as conn:
            assert mismatches(conn) == [], f"step {step}"
            # Sanity: the mismatch query sees the counters at all (a non-empty archive counts).
            instances = conn.execute("SELECT count(*) FROM instance").fetchone()[0]
            total = conn.execute("SELECT coalesce(sum(number_of_instances), 0) FROM patient")
            assert total.fetchone()[0] == instances


async def test_the_mismatch_query_can_fail(index: Index, tmp_path: Path) -> None:
    await index.put(make_record(1), policy="replace")
    with oracle(tmp_path / "index.sqlite") as conn:
        conn.execute("UPDATE study SET number_of_instances = 7")
        assert [row[0] for row in mismatches(conn)] == ["study"]


async def test_modalities_in_study_are_sorted_distinct_and_skip_empty(
    index: Index, tmp_path: Path
) -> None:
    await asyncio.gather(
        *(
            index.put(make_record(n, series_instance_uid=f"1.2.1.{n}", modality=m), policy="keep")
            for n, m in enumerate(["MR", "CT", "", "MR", "SR"])
        )
    )
    with oracle(tmp_path / "index.sqlite") as conn:
        row = conn.execute(
            "SELECT modalities_in_study, number_of_series, number_of_instances FROM study"
        ).fetchone()
        assert row == ("CT\\MR\\SR", 5, 5)


async def test_a_foreign_key_cascade_keeps_the_parents_right(index: Index, tmp_path: Path) -> None:
    for n in range(6):
        study = "1.2.1" if n < 4 else "1.2.2"
        await index.put(
            make_record(n, study_instance_uid=study, series_instance_uid=f"{study}.{n % 2}"),
            policy="replace",
        )
    with oracle(tmp_path / "index.sqlite") as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("DELETE FROM study WHERE study_instance_uid = '1.2.1'")
        assert mismatches(conn) == []
        assert conn.execute(
            "SELECT number_of_studies, number_of_series, number_of_instances FROM patient"
        ).fetchall() == [(1, 2, 2)]
        conn.execute("DELETE FROM series WHERE series_instance_uid = '1.2.2.0'")
        assert mismatches(conn) == []


async def test_migrating_a_version_1_database_fills_the_counters(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, MIGRATIONS[:1]) == 1
    with oracle(path) as conn:
        conn.executescript(
            """
            INSERT INTO patient (pk, patient_id) VALUES (1, 'P1'), (2, 'P2');
            INSERT INTO study (pk, patient_pk, study_instance_uid) VALUES
                (1, 1, '1.1'), (2, 1, '1.2'), (3, 2, '2.1');
            INSERT INTO series (pk, study_pk, series_instance_uid, modality) VALUES
                (1, 1, '1.1.1', 'MR'), (2, 1, '1.1.2', 'CT'), (3, 2, '1.2.1', ''),
                (4, 3, '2.1.1', 'US');
            INSERT INTO instance (series_pk, sop_instance_uid, sop_class_uid,
                                  transfer_syntax_uid, relpath, size, sha256, received_at)
            VALUES (1, 'a', '1', '1', 'a', 1, '', ''), (1, 'b', '1', '1', 'b', 1, '', ''),
                   (2, 'c', '1', '1', 'c', 1, '', ''), (4, 'd', '1', '1', 'd', 1, '', '');
            """
        )
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn) == len(MIGRATIONS)
    with oracle(path) as conn:
        assert mismatches(conn) == []
        assert conn.execute(
            "SELECT study_instance_uid, number_of_series, number_of_instances, modalities_in_study"
            " FROM study ORDER BY pk"
        ).fetchall() == [("1.1", 2, 3, "CT\\MR"), ("1.2", 1, 0, ""), ("2.1", 1, 1, "US")]
        assert conn.execute(
            "SELECT number_of_studies, number_of_series, number_of_instances FROM patient"
            " ORDER BY pk"
        ).fetchall() == [(2, 3, 3), (1, 1, 1)]
