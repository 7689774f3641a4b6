"""A synthetic archive for the C-FIND benchmark: written straight into dicomd's index, or as files.

`plan_archive()` draws a deterministic archive (a function of its arguments): patients with names
from lists that have a Latin-1 (ISO_IR 100) and a Chinese (ISO_IR 192, alphabetic=ideographic)
share, 1-5 studies each over five years (2020-2024), a study type per study (CR, CT, MR, US, MG:
their series and typical series sizes, an SR report series now and then), and exactly the number
of instances asked for, spread over the series by their type (the big image series are scaled to
hit the total).

`build_index()` writes it into a new SQLite file with the schema of dicomd/storage/schema.py
(its MIGRATIONS, user_version set as dicomd.storage.schema.migrate would), one row per patient,
study, series and instance, with the values `record_from_dataset()` would have extracted from such
files (PN as "ALPHABETIC=IDEOGRAPHIC", multi-values joined by "\\", the file's relpath in
FileStore's layout) and each instance's top-level attributes as the raw Explicit VR Little Endian
bytes the store keeps. Plain sqlite3 executemany in one transaction, no fsync: a million instances
take about a minute. The files the rows name do not exist (C-FIND never opens them).

`write_files()` writes the same kind of archive as small DICOM files with tests/dicomgen.py, for
loading into every server with storescu.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

from pydicom import uid as uids

from dicomd.storage.files import FileStore
from dicomd.storage.schema import INSTANCE_COLUMNS, MIGRATIONS
from tests import dicomgen

# Bump when the generated content changes: the cached index of an older version is not reused.
GENERATOR_VERSION: Final = 1
FIRST_DAY: Final = date(2020, 1, 1)
DAYS: Final = (date(2025, 1, 1) - FIRST_DAY).days
EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"

# -- names --------------------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_ASCII_SURNAMES: Final = _words(
    "SMITH JOHNSON WILLIAMS BROWN JONES MILLER DAVIS WILSON ANDERSON TAYLOR THOMAS MOORE MARTIN "
    "JACKSON THOMPSON WHITE HARRIS CLARK LEWIS ROBINSON WALKER YOUNG ALLEN KING WRIGHT SCOTT GREEN "
    "BAKER ADAMS NELSON HILL CAMPBELL MITCHELL ROBERTS CARTER PHILLIPS EVANS TURNER PARKER "
    "COLLINS EDWARDS STEWART MORRIS MURPHY COOK ROGERS MORGAN COOPER REED BAILEY BELL KELLY "
    "HOWARD WARD COX WOOD WATSON BROOKS BENNETT GRAY HUGHES PRICE SANDERS MYERS ROSS FOSTER "
    "SCHMIDT SCHNEIDER FISCHER WEBER MEYER WAGNER BECKER HOFFMANN KOCH BAUER RICHTER KLEIN WOLF "
    "NEUMANN SCHWARZ DUBOIS DURAND LEROY MOREAU SIMON LAURENT MICHEL GARCIA ROSSI RUSSO FERRARI "
    "ESPOSITO BIANCHI ROMANO COLOMBO JANSEN VISSER NOWAK KOWALSKI O'BRIEN"
)
_ASCII_GIVEN: Final = _words(
    "JOHN MARY JAMES PATRICIA ROBERT JENNIFER MICHAEL LINDA WILLIAM ELIZABETH DAVID BARBARA "
    "RICHARD SUSAN JOSEPH JESSICA THOMAS SARAH PETER ANNA HANS KLAUS PIERRE MARIE GIULIA MARCO "
    "JAN EVA LUCAS EMMA"
)
_LATIN1_SURNAMES: Final = _words(
    "MÜLLER SCHÄFER KÖHLER JÄGER KRÜGER GÖTZ BÖHM LEFÈVRE FRANÇOIS GÉRARD MÉNARD PÉREZ GÓMEZ "
    "JIMÉNEZ MUÑOZ NÚÑEZ PEÑA GONÇALVES CONCEIÇÃO ARAÚJO SØRENSEN JØRGENSEN HÅKANSSON ÅBERG "
    "JÖNSSON STRÖM BJÖRK"
)
_LATIN1_GIVEN: Final = _words(
    "JÜRGEN JOSÉ MARÍA FRANÇOISE HÉLÈNE SØREN BJÖRN ÅSA RENÉ INÉS JOÃO ANDRÉ CÉLINE MÅRTEN "
    "ZOË GRÉGOIRE"
)
# Pinyin, characters, relative frequency (the twenty most common Chinese surnames).
_CHINESE_SURNAMES: Final = (
    ("WANG", "王", 7.1),
    ("LI", "李", 7.0),
    ("ZHANG", "张", 6.7),
    ("LIU", "刘", 5.4),
    ("CHEN", "陈", 4.5),
    ("YANG", "杨", 3.1),
    ("HUANG", "黄", 2.2),
    ("ZHAO", "赵", 2.0),
    ("WU", "吴", 2.0),
    ("ZHOU", "周", 1.9),
    ("XU", "徐", 1.5),
    ("SUN", "孙", 1.5),
    ("MA", "马", 1.3),
    ("ZHU", "朱", 1.3),
    ("HU", "胡", 1.3),
    ("GUO", "郭", 1.2),
    ("HE", "何", 1.2),
    ("GAO", "高", 1.1),
    ("LIN", "林", 1.1),
    ("LUO", "罗", 1.1),
)
_CHINESE_GIVEN: Final = (
    ("FANG", "芳"),
    ("WEI", "伟"),
    ("NA", "娜"),
    ("MIN", "敏"),
    ("JING", "静"),
    ("LEI", "磊"),
    ("QIANG", "强"),
    ("JUN", "军"),
    ("YONG", "勇"),
    ("YAN", "艳"),
    ("JIE", "杰"),
    ("TAO", "涛"),
    ("MING", "明"),
    ("CHAO", "超"),
    ("XIUYING", "秀英"),
    ("HUI", "慧"),
    ("XIN", "欣"),
    ("HAO", "浩"),
    ("YU", "宇"),
    ("LING", "玲"),
)
CHINESE_SHARE: Final = 0.20
LATIN1_SHARE: Final = 0.10
_PHYSICIANS: Final = ("HOUSE^GREGORY^^DR", "GREY^MEREDITH^^DR", "KILDARE^JAMES^^DR", "")


def _name(rng: random.Random) -> tuple[str, str]:
    """(PN value as record_from_dataset keeps it, Specific Character Set)."""
    draw = rng.random()
    if draw < CHINESE_SHARE:
        surname, han, _ = rng.choices(_CHINESE_SURNAMES, [w for *_, w in _CHINESE_SURNAMES])[0]
        given, given_han = rng.choice(_CHINESE_GIVEN)
        return f"{surname}^{given}={han}^{given_han}", "ISO_IR 192"
    if draw < CHINESE_SHARE + LATIN1_SHARE:
        surname = rng.choice(_LATIN1_SURNAMES)
        given = rng.choice(_LATIN1_GIVEN + _ASCII_GIVEN)
        return f"{surname}^{given}", "ISO_IR 100"
    return f"{rng.choice(_ASCII_SURNAMES)}^{rng.choice(_ASCII_GIVEN)}", ""


# -- study types --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _SeriesType:
    description: str
    sop_class: str
    low: int  # instances, before scaling
    high: int
    scaled: bool  # a bulk image series, scaled to reach the archive's total


@dataclass(frozen=True, slots=True)
class _StudyType:
    modality: str
    weight: float
    descriptions: tuple[str, ...]
    body_parts: tuple[str, ...]
    series: tuple[_SeriesType, ...]
    optional: int  # how many of the series after the first are drawn (0: all)
    rows: int
    columns: int
    size: int  # bytes of a file


_CT, _MR = str(uids.CTImageStorage), str(uids.MRImageStorage)
_DX = str(uids.DigitalXRayImageStorageForPresentation)
_MG = str(uids.DigitalMammographyXRayImageStorageForPresentation)
_US = str(uids.UltrasoundMultiFrameImageStorage)
_SR = str(uids.BasicTextSRStorage)
_STUDY_TYPES: Final = (
    _StudyType(
        "DX",
        0.30,
        ("XR CHEST 2 VIEWS", "XR HAND LEFT", "XR KNEE RIGHT", "XR SPINE LUMBAR"),
        ("CHEST", "HAND", "KNEE", "LSPINE"),
        (_SeriesType("PA", _DX, 1, 1, False), _SeriesType("LATERAL", _DX, 1, 2, False)),
        0,
        2048,
        2048,
        8_400_000,
    ),
    _StudyType(
        "CT",
        0.25,
        ("CT CHEST WITH CONTRAST", "CT ABDOMEN PELVIS", "CT HEAD W/O CONTRAST", "CT ANGIO"),
        ("CHEST", "ABDOMEN", "HEAD", "CHEST"),
        (
            _SeriesType("SCOUT", _CT, 1, 3, False),
            _SeriesType("AXIAL 1.0MM", _CT, 150, 600, True),
            _SeriesType("AXIAL 5.0MM", _CT, 30, 120, True),
            _SeriesType("CORONAL MPR", _CT, 40, 150, True),
            _SeriesType("SAGITTAL MPR", _CT, 40, 150, True),
        ),
        3,
        512,
        512,
        526_000,
    ),
    _StudyType(
        "MR",
        0.15,
        ("MR BRAIN", "MR KNEE LEFT", "MR LUMBAR SPINE", "MR SHOULDER RIGHT"),
        ("BRAIN", "KNEE", "LSPINE", "SHOULDER"),
        (
            _SeriesType("LOCALIZER", _MR, 3, 9, False),
            _SeriesType("T1 SAG", _MR, 20, 40, True),
            _SeriesType("T2 AX", _MR, 20, 40, True),
            _SeriesType("FLAIR AX", _MR, 20, 40, True),
            _SeriesType("DWI", _MR, 40, 120, True),
            _SeriesType("T1 POST", _MR, 100, 200, True),
        ),
        4,
        256,
        256,
        133_000,
    ),
    _StudyType(
        "US",
        0.20,
        ("US ABDOMEN", "US THYROID", "US PELVIS"),
        ("ABDOMEN", "NECK", "PELVIS"),
        (_SeriesType("", _US, 8, 40, True),),
        0,
        480,
        640,
        930_000,
    ),
    _StudyType(
        "MG",
        0.10,
        ("MG SCREENING BILATERAL", "MG DIAGNOSTIC LEFT"),
        ("BREAST", "BREAST"),
        (_SeriesType("", _MG, 4, 4, False),),
        0,
        3328,
        2560,
        17_000_000,
    ),
)
_REPORT_SERIES: Final = _SeriesType("REPORT", _SR, 1, 1, False)
REPORT_SHARE: Final = 0.3


# -- the archive --------------------------------------------------------------------------------


@dataclass(slots=True)
class Series:
    uid: str
    number: int
    modality: str
    description: str
    sop_class: str
    body_part: str
    instances: int
    scaled: bool


@dataclass(slots=True)
class Study:
    uid: str
    date: str
    time: str
    accession: str
    study_id: str
    description: str
    referring: str
    type: _StudyType
    age: str
    series: list[Series] = field(default_factory=list)


@dataclass(slots=True)
class Patient:
    pk: int
    patient_id: str
    name: str
    charset: str
    birth_date: str
    sex: str
    studies: list[Study] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Archive:
    patients: list[Patient]
    instances: int
    studies: int
    series: int


def _uid(rng: random.Random) -> str:
    # A UUID-derived UID (PS3.5 B.2): "2.25." and a 128-bit integer.
    return f"2.25.{rng.getrandbits(128)}"


def plan_archive(patients: int, instances: int, seed: int = 0) -> Archive:
    """The archive's patients, studies and series, with exactly `instances` instances."""
    rng = random.Random(f"dicomd-bench-find {seed}")
    people: list[Patient] = []
    all_series: list[Series] = []
    accession = 0
    for n in range(patients):
        name, charset = _name(rng)
        birth = FIRST_DAY - timedelta(days=rng.randrange(365 * 2, 365 * 95))
        patient = Patient(
            n + 1, f"P{n + 1:07d}", name, charset, birth.strftime("%Y%m%d"), rng.choice("MFFMO")
        )
        for _ in range(rng.randint(1, 5)):
            kind = rng.choices(_STUDY_TYPES, [t.weight for t in _STUDY_TYPES])[0]
            day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
            which = rng.randrange(len(kind.descriptions))
            accession += 1
            study = Study(
                uid=_uid(rng),
                date=day.strftime("%Y%m%d"),
                time=f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}",
                accession=f"A{accession:09d}",
                study_id=str(rng.randrange(1, 100_000)),
                description=kind.descriptions[which],
                referring=rng.choice(_PHYSICIANS),
                type=kind,
                age=f"{(day - birth).days // 365:03d}Y",
            )
            chosen = list(kind.series)
            if kind.optional:
                chosen = [chosen[0], *rng.sample(chosen[1:], kind.optional)]
            if rng.random() < REPORT_SHARE:
                chosen.append(_REPORT_SERIES)
            for number, series_type in enumerate(chosen, start=1):
                series = Series(
                    uid=_uid(rng),
                    number=number,
                    modality="SR" if series_type.sop_class == _SR else kind.modality,
                    description=series_type.description or kind.descriptions[which],
                    sop_class=series_type.sop_class,
                    body_part=kind.body_parts[which],
                    instances=rng.randint(series_type.low, series_type.high),
                    scaled=series_type.scaled,
                )
                study.series.append(series)
                all_series.append(series)
            patient.studies.append(study)
        people.append(patient)
    _scale(all_series, instances)
    total = sum(s.instances for s in all_series)
    assert total == instances, (total, instances)
    studies = sum(len(p.studies) for p in people)
    return Archive(people, instances, studies, len(all_series))


def _scale(series: list[Series], target: int) -> None:
    """Scale the bulk image series so that the archive holds exactly `target` instances."""
    fixed = sum(s.instances for s in series if not s.scaled)
    scaled = [s for s in series if s.scaled]
    room = target - fixed
    if room < len(scaled):
        raise ValueError(f"{target} instances is too few for {len(series)} series")
    factor = room / sum(s.instances for s in scaled)
    for s in scaled:
        s.instances = max(1, round(s.instances * factor))
    # Rounding leaves a small difference: take it from (or give it to) the largest series.
    by_size = sorted(scaled, key=lambda s: s.instances, reverse=True)
    difference = target - fixed - sum(s.instances for s in scaled)
    i = 0
    while difference:
        s = by_size[i % len(by_size)]
        step = 1 if difference > 0 else -1
        if s.instances + step >= 1:
            s.instances += step
            difference -= step
        i += 1


# -- raw attributes (Explicit VR Little Endian, as storage/scan.py keeps them) -------------------

_LONG_VRS: Final = frozenset({"OB", "OW", "SQ", "UN", "UT", "UC", "UR"})
_PYTHON_CODEC: Final = {"": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def _element(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    group, element = tag >> 16, tag & 0xFFFF
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xL", group, element, vr.encode(), len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def _text(tag: int, vr: str, value: str, codec: str = "ascii") -> bytes:
    return _element(tag, vr, value.encode(codec))


def _us(tag: int, value: int) -> bytes:
    return _element(tag, "US", struct.pack("<H", value))


def _attribute_parts(patient: Patient, study: Study, series: Series) -> tuple[bytes, bytes, bytes]:
    """The series' elements before SOP Instance UID, between it and Instance Number, after."""
    codec = _PYTHON_CODEC[patient.charset]
    kind = study.type
    head = b""
    if patient.charset:
        head += _text(0x00080005, "CS", patient.charset)
    head += _text(0x00080008, "CS", "ORIGINAL\\PRIMARY\\AXIAL")
    head += _text(0x00080016, "UI", series.sop_class)
    middle = b"".join(
        [
            _text(0x00080020, "DA", study.date),
            _text(0x00080021, "DA", study.date),
            _text(0x00080023, "DA", study.date),
            _text(0x00080030, "TM", study.time),
            _text(0x00080031, "TM", study.time),
            _text(0x00080033, "TM", study.time),
            _text(0x00080050, "SH", study.accession),
            _text(0x00080060, "CS", series.modality),
            _text(0x00080070, "LO", "dicomd bench"),
            _text(0x00080080, "LO", "GENERAL HOSPITAL"),
            _text(0x00080090, "PN", study.referring),
            _text(0x00081010, "SH", f"{series.modality}01"),
            _text(0x00081030, "LO", study.description),
            _text(0x0008103E, "LO", series.description),
            _text(0x00081090, "LO", "MODEL 1"),
            _text(0x00100010, "PN", patient.name, codec),
            _text(0x00100020, "LO", patient.patient_id),
            _text(0x00100030, "DA", patient.birth_date),
            _text(0x00100040, "CS", patient.sex),
            _text(0x00101010, "AS", study.age),
            _text(0x00180015, "CS", series.body_part),
            _text(0x00181030, "LO", series.description),
            _text(0x0020000D, "UI", study.uid),
            _text(0x0020000E, "UI", series.uid),
            _text(0x00200010, "SH", study.study_id),
            _text(0x00200011, "IS", str(series.number)),
        ]
    )
    tail = b""
    if series.modality != "SR":
        tail = b"".join(
            [
                _us(0x00280002, 1),
                _text(0x00280004, "CS", "MONOCHROME2"),
                _us(0x00280010, kind.rows),
                _us(0x00280011, kind.columns),
                _us(0x00280100, 16),
                _us(0x00280101, 12),
                _us(0x00280102, 11),
                _us(0x00280103, 0),
            ]
        )
    return head, middle, tail


# -- the index ----------------------------------------------------------------------------------

_PATIENT_SQL: Final = (
    "INSERT INTO patient (pk, patient_id, issuer_of_patient_id, patient_name, patient_birth_date,"
    " patient_birth_time, patient_sex, other_patient_ids, ethnic_group, patient_comments)"
    " VALUES (?, ?, '', ?, ?, '', ?, '', '', '')"
)
_STUDY_SQL: Final = (
    "INSERT INTO study (pk, patient_pk, study_instance_uid, study_date, study_time,"
    " accession_number, study_id, study_description, referring_physician_name,"
    " name_of_physicians_reading_study, admitting_diagnoses_description, patient_age,"
    " patient_size, patient_weight) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', '', ?, '', '')"
)
_SERIES_SQL: Final = (
    "INSERT INTO series (pk, study_pk, series_instance_uid, modality, series_number,"
    " series_description, series_date, series_time, body_part_examined,"
    " performing_physician_name, protocol_name, operators_name, laterality, request_attributes)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '', ?, '', '', '')"
)
_INSTANCE_COLUMNS: Final = ("pk", "series_pk", *INSTANCE_COLUMNS)
_INSTANCE_SQL: Final = (
    f"INSERT INTO instance ({', '.join(_INSTANCE_COLUMNS)})"
    f" VALUES ({', '.join('?' * len(_INSTANCE_COLUMNS))})"
)
_SLOT: Final = {name: i for i, name in enumerate(_INSTANCE_COLUMNS)}
_CHUNK: Final = 20_000


def schema_key() -> str:
    """A short digest of the schema this dicomd creates: a cached index must match it."""
    return hashlib.sha256("\n".join(MIGRATIONS).encode()).hexdigest()[:10]


def _instance_rows(archive: Archive) -> Iterator[tuple[object, ...]]:
    pk = 0
    series_pk = 0
    relpath_for = FileStore.relpath_for
    for patient in archive.patients:
        for study in patient.studies:
            received = f"{study.date[:4]}-{study.date[4:6]}-{study.date[6:]}T{study.time[:2]}:"
            received += f"{study.time[2:4]}:{study.time[4:6]}.000000+00:00"
            for series in study.series:
                series_pk += 1
                head, middle, tail = _attribute_parts(patient, study, series)
                image = series.modality != "SR"
                row: list[object] = [None] * len(_INSTANCE_COLUMNS)
                fixed = {
                    "series_pk": series_pk,
                    "sop_class_uid": series.sop_class,
                    "content_date": study.date,
                    "content_time": study.time,
                    "acquisition_date": study.date if image else "",
                    "acquisition_time": study.time if image else "",
                    "number_of_frames": None,
                    "rows": study.type.rows if image else None,
                    "columns": study.type.columns if image else None,
                    "image_type": "ORIGINAL\\PRIMARY\\AXIAL",
                    "transfer_syntax_uid": EXPLICIT_VR_LE,
                    "size": study.type.size if image else 6_000,
                    "received_at": received,
                    "calling_ae_title": f"{series.modality}01",
                    "specific_character_set": patient.charset,
                    "attributes_transfer_syntax": EXPLICIT_VR_LE,
                }
                for name, value in fixed.items():
                    row[_SLOT[name]] = value
                for number in range(1, series.instances + 1):
                    pk += 1
                    # The series' UID and a counter: unique, and cheaper than drawing 128 bits.
                    uid = f"{series.uid}.{number}"
                    row[_SLOT["pk"]] = pk
                    row[_SLOT["sop_instance_uid"]] = uid
                    row[_SLOT["instance_number"]] = number
                    row[_SLOT["relpath"]] = relpath_for(uid)
                    # Stands for the file's SHA-256 (the files do not exist).
                    row[_SLOT["sha256"]] = hashlib.sha256(uid.encode() + b"#").hexdigest()
                    row[_SLOT["attributes"]] = b"".join(
                        [
                            head,
                            _text(0x00080018, "UI", uid),
                            middle,
                            _text(0x00200013, "IS", str(number)),
                            tail,
                        ]
                    )
                    yield tuple(row)


def _chunks(rows: Iterator[tuple[object, ...]]) -> Iterator[list[tuple[object, ...]]]:
    chunk: list[tuple[object, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build_index(path: Path, archive: Archive) -> None:
    """Write `archive` into a new index database at `path` (replaced atomically when done)."""
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)
    conn = sqlite3.connect(part, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")  # KiB: the indexes' pages stay in memory
        for version, script in enumerate(MIGRATIONS):
            conn.executescript(
                f"BEGIN;\n{script}\n;\nPRAGMA user_version = {version + 1};\nCOMMIT;"
            )
        conn.execute("BEGIN")
        conn.executemany(
            _PATIENT_SQL,
            ((p.pk, p.patient_id, p.name, p.birth_date, p.sex) for p in archive.patients),
        )
        conn.executemany(_STUDY_SQL, _study_rows(archive))
        conn.executemany(_SERIES_SQL, _series_rows(archive))
        for chunk in _chunks(_instance_rows(archive)):
            conn.executemany(_INSTANCE_SQL, chunk)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")  # what dicomd would set at its first open
    finally:
        conn.close()
    os.replace(part, path)


def _study_rows(archive: Archive) -> Iterator[tuple[object, ...]]:
    pk = 0
    for patient in archive.patients:
        for s in patient.studies:
            pk += 1
            yield (
                *(pk, patient.pk, s.uid, s.date, s.time, s.accession, s.study_id),
                *(s.description, s.referring, s.age),
            )


def _series_rows(archive: Archive) -> Iterator[tuple[object, ...]]:
    study_pk = series_pk = 0
    for patient in archive.patients:
        for study in patient.studies:
            study_pk += 1
            for s in study.series:
                series_pk += 1
                yield (
                    *(series_pk, study_pk, s.uid, s.modality, s.number, s.description),
                    *(study.date, study.time, s.body_part, s.description),
                )


# -- files (the small set loaded into every server) ---------------------------------------------

_SMALL_SIZE: Final = 2048  # bytes of pixel data per file: the query benchmark needs headers only


def write_files(directory: Path, archive: Archive) -> list[Path]:
    """One small DICOM file per instance of `archive` (tests/dicomgen.py), in one directory each
    patient; the headers carry the archive's values."""
    paths: list[Path] = []
    for patient in archive.patients:
        folder = directory / patient.patient_id
        folder.mkdir(parents=True, exist_ok=True)
        for study in patient.studies:
            for series in study.series:
                for number in range(1, series.instances + 1):
                    path = folder / f"{len(paths) + 1:06d}.dcm"
                    image = series.modality != "SR"
                    extra: dict[str, Any] = {}
                    if image:
                        extra["BodyPartExamined"] = series.body_part
                    dicomgen.write_instance(
                        path,
                        sop_class_uid=series.sop_class,
                        transfer_syntax_uid=EXPLICIT_VR_LE,
                        size_bytes=_SMALL_SIZE if image else 1000,
                        patient_name=patient.name,
                        charset=patient.charset or None,
                        study_uid=study.uid,
                        series_uid=series.uid,
                        sop_instance_uid=f"{series.uid}.{number}",
                        seed=len(paths),
                        PatientID=patient.patient_id,
                        PatientBirthDate=patient.birth_date,
                        PatientSex=patient.sex,
                        StudyDate=study.date,
                        SeriesDate=study.date,
                        ContentDate=study.date,
                        StudyTime=study.time,
                        SeriesTime=study.time,
                        AccessionNumber=study.accession,
                        StudyID=study.study_id,
                        StudyDescription=study.description,
                        ReferringPhysicianName=study.referring,
                        SeriesDescription=series.description,
                        SeriesNumber=series.number,
                        InstanceNumber=number,
                        **extra,
                    )
                    paths.append(path)
    return paths


def months() -> list[tuple[str, str]]:
    """Every calendar month the study dates span, as (first day, last day) DA values."""
    out = []
    first = FIRST_DAY
    while first < FIRST_DAY + timedelta(days=DAYS):
        following = (first + timedelta(days=32)).replace(day=1)
        last = following - timedelta(days=1)
        out.append((first.strftime("%Y%m%d"), last.strftime("%Y%m%d")))
        first = following
    return out


def study_date_range_count(archive: Archive, first: str, last: str) -> int:
    return sum(1 for p in archive.patients for s in p.studies if first <= s.date <= last)


__all__ = [
    "GENERATOR_VERSION",
    "Archive",
    "Patient",
    "build_index",
    "plan_archive",
    "schema_key",
    "write_files",
]
