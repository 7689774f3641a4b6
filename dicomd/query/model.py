"""The Query/Retrieve information models as the index implements them (PS3.4 C.6).

Owns: the three FIND models (Patient Root, Study Root, Patient/Study Only), their levels and unique
keys, and for every key we know: the entity it describes, its VR, how it is matched, and where its
value lives: an index column (schema.py; the Number of ... Related ... keys and Modalities in Study
are columns the index's triggers keep up to date), an SQL expression computed per entity (SOP
Classes in Study), or nowhere, in which case the value is read from the attributes kept with the
newest instance of the entity (record.py `attributes`).
Must not know: SQL execution, sockets, pydicom datasets.

The SQL snippets refer to the tables by fixed aliases: patient p, study st, series se, instance i;
the subqueries use their own aliases (s2, r2, i2) so that they can be correlated with any of them.
Modalities in Study is returned from its column but matched against the series themselves (any
series of the study with the modality), which the (modality, study_pk) index answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Final

__all__ = [
    "ALIASES",
    "DATE_TIME_PAIRS",
    "KEYS",
    "MODELS",
    "PATIENT_ROOT",
    "PATIENT_STUDY_ONLY",
    "REPRESENTATIVE",
    "REQUEST_ITEM_KEYS",
    "STUDY_ROOT",
    "TABLES",
    "UNIQUE_KEYS",
    "InformationModel",
    "KeyDef",
    "Level",
    "Match",
]


class Level(IntEnum):
    """Query/Retrieve Level (0008,0052), top to bottom."""

    PATIENT = 0
    STUDY = 1
    SERIES = 2
    IMAGE = 3


class Match(Enum):
    """How a key's value is matched (PS3.4 C.2.2.2) against its column."""

    TEXT = "text"  # single value (case-sensitive) and wildcard
    PN = "pn"  # like TEXT, case-insensitive by configuration, component groups
    UID = "uid"  # single value and list of UIDs
    DATE = "date"  # single value and range (DA)
    TIME = "time"  # single value and range (TM)
    INTEGER = "integer"  # single value on an INTEGER column (IS, US)
    DECIMAL = "decimal"  # single value compared as a number (DS)
    MODALITIES = "modalities"  # Modalities in Study: any series of the study has the modality
    SOP_CLASSES = "sop_classes"  # SOP Classes in Study: any instance of the study has the class
    ITEMS = "items"  # Request Attributes Sequence: sequence matching on its indexed item keys
    NONE = "none"  # not matched (a count, a constant): a value given for it is ignored (FF01)


@dataclass(frozen=True, slots=True)
class KeyDef:
    tag: int
    keyword: str
    vr: str
    level: Level  # the entity the attribute describes
    match: Match
    column: str | None = None  # in the level's table
    sql: str | None = None  # a computed value (column is None)
    multi: bool = False  # the column holds several values joined by "\\"


@dataclass(frozen=True, slots=True)
class InformationModel:
    name: str
    sop_class_uid: str
    levels: tuple[Level, ...]

    def level_of(self, key: KeyDef) -> Level:
        """The level a key belongs to in this model: Study Root keeps patient keys at STUDY."""
        return max(key.level, self.levels[0])


PATIENT_ROOT: Final = InformationModel(
    "Patient Root",
    "1.2.840.10008.5.1.4.1.2.1.1",
    (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
)
STUDY_ROOT: Final = InformationModel(
    "Study Root", "1.2.840.10008.5.1.4.1.2.2.1", (Level.STUDY, Level.SERIES, Level.IMAGE)
)
# Retired in 2006 (PS3.4 C.6.3), still sent by old equipment; cheap to keep as a subset.
PATIENT_STUDY_ONLY: Final = InformationModel(
    "Patient/Study Only", "1.2.840.10008.5.1.4.1.2.3.1", (Level.PATIENT, Level.STUDY)
)
MODELS: Final = {m.sop_class_uid: m for m in (PATIENT_ROOT, STUDY_ROOT, PATIENT_STUDY_ONLY)}

# level -> (table, alias)
TABLES: Final = {
    Level.PATIENT: ("patient", "p"),
    Level.STUDY: ("study", "st"),
    Level.SERIES: ("series", "se"),
    Level.IMAGE: ("instance", "i"),
}
ALIASES: Final = {level: alias for level, (_table, alias) in TABLES.items()}

# PS3.4 C.6.1.1.2-C.6.1.1.5: one unique key per level.
UNIQUE_KEYS: Final = {
    Level.PATIENT: 0x00100020,  # Patient ID
    Level.STUDY: 0x0020000D,  # Study Instance UID
    Level.SERIES: 0x0020000E,  # Series Instance UID
    Level.IMAGE: 0x00080018,  # SOP Instance UID
}

# The pk of the newest instance of each level's entity: whose kept attributes answer the keys that
# have no column. Newest, because the index refreshes an entity's columns from its newest instance.
REPRESENTATIVE: Final = {
    Level.PATIENT: "(SELECT max(i2.pk) FROM study s2 JOIN series r2 ON r2.study_pk = s2.pk"
    " JOIN instance i2 ON i2.series_pk = r2.pk WHERE s2.patient_pk = p.pk)",
    Level.STUDY: "(SELECT max(i2.pk) FROM series r2 JOIN instance i2 ON i2.series_pk = r2.pk"
    " WHERE r2.study_pk = st.pk)",
    Level.SERIES: "(SELECT max(i2.pk) FROM instance i2 WHERE i2.series_pk = se.pk)",
    Level.IMAGE: "i.pk",
}

_P, _ST, _SE, _I = Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE
_T, _PN, _UI, _DA, _TM = Match.TEXT, Match.PN, Match.UID, Match.DATE, Match.TIME


def _distinct(column: str, source: str) -> str:
    # The distinct non-empty values, sorted, joined with the value delimiter.
    return (
        f"(SELECT group_concat(v, '\\') FROM (SELECT DISTINCT {column} AS v FROM {source}"
        f" AND {column} <> '' ORDER BY 1))"
    )


_KEYS: Final = (
    # Patient (C.6.1.1.2)
    KeyDef(0x00100010, "PatientName", "PN", _P, _PN, "patient_name"),
    KeyDef(0x00100020, "PatientID", "LO", _P, _T, "patient_id"),
    KeyDef(0x00100021, "IssuerOfPatientID", "LO", _P, _T, "issuer_of_patient_id"),
    KeyDef(0x00100030, "PatientBirthDate", "DA", _P, _DA, "patient_birth_date"),
    KeyDef(0x00100032, "PatientBirthTime", "TM", _P, _TM, "patient_birth_time"),
    KeyDef(0x00100040, "PatientSex", "CS", _P, _T, "patient_sex"),
    KeyDef(0x00101000, "OtherPatientIDs", "LO", _P, _T, "other_patient_ids", multi=True),
    KeyDef(0x00102160, "EthnicGroup", "SH", _P, _T, "ethnic_group"),
    KeyDef(0x00104000, "PatientComments", "LT", _P, _T, "patient_comments"),
    KeyDef(
        0x00201200,
        "NumberOfPatientRelatedStudies",
        "IS",
        _P,
        Match.NONE,
        "number_of_studies",
    ),
    KeyDef(
        0x00201202,
        "NumberOfPatientRelatedSeries",
        "IS",
        _P,
        Match.NONE,
        "number_of_series",
    ),
    KeyDef(
        0x00201204,
        "NumberOfPatientRelatedInstances",
        "IS",
        _P,
        Match.NONE,
        "number_of_instances",
    ),
    # Study (C.6.1.1.3)
    KeyDef(0x00080020, "StudyDate", "DA", _ST, _DA, "study_date"),
    KeyDef(0x00080030, "StudyTime", "TM", _ST, _TM, "study_time"),
    KeyDef(0x00080050, "AccessionNumber", "SH", _ST, _T, "accession_number"),
    KeyDef(0x00200010, "StudyID", "SH", _ST, _T, "study_id"),
    KeyDef(0x0020000D, "StudyInstanceUID", "UI", _ST, _UI, "study_instance_uid"),
    KeyDef(0x00080090, "ReferringPhysicianName", "PN", _ST, _PN, "referring_physician_name"),
    KeyDef(0x00081030, "StudyDescription", "LO", _ST, _T, "study_description"),
    KeyDef(
        0x00081060,
        "NameOfPhysiciansReadingStudy",
        "PN",
        _ST,
        _PN,
        "name_of_physicians_reading_study",
        multi=True,
    ),
    KeyDef(
        0x00081080,
        "AdmittingDiagnosesDescription",
        "LO",
        _ST,
        _T,
        "admitting_diagnoses_description",
        multi=True,
    ),
    KeyDef(0x00101010, "PatientAge", "AS", _ST, _T, "patient_age"),
    KeyDef(0x00101020, "PatientSize", "DS", _ST, Match.DECIMAL, "patient_size"),
    KeyDef(0x00101030, "PatientWeight", "DS", _ST, Match.DECIMAL, "patient_weight"),
    KeyDef(
        0x00080061,
        "ModalitiesInStudy",
        "CS",
        _ST,
        Match.MODALITIES,
        "modalities_in_study",
        multi=True,
    ),
    KeyDef(
        0x00080062,
        "SOPClassesInStudy",
        "UI",
        _ST,
        Match.SOP_CLASSES,
        sql=_distinct(
            "i2.sop_class_uid",
            "series r2 JOIN instance i2 ON i2.series_pk = r2.pk WHERE r2.study_pk = st.pk",
        ),
    ),
    KeyDef(
        0x00201206,
        "NumberOfStudyRelatedSeries",
        "IS",
        _ST,
        Match.NONE,
        "number_of_series",
    ),
    KeyDef(
        0x00201208,
        "NumberOfStudyRelatedInstances",
        "IS",
        _ST,
        Match.NONE,
        "number_of_instances",
    ),
    # Series (C.6.1.1.4)
    KeyDef(0x00080060, "Modality", "CS", _SE, _T, "modality"),
    KeyDef(0x00200011, "SeriesNumber", "IS", _SE, Match.INTEGER, "series_number"),
    KeyDef(0x0020000E, "SeriesInstanceUID", "UI", _SE, _UI, "series_instance_uid"),
    KeyDef(0x0008103E, "SeriesDescription", "LO", _SE, _T, "series_description"),
    KeyDef(0x00080021, "SeriesDate", "DA", _SE, _DA, "series_date"),
    KeyDef(0x00080031, "SeriesTime", "TM", _SE, _TM, "series_time"),
    KeyDef(0x00180015, "BodyPartExamined", "CS", _SE, _T, "body_part_examined"),
    KeyDef(
        0x00081050,
        "PerformingPhysicianName",
        "PN",
        _SE,
        _PN,
        "performing_physician_name",
        multi=True,
    ),
    KeyDef(0x00181030, "ProtocolName", "LO", _SE, _T, "protocol_name"),
    KeyDef(0x00081070, "OperatorsName", "PN", _SE, _PN, "operators_name", multi=True),
    KeyDef(0x00200060, "Laterality", "CS", _SE, _T, "laterality"),
    KeyDef(0x00400275, "RequestAttributesSequence", "SQ", _SE, Match.ITEMS, "request_attributes"),
    KeyDef(
        0x00201209,
        "NumberOfSeriesRelatedInstances",
        "IS",
        _SE,
        Match.NONE,
        "number_of_instances",
    ),
    # Composite object instance (C.6.1.1.5)
    KeyDef(0x00080018, "SOPInstanceUID", "UI", _I, _UI, "sop_instance_uid"),
    KeyDef(0x00080016, "SOPClassUID", "UI", _I, _UI, "sop_class_uid"),
    KeyDef(0x00200013, "InstanceNumber", "IS", _I, Match.INTEGER, "instance_number"),
    KeyDef(0x00080023, "ContentDate", "DA", _I, _DA, "content_date"),
    KeyDef(0x00080033, "ContentTime", "TM", _I, _TM, "content_time"),
    KeyDef(0x00080022, "AcquisitionDate", "DA", _I, _DA, "acquisition_date"),
    KeyDef(0x00080032, "AcquisitionTime", "TM", _I, _TM, "acquisition_time"),
    KeyDef(0x00280008, "NumberOfFrames", "IS", _I, Match.INTEGER, "number_of_frames"),
    KeyDef(0x00280010, "Rows", "US", _I, Match.INTEGER, "rows"),
    KeyDef(0x00280011, "Columns", "US", _I, Match.INTEGER, "columns"),
    KeyDef(0x00080008, "ImageType", "CS", _I, _T, "image_type", multi=True),
    # The transfer syntax the instance is stored in, hence the one a retrieve offers first.
    KeyDef(0x00083002, "AvailableTransferSyntaxUID", "UI", _I, _UI, "transfer_syntax_uid"),
)
KEYS: Final = {k.tag: k for k in _KEYS}

# Date and time keys matched as one date-time when combined date-time matching is negotiated
# (PS3.4 C.2.2.2.5.1): date tag -> time tag.
DATE_TIME_PAIRS: Final = {
    0x00100030: 0x00100032,  # Patient's Birth Date / Time
    0x00080020: 0x00080030,  # Study Date / Time
    0x00080021: 0x00080031,  # Series Date / Time
    0x00080023: 0x00080033,  # Content Date / Time
    0x00080022: 0x00080032,  # Acquisition Date / Time
}

# Request Attributes Sequence: the item keys the request_attributes column indexes, in its order.
REQUEST_ITEM_KEYS: Final = (0x00401001, 0x00400009)  # Requested Procedure ID, SPS ID
