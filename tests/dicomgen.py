"""Deterministic DICOM Part 10 test files: one instance, a CT series, small mixed objects, a spread.

Everything is a function of the arguments and `seed`: the same call writes the same bytes. Pixel data
are random bytes (masked to BitsStored for native pixels); encapsulated transfer syntaxes get
fragments of arbitrary bytes behind a codec-like marker, as a server stores them without decoding.

`size_bytes` is the size of an instance's bulk data: the Pixel Data value (native: at least that,
rounded up to whole rows; encapsulated: the fragments), the Encapsulated Document, or for the classes
without bulk data (SR, KOS, presentation state, RT plan and structure set) a text, leaf-position
or contour payload of about that size. The file adds 1-3 KB of attributes.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydicom import uid as uids
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, generate_uid

__all__ = [
    "SPREAD",
    "SpreadItem",
    "ct_series",
    "dataset_bytes",
    "small_instances",
    "spread",
    "write_instance",
]

# Explicit VR elements with a 2-byte length (DS, FL, ...) hold at most 65534 bytes: the bulk of the
# RT classes is split into values of at most this many bytes (our DS values have at most 7
# characters and a backslash).
_SHORT_VALUE_MAX = 60_000


@dataclass(frozen=True, slots=True)
class _Kind:
    """What an SOP class looks like: its modality, content kind and default image geometry."""

    modality: str
    content: str  # image | enhanced | dose | pdf | sr | kos | pr | rtplan | rtstruct
    rows: int = 0
    cols: int = 0
    bits: int = 16
    stored: int = 12
    spp: int = 1
    series_description: str = ""


_KINDS: dict[str, _Kind] = {
    uids.CTImageStorage: _Kind("CT", "image", 512, 512, series_description="Axial 1.0mm"),
    uids.MRImageStorage: _Kind("MR", "image", 256, 256, series_description="T2 TSE axial"),
    uids.EnhancedCTImageStorage: _Kind("CT", "enhanced", 128, 128, series_description="Volume"),
    uids.UltrasoundMultiFrameImageStorage: _Kind("US", "image", 240, 320, 8, 8, 3, "Cine loop"),
    uids.SecondaryCaptureImageStorage: _Kind("OT", "image", 64, 64, 8, 8, series_description="SC"),
    uids.DigitalXRayImageStorageForPresentation: _Kind(
        "DX", "image", 256, 256, 16, 14, series_description="Chest PA"
    ),
    uids.DigitalMammographyXRayImageStorageForPresentation: _Kind(
        "MG", "image", 256, 208, 16, 14, series_description="L CC"
    ),
    uids.BreastTomosynthesisImageStorage: _Kind(
        "MG", "enhanced", 128, 104, 16, 14, series_description="Tomo L CC"
    ),
    uids.EncapsulatedPDFStorage: _Kind("DOC", "pdf", series_description="Scanned request"),
    uids.BasicTextSRStorage: _Kind("SR", "sr", series_description="Report"),
    uids.ComprehensiveSRStorage: _Kind("SR", "sr", series_description="Measurements"),
    uids.KeyObjectSelectionDocumentStorage: _Kind("KO", "kos", series_description="Key images"),
    uids.GrayscaleSoftcopyPresentationStateStorage: _Kind(
        "PR", "pr", series_description="Annotations"
    ),
    uids.RTPlanStorage: _Kind("RTPLAN", "rtplan", series_description="Plan"),
    uids.RTStructureSetStorage: _Kind("RTSTRUCT", "rtstruct", series_description="Structures"),
    uids.RTDoseStorage: _Kind("RTDOSE", "dose", 64, 64, 32, 32, series_description="Dose"),
    uids.VideoEndoscopicImageStorage: _Kind("ES", "image", 480, 640, 8, 8, 3, "Endoscopy"),
}

# Codec-like framing of the arbitrary fragment bytes: (prefix, suffix).
_JPEG = (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"\xff\xd9")
_JPEG_LS = (b"\xff\xd8\xff\xf7\x00\x0b", b"\xff\xd9")
_J2K = (b"\xff\x4f\xff\x51\x00\x29", b"\xff\xd9")
_MARKERS: dict[str, tuple[bytes, bytes]] = {
    uids.JPEGBaseline8Bit: _JPEG,
    uids.JPEGExtended12Bit: _JPEG,
    uids.JPEGLossless: _JPEG,
    uids.JPEGLosslessSV1: _JPEG,
    uids.JPEGLSLossless: _JPEG_LS,
    uids.JPEGLSNearLossless: _JPEG_LS,
    uids.JPEG2000Lossless: _J2K,
    uids.JPEG2000: _J2K,
    uids.HTJ2KLossless: _J2K,
    uids.HTJ2KLosslessRPCL: _J2K,
    uids.HTJ2K: _J2K,
    uids.MPEG4HP41: (b"\x00\x00\x00\x01\x67\x64\x00\x29", b""),
    uids.HEVCMP51: (b"\x00\x00\x00\x01\x40\x01\x0c\x01", b""),
}
_LOSSLESS = {
    uids.JPEGLossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLSLossless,
    uids.JPEG2000Lossless,
    uids.HTJ2KLossless,
    uids.HTJ2KLosslessRPCL,
    uids.RLELossless,
}
# Transfer syntaxes whose pixel data are 8-bit samples whatever the modality.
_EIGHT_BIT = {uids.JPEGBaseline8Bit, *uids.MPEGTransferSyntaxes}
_REPORT = (
    "no acute findings lesion stable unchanged compared with prior study mild moderate "
    "enhancement nodule measuring mm in the right left upper lower lobe segment impression "
    "recommend follow up normal appearance of the liver spleen kidneys bowel"
)
_WORDS = _REPORT.split()


def _uid(*parts: object) -> UID:
    return generate_uid(entropy_srcs=[repr(p) for p in parts])


def _rng(*parts: object) -> random.Random:
    return random.Random(repr(parts))


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _item(**attrs: Any) -> Dataset:
    item = Dataset()
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return item


def _even(data: bytes, pad: bytes = b"\x00") -> bytes:
    return data + pad if len(data) % 2 else data


def _text(rng: random.Random, n: int) -> str:
    """n characters of report-like words, ending in a full stop."""
    text = ""
    while len(text) < n:
        text += " ".join(rng.choices(_WORDS, k=n // 4 + 1)) + " "
    return (text[: max(n - 1, 0)] + ".")[:n]


def _batches(values: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(values), n):
        yield values[i : i + n]


# -- common modules ---------------------------------------------------------------------------


def _base(
    kind: _Kind,
    rng: random.Random,
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    study_uid: str,
    series_uid: str,
    patient_name: str,
    charset: str | None,
) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    # Study and series attributes follow from their UIDs, so that every instance of a series
    # agrees on them, as a modality's do; only the content time varies from instance to instance.
    study_key = zlib.crc32(study_uid.encode())
    day = date(2024, 1, 1) + timedelta(days=study_key % 366)
    when = f"{8 + study_key % 10:02d}{study_key % 60:02d}{study_key // 60 % 60:02d}"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = when
    ds.ContentTime = f"{when[:4]}{rng.randrange(60):02d}.{rng.randrange(10**6):06d}"
    ds.AccessionNumber = f"A{study_key % 10**8:08d}"
    ds.Modality = kind.modality
    ds.Manufacturer = "dicomd test data"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Referring^Rita^^Dr."
    ds.StationName = f"{kind.modality}01"
    ds.StudyDescription = "Test study"
    ds.SeriesDescription = kind.series_description or kind.modality
    ds.PatientName = patient_name
    ds.PatientID = f"P{zlib.crc32(patient_name.encode('utf-8')):010d}"
    ds.PatientBirthDate = f"{1940 + zlib.crc32(patient_name.encode('utf-8')) % 60}0615"
    ds.PatientSex = "FMO"[zlib.crc32(patient_name.encode("utf-8")) % 3]
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(1 + study_key % 1000)
    ds.SeriesNumber = 1 + zlib.crc32(series_uid.encode()) % 100
    ds.InstanceNumber = 1
    return ds


def _image_plane(ds: Dataset, kind: _Kind) -> None:
    ds.FrameOfReferenceUID = _uid("frame-of-reference", ds.StudyInstanceUID)
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if kind.modality in ("CT", "MR", "RTDOSE"):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = ["-250.0", "-250.0", "0.0"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["0.976", "0.976"]
        ds.SliceThickness = "1.0"
        ds.SliceLocation = "0.0"
    if kind.modality == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
    elif kind.modality == "MR":
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "SK", ""
        ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime = "2D", "100", "4000"
        ds.MagneticFieldStrength = "1.5"
    elif kind.modality in ("DX", "MG"):
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.ImagerPixelSpacing = ["0.1", "0.1"]
        ds.ImageLaterality = "L" if kind.modality == "MG" else "U"
        ds.ViewPosition = "CC" if kind.modality == "MG" else "PA"
        ds.BurnedInAnnotation = "NO"
    elif kind.modality == "OT":
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ConversionType = "WSD"


# -- pixel data -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    rows: int
    cols: int
    bits: int
    stored: int
    spp: int

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.cols * self.spp * self.bits // 8


def _layout(kind: _Kind, ts: UID, size_bytes: int | None, frames: int) -> _Layout:
    bits, stored = (8, 8) if ts in _EIGHT_BIT else (kind.bits, kind.stored)
    spp = 3 if ts in uids.MPEGTransferSyntaxes else kind.spp
    rows, cols = kind.rows, kind.cols
    if size_bytes is not None:
        pixels = math.ceil(size_bytes / (frames * spp * bits // 8))
        cols = max(2, min(kind.cols, math.isqrt(pixels)) & ~1)
        rows = math.ceil(pixels / cols)
        rows += rows % 2 if ts in uids.MPEGTransferSyntaxes else 0
    return _Layout(rows, cols, bits, stored, spp)


def _photometric(layout: _Layout, ts: UID) -> str:
    if layout.spp == 1:
        return "MONOCHROME2"
    if ts in uids.MPEGTransferSyntaxes:
        return "YBR_PARTIAL_420"
    if ts == uids.JPEGBaseline8Bit:
        return "YBR_FULL_422"
    if ts in (uids.JPEG2000Lossless, uids.HTJ2KLossless, uids.HTJ2KLosslessRPCL):
        return "YBR_RCT"
    return "RGB"


def _native_pixels(rng: random.Random, layout: _Layout, frames: int, big_endian: bool) -> bytes:
    data = bytearray(rng.randbytes(layout.frame_bytes * frames))
    if layout.bits == 16 and layout.stored < 16:
        # Clear the bits above BitsStored: the high byte of each word, where the byte order puts it.
        mask = (1 << (layout.stored - 8)) - 1
        table = bytes(b & mask for b in range(256))
        high = slice(0, None, 2) if big_endian else slice(1, None, 2)
        data[high] = bytes(data[high]).translate(table)
    return _even(bytes(data))


def _rle_header(layout: _Layout, length: int) -> bytes:
    segments = layout.spp * layout.bits // 8
    step = max((length - 64) // segments, 0)
    offsets = [64 + i * step for i in range(segments)] + [0] * (15 - segments)
    return struct.pack("<16L", segments, *offsets)


def _fragment(rng: random.Random, ts: UID, layout: _Layout, length: int) -> bytes:
    length = max(length + length % 2, 64 + 2)
    if ts == uids.RLELossless:
        head, tail = _rle_header(layout, length), b""
    else:
        head, tail = _MARKERS.get(ts, (b"", b""))
    return head + rng.randbytes(length - len(head) - len(tail)) + tail


def _encapsulated_pixels(
    rng: random.Random, ts: UID, layout: _Layout, frames: int, size_bytes: int
) -> bytes:
    if ts in uids.MPEGTransferSyntaxes:
        # One video stream for all frames, in fragments of at most 1 MiB.
        stream = _fragment(rng, ts, layout, size_bytes)
        return encapsulate(
            [stream], fragments_per_frame=max(1, len(stream) // 2**20), has_bot=False
        )
    per_frame = math.ceil(size_bytes / frames)
    return encapsulate([_fragment(rng, ts, layout, per_frame) for _ in range(frames)])


def _add_pixels(
    ds: Dataset, rng: random.Random, kind: _Kind, ts: UID, size_bytes: int | None, frames: int
) -> None:
    layout = _layout(kind, ts, size_bytes, frames)
    ds.SamplesPerPixel = layout.spp
    ds.PhotometricInterpretation = _photometric(layout, ts)
    if layout.spp > 1:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = layout.rows, layout.cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = layout.bits, layout.stored, layout.stored - 1
    ds.PixelRepresentation = 0
    if frames > 1 or kind.content in ("enhanced", "dose") or ts in uids.MPEGTransferSyntaxes:
        ds.NumberOfFrames = frames
    if ts.is_compressed:
        size = size_bytes if size_bytes is not None else layout.frame_bytes * frames // 4
        ds.add_new(0x7FE00010, "OB", _encapsulated_pixels(rng, ts, layout, frames, size))
        ds.LossyImageCompression = "00" if ts in _LOSSLESS else "01"
    else:
        pixels = _native_pixels(rng, layout, frames, ts == uids.ExplicitVRBigEndian)
        ds.add_new(0x7FE00010, "OW" if layout.bits > 8 else "OB", pixels)


def _cine(ds: Dataset, frames: int) -> None:
    ds.FrameTime = "33.33"
    ds.CineRate = 30
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.RecommendedDisplayFrameRate = 30
    ds.NumberOfFrames = frames


def _functional_groups(ds: Dataset, frames: int) -> None:
    """Enhanced multi-frame: shared and per-frame functional groups, one stack along z."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.FrameOfReferenceUID = _uid("frame-of-reference", ds.StudyInstanceUID)
    ds.ContentQualification = "PRODUCT"
    ds.BurnedInAnnotation = "NO"
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.DimensionOrganizationType = "3D"
    ds.SharedFunctionalGroupsSequence = [
        _item(
            PixelMeasuresSequence=[_item(PixelSpacing=["0.5", "0.5"], SliceThickness="1.0")],
            PlaneOrientationSequence=[
                _item(ImageOrientationPatient=["1", "0", "0", "0", "1", "0"])
            ],
        )
    ]
    ds.PerFrameFunctionalGroupsSequence = [
        _item(
            FrameContentSequence=[_item(StackID="1", InStackPositionNumber=i + 1)],
            PlanePositionSequence=[_item(ImagePositionPatient=["-32.0", "-32.0", f"{i:.1f}"])],
        )
        for i in range(frames)
    ]


# -- content of the non-image classes ---------------------------------------------------------


def _sr(ds: Dataset, rng: random.Random, size: int, *, key_objects: bool) -> None:
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    text = _item(RelationshipType="CONTAINS", ValueType="TEXT", TextValue=_text(rng, size))
    if key_objects:
        ds.ConceptNameCodeSequence = [_code("113000", "DCM", "Of Interest")]
        ds.ContentTemplateSequence = [_item(MappingResource="DCMR", TemplateIdentifier="2010")]
        text.ConceptNameCodeSequence = [_code("113012", "DCM", "Key Object Description")]
        ds.ContentSequence = [text, *_image_refs(ds, 3)]
        ds.CurrentRequestedProcedureEvidenceSequence = [_evidence(ds, 3)]
        return
    ds.CompletionFlag = "COMPLETE"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    text.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    ds.ContentSequence = [text]
    if ds.SOPClassUID == uids.ComprehensiveSRStorage:
        measured = _item(
            NumericValue="12.5", MeasurementUnitsCodeSequence=[_code("mm", "UCUM", "mm")]
        )
        ds.ContentSequence.append(
            _item(
                RelationshipType="CONTAINS",
                ValueType="NUM",
                ConceptNameCodeSequence=[_code("410668003", "SCT", "Length")],
                MeasuredValueSequence=[measured],
            )
        )


def _referenced_uids(ds: Dataset, n: int) -> list[str]:
    return [_uid("referenced-ct", ds.StudyInstanceUID, i) for i in range(n)]


def _image_refs(ds: Dataset, n: int) -> list[Dataset]:
    return [
        _item(
            RelationshipType="CONTAINS",
            ValueType="IMAGE",
            ReferencedSOPSequence=[
                _item(ReferencedSOPClassUID=uids.CTImageStorage, ReferencedSOPInstanceUID=ref)
            ],
        )
        for ref in _referenced_uids(ds, n)
    ]


def _evidence(ds: Dataset, n: int) -> Dataset:
    refs = [
        _item(ReferencedSOPClassUID=uids.CTImageStorage, ReferencedSOPInstanceUID=ref)
        for ref in _referenced_uids(ds, n)
    ]
    series = _item(
        SeriesInstanceUID=_uid("referenced-series", ds.StudyInstanceUID),
        ReferencedSOPSequence=refs,
    )
    return _item(StudyInstanceUID=ds.StudyInstanceUID, ReferencedSeriesSequence=[series])


def _presentation_state(ds: Dataset, rng: random.Random, size: int) -> None:
    ds.ContentLabel = "ANNOTATION"
    ds.ContentDescription = "Measurements"
    ds.ContentCreatorName = "Reader^Rachel"
    ds.PresentationCreationDate, ds.PresentationCreationTime = ds.ContentDate, ds.ContentTime
    ds.InstanceNumber = 1
    refs = [
        _item(ReferencedSOPClassUID=uids.CTImageStorage, ReferencedSOPInstanceUID=ref)
        for ref in _referenced_uids(ds, 2)
    ]
    ds.ReferencedSeriesSequence = [
        _item(
            SeriesInstanceUID=_uid("referenced-series", ds.StudyInstanceUID),
            ReferencedImageSequence=refs,
        )
    ]
    outline = [float(rng.randrange(512)) for _ in range(16)]
    polyline = _item(
        GraphicAnnotationUnits="PIXEL",
        GraphicDimensions=2,
        NumberOfGraphicPoints=len(outline) // 2,
        GraphicData=outline,
        GraphicType="POLYLINE",
        GraphicFilled="N",
    )
    # The payload is text annotations: 1024 characters at most each (ST).
    texts = [
        _item(
            BoundingBoxAnnotationUnits="PIXEL",
            BoundingBoxTopLeftHandCorner=[10.0, 10.0 + 20 * i],
            BoundingBoxBottomRightHandCorner=[500.0, 28.0 + 20 * i],
            BoundingBoxTextHorizontalJustification="LEFT",
            UnformattedTextValue=_text(rng, min(1024, size - i * 1024)),
        )
        for i in range(max(math.ceil(size / 1024), 1))
    ]
    ds.GraphicAnnotationSequence = [
        _item(GraphicLayer="LAYER1", GraphicObjectSequence=[polyline], TextObjectSequence=texts)
    ]
    ds.GraphicLayerSequence = [_item(GraphicLayer="LAYER1", GraphicLayerOrder=1)]
    ds.SoftcopyVOILUTSequence = [_item(WindowCenter="40", WindowWidth="400")]
    ds.PresentationLUTShape = "IDENTITY"


def _rt_plan(ds: Dataset, rng: random.Random, size: int) -> None:
    ds.RTPlanLabel, ds.RTPlanName = "PLAN1", "Prostate"
    ds.RTPlanDate, ds.RTPlanTime = ds.ContentDate, ds.StudyTime
    ds.RTPlanGeometry = "PATIENT"
    ds.ApprovalStatus = "UNAPPROVED"
    ds.FrameOfReferenceUID = _uid("frame-of-reference", ds.StudyInstanceUID)
    ds.ReferencedStructureSetSequence = [
        _item(
            ReferencedSOPClassUID=uids.RTStructureSetStorage,
            ReferencedSOPInstanceUID=_uid("structure-set", ds.StudyInstanceUID),
        )
    ]
    leaves = [f"{rng.uniform(-100, 100):.1f}" for _ in range(max(size // 6, 2))]
    control_points = [
        _item(
            ControlPointIndex=i,
            CumulativeMetersetWeight=f"{i / 2:.1f}",
            BeamLimitingDevicePositionSequence=[
                _item(RTBeamLimitingDeviceType="MLCX", LeafJawPositions=chunk)
            ],
        )
        for i, chunk in enumerate(_batches(leaves, _SHORT_VALUE_MAX // 8))
    ]
    ds.BeamSequence = [
        _item(
            BeamNumber=1,
            BeamName="AP",
            BeamType="STATIC",
            RadiationType="PHOTON",
            TreatmentMachineName="LINAC1",
            PrimaryDosimeterUnit="MU",
            SourceAxisDistance="1000",
            NumberOfWedges=0,
            NumberOfCompensators=0,
            NumberOfBoli=0,
            NumberOfBlocks=0,
            FinalCumulativeMetersetWeight="1",
            NumberOfControlPoints=len(control_points),
            ControlPointSequence=control_points,
        )
    ]
    ds.FractionGroupSequence = [
        _item(
            FractionGroupNumber=1,
            NumberOfFractionsPlanned=30,
            NumberOfBeams=1,
            NumberOfBrachyApplicationSetups=0,
            ReferencedBeamSequence=[_item(ReferencedBeamNumber=1, BeamMeterset="100")],
        )
    ]


def _rt_struct(ds: Dataset, rng: random.Random, size: int) -> None:
    frame_of_reference = _uid("frame-of-reference", ds.StudyInstanceUID)
    ds.StructureSetLabel, ds.StructureSetName = "STRUCTS", "Organs"
    ds.StructureSetDate, ds.StructureSetTime = ds.ContentDate, ds.StudyTime
    ds.ReferencedFrameOfReferenceSequence = [_item(FrameOfReferenceUID=frame_of_reference)]
    ds.StructureSetROISequence = [
        _item(
            ROINumber=1,
            ReferencedFrameOfReferenceUID=frame_of_reference,
            ROIName="Liver",
            ROIGenerationAlgorithm="MANUAL",
        )
    ]
    coordinates = [f"{rng.uniform(-200, 200):.2f}" for _ in range(3 * max(size // 21, 1))]
    contours = [
        _item(
            ContourGeometricType="CLOSED_PLANAR",
            NumberOfContourPoints=len(chunk) // 3,
            ContourData=chunk,
        )
        for chunk in _batches(coordinates, _SHORT_VALUE_MAX // 8 // 3 * 3)
    ]
    ds.ROIContourSequence = [
        _item(ROIDisplayColor=[255, 0, 0], ReferencedROINumber=1, ContourSequence=contours)
    ]
    ds.RTROIObservationsSequence = [
        _item(
            ObservationNumber=1,
            ReferencedROINumber=1,
            RTROIInterpretedType="ORGAN",
            ROIInterpreter="",
        )
    ]


def _pdf(ds: Dataset, rng: random.Random, size: int) -> None:
    head = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\nstream\n"
    tail = b"\nendstream\n%%EOF\n"
    body = rng.randbytes(max(size - len(head) - len(tail), 0))
    document = head + body + tail
    ds.ConversionType = "SD"
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = "Scanned request form"
    ds.ConceptNameCodeSequence = [_code("55115-0", "LN", "Requested imaging studies information")]
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(document)
    ds.add_new(0x00420011, "OB", _even(document))


# -- public API -------------------------------------------------------------------------------

_DEFAULT_PAYLOAD = 2048  # bytes of text/graphics/contours for the classes without pixel data


def write_instance(
    path: str | Path,
    *,
    sop_class_uid: str,
    transfer_syntax_uid: str,
    size_bytes: int | None = None,
    frames: int = 1,
    patient_name: str = "Test^Patient",
    charset: str | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    seed: int = 0,
    **attrs: Any,
) -> Path:
    """Write one DICOM Part 10 file whose data set is encoded in `transfer_syntax_uid`.

    `attrs` are data element keywords set last (they override the generated values). The UIDs not
    given are derived from `seed` (the study from the seed alone, so instances of one seed share it).
    """
    sop, ts = UID(sop_class_uid), UID(transfer_syntax_uid)
    kind = _kind(sop, ts)
    study_uid = study_uid or _uid("study", seed)
    series_uid = series_uid or _uid("series", seed, sop)
    sop_instance_uid = sop_instance_uid or _uid("instance", seed, sop, ts, frames, size_bytes)
    rng = _rng(seed, sop, ts, frames, size_bytes, sop_instance_uid)
    ds = _base(
        kind,
        rng,
        sop_class_uid=sop,
        sop_instance_uid=sop_instance_uid,
        study_uid=study_uid,
        series_uid=series_uid,
        patient_name=patient_name,
        charset=charset,
    )
    _fill(ds, kind, rng, ts, size_bytes, frames)
    for keyword, value in attrs.items():
        if tag_for_keyword(keyword) is None:
            raise ValueError(f"not a DICOM keyword: {keyword}")
        setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    path = Path(path)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _kind(sop: UID, ts: UID) -> _Kind:
    if sop not in _KINDS:
        known = ", ".join(sorted(UID(u).name for u in _KINDS))
        raise ValueError(f"no generator for SOP class {sop} ({sop.name}); known: {known}")
    if not ts.is_transfer_syntax:
        raise ValueError(f"not a transfer syntax: {ts} ({ts.name})")
    kind = _KINDS[sop]
    if ts.is_compressed and kind.content not in ("image", "enhanced", "dose"):
        raise ValueError(f"{sop.name} has no pixel data to encode as {ts.name}")
    return kind


def _fill(
    ds: Dataset, kind: _Kind, rng: random.Random, ts: UID, size_bytes: int | None, frames: int
) -> None:
    payload = _DEFAULT_PAYLOAD if size_bytes is None else size_bytes
    if kind.content == "enhanced":
        _functional_groups(ds, frames)
        _add_pixels(ds, rng, kind, ts, size_bytes, frames)
    elif kind.content in ("image", "dose"):
        _image_plane(ds, kind)
        _add_pixels(ds, rng, kind, ts, size_bytes, frames)
        if kind.content == "dose":
            _dose(ds, frames)
        elif kind.modality in ("US", "ES") and "NumberOfFrames" in ds:
            _cine(ds, frames)
    elif kind.content == "pdf":
        _pdf(ds, rng, payload)
    elif kind.content in ("sr", "kos"):
        _sr(ds, rng, payload, key_objects=kind.content == "kos")
    elif kind.content == "pr":
        _presentation_state(ds, rng, payload)
    elif kind.content == "rtplan":
        _rt_plan(ds, rng, payload)
    else:
        _rt_struct(ds, rng, payload)


def _dose(ds: Dataset, frames: int) -> None:
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", "PLAN"
    ds.DoseGridScaling = "0.0001"
    ds.FrameIncrementPointer = 0x3004000C  # Grid Frame Offset Vector
    ds.GridFrameOffsetVector = [f"{2.5 * i:.1f}" for i in range(frames)]
    ds.ReferencedRTPlanSequence = [
        _item(
            ReferencedSOPClassUID=uids.RTPlanStorage,
            ReferencedSOPInstanceUID=_uid("plan", ds.StudyInstanceUID),
        )
    ]


def ct_series(
    directory: str | Path,
    n: int,
    *,
    size_bytes: int = 512 * 1024,
    transfer_syntax_uid: str = uids.ExplicitVRLittleEndian,
    patient_name: str = "Series^Carl",
    study_uid: str | None = None,
    series_uid: str | None = None,
    seed: int = 0,
) -> list[Path]:
    """n slices of one CT series (512 x 512 x 16 bit at the default size), CT00001.dcm, ..."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or _uid("ct-study", seed)
    series_uid = series_uid or _uid("ct-series", seed)
    return [
        write_instance(
            directory / f"CT{i + 1:05d}.dcm",
            sop_class_uid=uids.CTImageStorage,
            transfer_syntax_uid=transfer_syntax_uid,
            size_bytes=size_bytes,
            patient_name=patient_name,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=_uid("ct-instance", seed, series_uid, i),
            seed=seed * 1_000_003 + i,
            InstanceNumber=i + 1,
            ImagePositionPatient=["-250.0", "-250.0", f"{-i * 1.0:.1f}"],
            SliceLocation=f"{-i * 1.0:.1f}",
            AcquisitionNumber=1,
        )
        for i in range(n)
    ]


# Small objects and the bytes of attributes each adds to its payload (measured, for 5-10 KB files).
_SMALL: tuple[tuple[str, int], ...] = (
    (uids.BasicTextSRStorage, 1250),
    (uids.GrayscaleSoftcopyPresentationStateStorage, 2150),
    (uids.KeyObjectSelectionDocumentStorage, 2310),
    (uids.SecondaryCaptureImageStorage, 1230),
)


def small_instances(
    directory: str | Path,
    n: int,
    *,
    transfer_syntax_uid: str = uids.ExplicitVRLittleEndian,
    seed: int = 0,
) -> list[Path]:
    """n files of 5-10 KB cycling through Basic Text SR, GSPS, KOS and secondary capture."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = _rng("small", seed)
    paths = []
    for i in range(n):
        sop, overhead = _SMALL[i % len(_SMALL)]
        study = i // 10  # ten objects per study, three studies per patient
        paths.append(
            write_instance(
                directory / f"S{i + 1:05d}.dcm",
                sop_class_uid=sop,
                transfer_syntax_uid=transfer_syntax_uid,
                size_bytes=rng.randrange(5350, 10000) - overhead,
                patient_name=f"Small^Patient{study // 3}",
                study_uid=_uid("small-study", seed, study),
                series_uid=_uid("small-series", seed, study, sop),
                sop_instance_uid=_uid("small-instance", seed, i),
                seed=seed * 1_000_003 + i,
                InstanceNumber=i // len(_SMALL) % 1000 + 1,
            )
        )
    return paths


@dataclass(frozen=True, slots=True)
class SpreadItem:
    """One file of `spread()`: an SOP class in a transfer syntax."""

    name: str
    sop_class_uid: str
    transfer_syntax_uid: str
    frames: int = 1
    size_bytes: int | None = None
    charset: str | None = None
    patient_name: str = "Spread^Sam"


SPREAD: tuple[SpreadItem, ...] = (
    SpreadItem("ct", uids.CTImageStorage, uids.ImplicitVRLittleEndian),
    SpreadItem("mr-big-endian", uids.MRImageStorage, uids.ExplicitVRBigEndian),
    SpreadItem("mr-deflated", uids.MRImageStorage, uids.DeflatedExplicitVRLittleEndian),
    SpreadItem("enhanced-ct", uids.EnhancedCTImageStorage, uids.ExplicitVRLittleEndian, 10),
    SpreadItem(
        "us-multiframe-jpeg",
        uids.UltrasoundMultiFrameImageStorage,
        uids.JPEGBaseline8Bit,
        8,
        96_000,
    ),
    SpreadItem("secondary-capture-rle", uids.SecondaryCaptureImageStorage, uids.RLELossless),
    SpreadItem(
        "secondary-capture-utf8",
        uids.SecondaryCaptureImageStorage,
        uids.ExplicitVRLittleEndian,
        charset="ISO_IR 192",
        patient_name="Müller^Jürgen=ミュラー^ユルゲン",
    ),
    SpreadItem("dx-jpeg-ls", uids.DigitalXRayImageStorageForPresentation, uids.JPEGLSLossless),
    SpreadItem(
        "mammography-6mb",
        uids.DigitalMammographyXRayImageStorageForPresentation,
        uids.ExplicitVRLittleEndian,
        size_bytes=6 * 2**20,
    ),
    SpreadItem("breast-tomo-j2k", uids.BreastTomosynthesisImageStorage, uids.JPEG2000Lossless, 4),
    SpreadItem("ct-htj2k", uids.CTImageStorage, uids.HTJ2KLossless),
    SpreadItem("pdf", uids.EncapsulatedPDFStorage, uids.ExplicitVRLittleEndian, size_bytes=20_000),
    SpreadItem("basic-text-sr", uids.BasicTextSRStorage, uids.ImplicitVRLittleEndian),
    SpreadItem(
        "comprehensive-sr-deflated",
        uids.ComprehensiveSRStorage,
        uids.DeflatedExplicitVRLittleEndian,
    ),
    SpreadItem("gsps", uids.GrayscaleSoftcopyPresentationStateStorage, uids.ExplicitVRLittleEndian),
    SpreadItem(
        "gsps-big-endian", uids.GrayscaleSoftcopyPresentationStateStorage, uids.ExplicitVRBigEndian
    ),
    SpreadItem("rt-plan", uids.RTPlanStorage, uids.ImplicitVRLittleEndian),
    SpreadItem(
        "rt-struct", uids.RTStructureSetStorage, uids.ImplicitVRLittleEndian, size_bytes=100_000
    ),
    SpreadItem("rt-dose", uids.RTDoseStorage, uids.ExplicitVRLittleEndian, 8),
    SpreadItem("video-mpeg4", uids.VideoEndoscopicImageStorage, uids.MPEG4HP41, 30, 200_000),
    SpreadItem("video-hevc", uids.VideoEndoscopicImageStorage, uids.HEVCMP51, 30, 200_000),
    SpreadItem("key-objects", uids.KeyObjectSelectionDocumentStorage, uids.ExplicitVRLittleEndian),
)


def spread(directory: str | Path, *, seed: int = 0) -> list[Path]:
    """One file per entry of SPREAD (NN-name.dcm), in one study; one of them is over 5 MB."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = _uid("spread-study", seed)
    return [
        write_instance(
            directory / f"{i + 1:02d}-{item.name}.dcm",
            sop_class_uid=item.sop_class_uid,
            transfer_syntax_uid=item.transfer_syntax_uid,
            size_bytes=item.size_bytes,
            frames=item.frames,
            patient_name=item.patient_name,
            charset=item.charset,
            study_uid=study_uid,
            series_uid=_uid("spread-series", seed, i),
            seed=seed * 1_000_003 + i,
            InstanceNumber=1,
        )
        for i, item in enumerate(SPREAD)
    ]


def dataset_bytes(path: str | Path) -> bytes:
    """The data set after the File Meta Information, exactly as stored (still deflated, if so)."""
    data = Path(path).read_bytes()
    if data[128:132] != b"DICM":
        raise ValueError(f"{path}: no DICM prefix at offset 128")
    return data[_meta_end(data, 132) :]


def _meta_end(data: bytes, offset: int) -> int:
    """Offset of the first element after group 0002 (always Explicit VR Little Endian)."""
    while offset + 8 <= len(data):
        group, _element = struct.unpack_from("<HH", data, offset)
        if group != 0x0002:
            return offset
        vr = data[offset + 4 : offset + 6]
        if vr in (
            b"OB",
            b"OD",
            b"OF",
            b"OL",
            b"OV",
            b"OW",
            b"SQ",
            b"SV",
            b"UC",
            b"UN",
            b"UR",
            b"UT",
            b"UV",
        ):
            (length,) = struct.unpack_from("<L", data, offset + 8)
            offset += 12 + length
        else:
            (length,) = struct.unpack_from("<H", data, offset + 6)
            offset += 8 + length
    return offset
