"""The index database schema and its migrations.

Owns: the SQL that creates and evolves the index tables, and `migrate()`, which brings a database
up to date. `MIGRATIONS[n]` turns a database at version n into version n + 1; the version lives
in `PRAGMA user_version` (0 in a new file), and each migration commits together with its version
bump, so a crash or a failing script leaves the database at the previous version, never half
migrated. Migrations are append-only: once released, a script is never edited.
Must not know: DICOM parsing, files, the group-commit writer (index.py).

The tables follow the Patient Root information model (PS3.4 C.6.1.1): patient -> study -> series
-> instance, one row per entity. Each has an INTEGER PRIMARY KEY `pk` and a UNIQUE natural key
(patient: patient_id + issuer_of_patient_id; study/series/instance: their UIDs); a child points
at its parent with `<parent>_pk ... ON DELETE CASCADE`. `pk` rather than `id` because `patient_id`
is the DICOM Patient ID. Column names are the InstanceRecord field names (record.py), so C-FIND
reads naturally: `JOIN study ON study.patient_pk = patient.pk WHERE study.study_date BETWEEN ...`.
Text columns are NOT NULL DEFAULT '' (DICOM's empty value); integers are NULL when absent.

Indexes serve C-FIND on a million instances: each UNIQUE natural key is an index, and so are the
common matching keys (PS3.4 C.6.1.1.2-C.6.1.1.5 required and unique keys) and every child -> parent
link. patient_name is declared COLLATE NOCASE so that both `=` and the LIKE prefix optimisation
(wildcard matching, PS3.4 C.2.2.2.4) can use its index; NOCASE folds ASCII only.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import fields
from typing import Final

import aiosqlite

from dicomd.storage.record import InstanceRecord

__all__ = [
    "COUNTER_COLUMNS",
    "INSTANCE_COLUMNS",
    "MIGRATIONS",
    "PATIENT_COLUMNS",
    "SERIES_COLUMNS",
    "STUDY_COLUMNS",
    "SchemaError",
    "migrate",
    "schema_version",
]

# The columns of each level after its pk and parent link, natural key first; together they are
# InstanceRecord's fields, one column each (a test holds the DDL below to these).
PATIENT_COLUMNS: Final = (
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_birth_time",
    "patient_sex",
    "other_patient_ids",
    "ethnic_group",
    "patient_comments",
)
STUDY_COLUMNS: Final = (
    "study_instance_uid",
    "study_date",
    "study_time",
    "accession_number",
    "study_id",
    "study_description",
    "referring_physician_name",
    "name_of_physicians_reading_study",
    "admitting_diagnoses_description",
    "patient_age",
    "patient_size",
    "patient_weight",
)
SERIES_COLUMNS: Final = (
    "series_instance_uid",
    "modality",
    "series_number",
    "series_description",
    "series_date",
    "series_time",
    "body_part_examined",
    "performing_physician_name",
    "protocol_name",
    "operators_name",
    "laterality",
    "request_attributes",
)
# Kept by the index itself (version 2's triggers), not by the writer: after each level's columns.
COUNTER_COLUMNS: Final = {
    "patient": ("number_of_studies", "number_of_series", "number_of_instances"),
    "study": ("number_of_series", "number_of_instances", "modalities_in_study"),
    "series": ("number_of_instances",),
    "instance": (),
}
INSTANCE_COLUMNS: Final = tuple(
    f.name
    for f in fields(InstanceRecord)
    if f.name not in {*PATIENT_COLUMNS, *STUDY_COLUMNS, *SERIES_COLUMNS}
)

_V1: Final = """
CREATE TABLE patient (
    pk INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL DEFAULT '',
    issuer_of_patient_id TEXT NOT NULL DEFAULT '',
    patient_name TEXT NOT NULL DEFAULT '' COLLATE NOCASE,
    patient_birth_date TEXT NOT NULL DEFAULT '',
    patient_birth_time TEXT NOT NULL DEFAULT '',
    patient_sex TEXT NOT NULL DEFAULT '',
    other_patient_ids TEXT NOT NULL DEFAULT '',
    ethnic_group TEXT NOT NULL DEFAULT '',
    patient_comments TEXT NOT NULL DEFAULT '',
    UNIQUE (patient_id, issuer_of_patient_id)
);
CREATE INDEX patient_name_idx ON patient (patient_name);

CREATE TABLE study (
    pk INTEGER PRIMARY KEY,
    patient_pk INTEGER NOT NULL REFERENCES patient (pk) ON DELETE CASCADE,
    study_instance_uid TEXT NOT NULL UNIQUE,
    study_date TEXT NOT NULL DEFAULT '',
    study_time TEXT NOT NULL DEFAULT '',
    accession_number TEXT NOT NULL DEFAULT '',
    study_id TEXT NOT NULL DEFAULT '',
    study_description TEXT NOT NULL DEFAULT '',
    referring_physician_name TEXT NOT NULL DEFAULT '',
    name_of_physicians_reading_study TEXT NOT NULL DEFAULT '',
    admitting_diagnoses_description TEXT NOT NULL DEFAULT '',
    patient_age TEXT NOT NULL DEFAULT '',
    patient_size TEXT NOT NULL DEFAULT '',
    patient_weight TEXT NOT NULL DEFAULT ''
);
CREATE INDEX study_patient_pk_idx ON study (patient_pk);
CREATE INDEX study_date_idx ON study (study_date);
CREATE INDEX study_accession_number_idx ON study (accession_number);

CREATE TABLE series (
    pk INTEGER PRIMARY KEY,
    study_pk INTEGER NOT NULL REFERENCES study (pk) ON DELETE CASCADE,
    series_instance_uid TEXT NOT NULL UNIQUE,
    modality TEXT NOT NULL DEFAULT '',
    series_number INTEGER,
    series_description TEXT NOT NULL DEFAULT '',
    series_date TEXT NOT NULL DEFAULT '',
    series_time TEXT NOT NULL DEFAULT '',
    body_part_examined TEXT NOT NULL DEFAULT '',
    performing_physician_name TEXT NOT NULL DEFAULT '',
    protocol_name TEXT NOT NULL DEFAULT '',
    operators_name TEXT NOT NULL DEFAULT '',
    laterality TEXT NOT NULL DEFAULT '',
    request_attributes TEXT NOT NULL DEFAULT ''
);
CREATE INDEX series_study_pk_idx ON series (study_pk);
-- (modality, study_pk) also answers Modalities in Study (0008,0061) from the index alone.
CREATE INDEX series_modality_idx ON series (modality, study_pk);

CREATE TABLE instance (
    pk INTEGER PRIMARY KEY,
    series_pk INTEGER NOT NULL REFERENCES series (pk) ON DELETE CASCADE,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    content_date TEXT NOT NULL DEFAULT '',
    content_time TEXT NOT NULL DEFAULT '',
    acquisition_date TEXT NOT NULL DEFAULT '',
    acquisition_time TEXT NOT NULL DEFAULT '',
    number_of_frames INTEGER,
    rows INTEGER,
    columns INTEGER,
    image_type TEXT NOT NULL DEFAULT '',
    transfer_syntax_uid TEXT NOT NULL,
    relpath TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received_at TEXT NOT NULL,
    calling_ae_title TEXT NOT NULL DEFAULT '',
    specific_character_set TEXT NOT NULL DEFAULT '',
    attributes BLOB NOT NULL DEFAULT x'',
    attributes_transfer_syntax TEXT NOT NULL DEFAULT ''
);
CREATE INDEX instance_series_pk_idx ON instance (series_pk);
"""

# Version 2: what C-FIND computes per entity, kept up to date by triggers (PS3.4 C.6.1.1.2-4:
# Number of Patient/Study/Series Related ..., Modalities in Study). Counting per matched study at
# query time cost 10-15 ms of a 20 ms budget for a name query matching 800 studies of a million
# instances; a stored counter costs an indexed rowid UPDATE per level in the same transaction as the
# C-STORE's rows. Triggers rather than the writer's Python: every path that changes the hierarchy
# (store, replace into another series, delete, reconcile, the cleanup of empty parents, a foreign
# key cascade, a hand edit) keeps them right, in C, inside its own statement.
#
# Each trigger moves counts along the chain that exists when it fires: an instance's count is
# added to or taken from its series, study and patient only while its series row exists, and a
# series', study's own deletion takes what it still holds from its parents. So a cascade (a study
# deleted with its series and instances) leaves the parents right in whichever order SQLite
# deletes the rows. The triggers are composed of the pieces below, one per level: an addition
# (+, NEW), a removal (-, OLD), and a move, which is the removal from the old parent followed by
# the addition to the new one.


def _modalities(study_pk: str) -> str:
    """SQL for Modalities in Study of the study whose pk is `study_pk`: the distinct non-empty
    modalities of its series, sorted, backslash-separated (PS3.4 C.6.1.1.3)."""
    return (
        "coalesce((SELECT group_concat(m, '\\') FROM\n"
        "        (SELECT DISTINCT modality AS m FROM series\n"
        f"          WHERE study_pk = {study_pk} AND modality <> '' ORDER BY 1)), '')"
    )


def _instance_counts(sign: str, row: str) -> str:
    """Trigger statements adding (+) or taking (-) the instance `row` (NEW or OLD) to or from its
    series, study and patient."""
    return f"""
    UPDATE series SET number_of_instances = number_of_instances {sign} 1 WHERE pk = {row}.series_pk;
    UPDATE study SET number_of_instances = number_of_instances {sign} 1
     WHERE pk = (SELECT study_pk FROM series WHERE pk = {row}.series_pk);
    UPDATE patient SET number_of_instances = number_of_instances {sign} 1
     WHERE pk = (SELECT st.patient_pk FROM series se JOIN study st ON st.pk = se.study_pk
                  WHERE se.pk = {row}.series_pk);"""


def _series_counts(sign: str, row: str) -> str:
    """The series `row` and its instances added to or taken from its study and patient; the
    study's modalities recomputed from the series it has now."""
    return f"""
    UPDATE study SET
        number_of_series = number_of_series {sign} 1,
        number_of_instances = number_of_instances {sign} {row}.number_of_instances,
        modalities_in_study = {_modalities(f"{row}.study_pk")}
     WHERE pk = {row}.study_pk;
    UPDATE patient SET
        number_of_series = number_of_series {sign} 1,
        number_of_instances = number_of_instances {sign} {row}.number_of_instances
     WHERE pk = (SELECT patient_pk FROM study WHERE pk = {row}.study_pk);"""


def _study_counts(sign: str, row: str) -> str:
    """The study `row`, its series and instances added to or taken from its patient."""
    return f"""
    UPDATE patient SET
        number_of_studies = number_of_studies {sign} 1,
        number_of_series = number_of_series {sign} {row}.number_of_series,
        number_of_instances = number_of_instances {sign} {row}.number_of_instances
     WHERE pk = {row}.patient_pk;"""


_V2: Final = f"""
ALTER TABLE patient ADD COLUMN number_of_studies INTEGER NOT NULL DEFAULT 0;
ALTER TABLE patient ADD COLUMN number_of_series INTEGER NOT NULL DEFAULT 0;
ALTER TABLE patient ADD COLUMN number_of_instances INTEGER NOT NULL DEFAULT 0;
ALTER TABLE study ADD COLUMN number_of_series INTEGER NOT NULL DEFAULT 0;
ALTER TABLE study ADD COLUMN number_of_instances INTEGER NOT NULL DEFAULT 0;
ALTER TABLE study ADD COLUMN modalities_in_study TEXT NOT NULL DEFAULT '';
ALTER TABLE series ADD COLUMN number_of_instances INTEGER NOT NULL DEFAULT 0;

UPDATE series SET number_of_instances =
    (SELECT count(*) FROM instance WHERE instance.series_pk = series.pk);
UPDATE study SET
    number_of_series = (SELECT count(*) FROM series WHERE series.study_pk = study.pk),
    number_of_instances = (SELECT coalesce(sum(number_of_instances), 0) FROM series
                            WHERE series.study_pk = study.pk),
    modalities_in_study = {_modalities("study.pk")};
UPDATE patient SET
    number_of_studies = (SELECT count(*) FROM study WHERE study.patient_pk = patient.pk),
    number_of_series = (SELECT coalesce(sum(number_of_series), 0) FROM study
                         WHERE study.patient_pk = patient.pk),
    number_of_instances = (SELECT coalesce(sum(number_of_instances), 0) FROM study
                            WHERE study.patient_pk = patient.pk);

-- instance -> series, study, patient
CREATE TRIGGER instance_added AFTER INSERT ON instance BEGIN{_instance_counts("+", "NEW")}
END;
CREATE TRIGGER instance_removed AFTER DELETE ON instance BEGIN{_instance_counts("-", "OLD")}
END;
CREATE TRIGGER instance_moved AFTER UPDATE OF series_pk ON instance
WHEN OLD.series_pk IS NOT NEW.series_pk BEGIN{_instance_counts("-", "OLD")}{_instance_counts("+", "NEW")}
END;

-- series -> study, patient; and the study's modalities
CREATE TRIGGER series_added AFTER INSERT ON series BEGIN{_series_counts("+", "NEW")}
END;
CREATE TRIGGER series_removed AFTER DELETE ON series BEGIN{_series_counts("-", "OLD")}
END;
CREATE TRIGGER series_moved AFTER UPDATE OF study_pk ON series
WHEN OLD.study_pk IS NOT NEW.study_pk BEGIN{_series_counts("-", "OLD")}{_series_counts("+", "NEW")}
END;
CREATE TRIGGER series_modality_changed AFTER UPDATE OF modality ON series
WHEN OLD.modality IS NOT NEW.modality AND OLD.study_pk IS NEW.study_pk BEGIN
    UPDATE study SET modalities_in_study = {_modalities("NEW.study_pk")}
     WHERE pk = NEW.study_pk;
END;

-- study -> patient
CREATE TRIGGER study_added AFTER INSERT ON study BEGIN{_study_counts("+", "NEW")}
END;
CREATE TRIGGER study_removed AFTER DELETE ON study BEGIN{_study_counts("-", "OLD")}
END;
CREATE TRIGGER study_moved AFTER UPDATE OF patient_pk ON study
WHEN OLD.patient_pk IS NOT NEW.patient_pk BEGIN{_study_counts("-", "OLD")}{_study_counts("+", "NEW")}
END;
"""

MIGRATIONS: Final[list[str]] = [_V1, _V2]


class SchemaError(Exception):
    """The database cannot be brought to this program's schema (e.g. it is newer)."""


async def schema_version(conn: aiosqlite.Connection) -> int:
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def migrate(conn: aiosqlite.Connection, migrations: Sequence[str] = MIGRATIONS) -> int:
    """Apply the migrations the database lacks, each in its own transaction; return the version.

    `conn` must be in autocommit mode (isolation_level=None): the transactions are explicit.
    A migration that fails is rolled back and raises SchemaError, leaving the previous version.
    If another process migrated the same file concurrently, its work is recognised, not redone.
    """
    target = len(migrations)
    version = await schema_version(conn)
    while version < target:
        # executescript() runs the script verbatim, so BEGIN/COMMIT are ours; user_version is
        # stored in the database header and changes atomically with the rest of the transaction.
        try:
            await conn.executescript(
                f"BEGIN IMMEDIATE;\n{migrations[version]}\n;\n"
                f"PRAGMA user_version = {version + 1};\nCOMMIT;"
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                await conn.rollback()
            # A concurrent opener may have applied this step between our read and our BEGIN;
            # then the script failed ("table already exists") and the version has moved on.
            now = await schema_version(conn)
            if now <= version:
                raise SchemaError(
                    f"index migration to version {version + 1} failed: {exc}"
                ) from exc
            version = now
        else:
            version += 1
    if version > target:
        raise SchemaError(
            f"index schema version {version} is newer than this dicomd understands ({target})"
        )
    return version
