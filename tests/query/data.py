"""A small, varied index for C-FIND tests: instances built as datasets, indexed with their kept
attributes exactly as C-STORE indexes them (scan -> record_from_dataset)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomd.storage.index import Index
from dicomd.storage.record import InstanceRecord, record_from_dataset
from dicomd.storage.scan import scan

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SR = "1.2.840.10008.5.1.4.1.1.88.11"
US = "1.2.840.10008.5.1.4.1.1.6.1"
EXPLICIT = "1.2.840.10008.1.2.1"

PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_STUDY_ONLY = "1.2.840.10008.5.1.4.1.2.3.1"


def item(**attrs: Any) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def instance(**attrs: Any) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def record_of(ds: Dataset, *, n: int = 0) -> InstanceRecord:
    fp = DicomBytesIO()
    fp.is_implicit_VR, fp.is_little_endian = False, True
    write_dataset(fp, ds)
    data = fp.getvalue()
    scanned = scan(io.BytesIO(data), 0, len(data), EXPLICIT)
    return record_from_dataset(
        scanned.dataset(),
        transfer_syntax_uid=EXPLICIT,
        relpath=f"objects/{n:064x}.dcm",
        size=len(data),
        sha256=f"{n:064x}",
        received_at="2024-05-01T12:00:00.000000+00:00",
        calling_ae_title="TEST",
        attributes=scanned.blob,
        attributes_transfer_syntax=scanned.blob_transfer_syntax,
    )


@dataclass(frozen=True)
class Fixture:
    """What the standard data set holds, for assertions."""

    instances: list[Dataset]

    def uids(self, keyword: str, **where: Any) -> set[str]:
        return {
            str(getattr(ds, keyword))
            for ds in self.instances
            if all(str(getattr(ds, k, "")) == str(v) for k, v in where.items())
        }


def standard_instances() -> list[Dataset]:
    """4 patients, 5 studies, 7 series, 11 instances; three character sets."""
    out: list[Dataset] = []

    def add(
        patient: dict[str, Any],
        study: dict[str, Any],
        series: dict[str, Any],
        sop_class: str,
        n: int,
        **extra: Any,
    ) -> None:
        for i in range(n):
            uid = f"{series['SeriesInstanceUID']}.{i + 1}"
            out.append(
                instance(
                    **patient,
                    **study,
                    **series,
                    SOPClassUID=sop_class,
                    SOPInstanceUID=uid,
                    InstanceNumber=i + 1,
                    ContentDate=study["StudyDate"],
                    ContentTime=f"12{i:02d}00",
                    Rows=512,
                    Columns=512,
                    ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
                    InstitutionName="General Hospital",
                    **extra,
                )
            )

    jane = dict(
        PatientName="Doe^Jane",
        PatientID="PA",
        PatientBirthDate="19700101",
        PatientSex="F",
        OtherPatientIDs=["OLD1", "OLD2"],
    )
    s1 = dict(
        StudyInstanceUID="1.2.9.1",
        StudyDate="20240105",
        StudyTime="101500",
        AccessionNumber="ACC1",
        StudyID="1",
        StudyDescription="CT HEAD",
        ReferringPhysicianName="Ref^One",
        PatientWeight="70.0",
    )
    add(
        jane,
        s1,
        dict(
            SeriesInstanceUID="1.2.9.1.1", Modality="CT", SeriesNumber=1, SeriesDescription="Axial"
        ),
        CT,
        3,
    )
    add(
        jane,
        s1,
        dict(
            SeriesInstanceUID="1.2.9.1.2",
            Modality="SR",
            SeriesNumber=2,
            RequestAttributesSequence=[
                item(RequestedProcedureID="RP1", ScheduledProcedureStepID="SPS1"),
                item(RequestedProcedureID="RP2", ScheduledProcedureStepID="SPS2"),
            ],
        ),
        SR,
        1,
    )
    s2 = dict(
        StudyInstanceUID="1.2.9.2",
        StudyDate="20240210",
        StudyTime="083000",
        AccessionNumber="ACC2",
        StudyID="2",
        StudyDescription="MR KNEE",
    )
    add(jane, s2, dict(SeriesInstanceUID="1.2.9.2.1", Modality="MR", SeriesNumber=1), MR, 2)
    hans = dict(
        SpecificCharacterSet="ISO_IR 100",
        PatientName="Müller^Hans",
        PatientID="PB",
        PatientBirthDate="19551231",
        PatientSex="M",
    )
    s3 = dict(
        StudyInstanceUID="1.2.9.3",
        StudyDate="20240301",
        StudyTime="140000",
        AccessionNumber="ACC3",
        StudyDescription="Thorax pré-op",
    )
    add(hans, s3, dict(SeriesInstanceUID="1.2.9.3.1", Modality="CT", SeriesNumber=1), CT, 2)
    add(hans, s3, dict(SeriesInstanceUID="1.2.9.3.2", Modality="MR", SeriesNumber=2), MR, 1)
    wang = dict(
        SpecificCharacterSet="GB18030",
        PatientName="Wang^XiaoDong=王^小东",
        PatientID="PC",
        PatientSex="M",
    )
    s4 = dict(
        StudyInstanceUID="1.2.9.4",
        StudyDate="20231231",
        StudyTime="235900",
        AccessionNumber="ACC4",
        StudyDescription="超声",
    )
    add(wang, s4, dict(SeriesInstanceUID="1.2.9.4.1", Modality="US", SeriesNumber=1), US, 1)
    odd = dict(PatientName="Per%cent^_Under", PatientID="P%_1", PatientSex="O")
    s5 = dict(StudyInstanceUID="1.2.9.5", StudyDate="20240105", StudyTime="", AccessionNumber="A_5")
    add(odd, s5, dict(SeriesInstanceUID="1.2.9.5.1", Modality="OT", SeriesNumber=1), CT, 1)
    return out


async def load(index: Index, datasets: list[Dataset]) -> Fixture:
    for n, ds in enumerate(datasets):
        await index.put(record_of(ds, n=n), policy="replace")
    return Fixture(datasets)
