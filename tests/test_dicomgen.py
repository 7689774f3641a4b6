"""The test-data generator writes valid, deterministic Part 10 files of the asked kind and size."""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom import uid as uids
from pydicom.encaps import generate_fragments, generate_frames
from pydicom.uid import UID

from tests import dicomgen

# pydicom warns (instead of raising) on invalid values it writes: here such a warning fails.
pytestmark = pytest.mark.filterwarnings("error")

ENCAPSULATED = [
    uids.JPEGBaseline8Bit,
    uids.JPEGLSLossless,
    uids.JPEG2000Lossless,
    uids.RLELossless,
    uids.HTJ2KLossless,
    uids.MPEG4HP41,
    uids.HEVCMP51,
]
SPREAD_CLASSES = {
    uids.CTImageStorage,
    uids.MRImageStorage,
    uids.EnhancedCTImageStorage,
    uids.UltrasoundMultiFrameImageStorage,
    uids.SecondaryCaptureImageStorage,
    uids.DigitalXRayImageStorageForPresentation,
    uids.DigitalMammographyXRayImageStorageForPresentation,
    uids.BreastTomosynthesisImageStorage,
    uids.EncapsulatedPDFStorage,
    uids.BasicTextSRStorage,
    uids.ComprehensiveSRStorage,
    uids.GrayscaleSoftcopyPresentationStateStorage,
    uids.RTPlanStorage,
    uids.RTStructureSetStorage,
    uids.RTDoseStorage,
    uids.VideoEndoscopicImageStorage,
    uids.KeyObjectSelectionDocumentStorage,
}
SPREAD_SYNTAXES = {
    uids.ImplicitVRLittleEndian,
    uids.ExplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
    uids.DeflatedExplicitVRLittleEndian,
    *ENCAPSULATED,
}


@pytest.fixture(scope="module")
def spread_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return dicomgen.spread(tmp_path_factory.mktemp("spread"))


def test_spread_reads_back_with_its_class_and_syntax(spread_files: list[Path]) -> None:
    assert len(spread_files) == len(dicomgen.SPREAD)
    for path, item in zip(spread_files, dicomgen.SPREAD, strict=True):
        ds = dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == item.transfer_syntax_uid, path.name
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == item.sop_class_uid
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        for keyword in ("PatientID", "PatientName", "StudyDate", "AccessionNumber", "Modality"):
            assert keyword in ds, (path.name, keyword)


def test_spread_covers_the_classes_and_syntaxes(spread_files: list[Path]) -> None:
    assert {item.sop_class_uid for item in dicomgen.SPREAD} >= SPREAD_CLASSES
    assert {item.transfer_syntax_uid for item in dicomgen.SPREAD} >= SPREAD_SYNTAXES
    assert max(path.stat().st_size for path in spread_files) > 5 * 2**20
    for sop_class in SPREAD_CLASSES:  # every class is one pydicom knows by name
        assert UID(sop_class).name != sop_class


def test_spread_is_deterministic(spread_files: list[Path], tmp_path: Path) -> None:
    again = dicomgen.spread(tmp_path)
    for first, second in zip(spread_files, again, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name


def test_write_instance_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    def write(name: str, seed: int) -> bytes:
        path = dicomgen.write_instance(
            tmp_path / name,
            sop_class_uid=uids.CTImageStorage,
            transfer_syntax_uid=uids.ExplicitVRLittleEndian,
            size_bytes=20_000,
            seed=seed,
        )
        return path.read_bytes()

    assert write("a.dcm", 7) == write("b.dcm", 7)
    assert write("c.dcm", 8) != write("a.dcm", 7)


@pytest.mark.parametrize("syntax", ENCAPSULATED, ids=lambda ts: UID(ts).keyword)
def test_encapsulated_fragments_have_the_asked_size(tmp_path: Path, syntax: str) -> None:
    video = syntax in uids.MPEGTransferSyntaxes
    sop_class = uids.VideoEndoscopicImageStorage if video else uids.EnhancedCTImageStorage
    path = dicomgen.write_instance(
        tmp_path / "x.dcm",
        sop_class_uid=sop_class,
        transfer_syntax_uid=syntax,
        size_bytes=40_000,
        frames=10,
    )
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.NumberOfFrames == 10
    if video:  # one stream for all frames, in fragments
        fragments = list(generate_fragments(ds.PixelData[8:]))  # after the empty offset table
        assert sum(len(f) for f in fragments) == 40_000
    else:
        frames = list(generate_frames(ds.PixelData, number_of_frames=10))
        assert [len(f) for f in frames] == [4000] * 10
        assert len(ds.PerFrameFunctionalGroupsSequence) == 10


def test_ct_series_is_one_series_of_512_kib_slices(tmp_path: Path) -> None:
    paths = dicomgen.ct_series(tmp_path, 3)
    datasets = [dcmread(p) for p in paths]
    assert [p.name for p in paths] == ["CT00001.dcm", "CT00002.dcm", "CT00003.dcm"]
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3
    assert [ds.InstanceNumber for ds in datasets] == [1, 2, 3]
    for path, ds in zip(paths, datasets, strict=True):
        assert ds.SOPClassUID == uids.CTImageStorage
        assert (ds.Rows, ds.Columns, ds.BitsAllocated) == (512, 512, 16)
        assert len(ds.PixelData) == 512 * 1024
        assert 512 * 1024 < path.stat().st_size < 512 * 1024 + 4096
    assert datasets[0].PixelData != datasets[1].PixelData


def test_small_instances_are_5_to_10_kib_of_mixed_classes(tmp_path: Path) -> None:
    paths = dicomgen.small_instances(tmp_path, 40)
    assert len(paths) == 40
    assert all(5 * 1024 <= p.stat().st_size <= 10 * 1024 for p in paths)
    classes = Counter(dcmread(p).SOPClassUID for p in paths)
    assert set(classes) == {
        uids.BasicTextSRStorage,
        uids.GrayscaleSoftcopyPresentationStateStorage,
        uids.KeyObjectSelectionDocumentStorage,
        uids.SecondaryCaptureImageStorage,
    }
    assert len({dcmread(p).SOPInstanceUID for p in paths}) == 40


@pytest.mark.parametrize("size", [1000, 70_000, 300_001])
def test_bulk_data_has_at_least_the_asked_size(tmp_path: Path, size: int) -> None:
    cases = {
        uids.CTImageStorage: "PixelData",
        uids.EncapsulatedPDFStorage: "EncapsulatedDocument",
    }
    for sop_class, keyword in cases.items():
        path = dicomgen.write_instance(
            tmp_path / "x.dcm",
            sop_class_uid=sop_class,
            transfer_syntax_uid=uids.ExplicitVRLittleEndian,
            size_bytes=size,
        )
        value = dcmread(path)[keyword].value
        assert size <= len(value) <= size + 1024, (sop_class, len(value))
    for sop_class in (uids.BasicTextSRStorage, uids.RTStructureSetStorage, uids.RTPlanStorage):
        path = dicomgen.write_instance(
            tmp_path / "y.dcm",
            sop_class_uid=sop_class,
            transfer_syntax_uid=uids.ImplicitVRLittleEndian,
            size_bytes=size,
        )
        assert 0.8 * size <= path.stat().st_size <= 1.25 * size + 4096, sop_class


def _meta_end(data: bytes) -> int:
    """End of the File Meta group from its group length (0002,0000), read independently."""
    assert data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL"
    group_length: int = struct.unpack_from("<L", data, 140)[0]
    return 144 + group_length


def test_dataset_bytes_is_the_tail_after_the_file_meta(spread_files: list[Path]) -> None:
    for path in spread_files:
        data = path.read_bytes()
        body = dicomgen.dataset_bytes(path)
        assert body == data[_meta_end(data) :], path.name
        syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        if syntax == uids.DeflatedExplicitVRLittleEndian:
            body = zlib.decompress(body, -zlib.MAX_WBITS)
        order = ">" if syntax == uids.ExplicitVRBigEndian else "<"
        (group,) = struct.unpack_from(order + "H", body)
        assert group == 0x0008, path.name  # the data set starts with (0008,xxxx)


def test_dataset_bytes_rejects_a_file_without_prefix(tmp_path: Path) -> None:
    path = tmp_path / "raw"
    path.write_bytes(b"\x00" * 200)
    with pytest.raises(ValueError, match="DICM"):
        dicomgen.dataset_bytes(path)


def test_big_endian_pixels_are_swapped_and_within_bits_stored(tmp_path: Path) -> None:
    path = dicomgen.write_instance(
        tmp_path / "be.dcm",
        sop_class_uid=uids.MRImageStorage,
        transfer_syntax_uid=uids.ExplicitVRBigEndian,
        size_bytes=8192,
    )
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == uids.ExplicitVRBigEndian
    assert ds.BitsStored == 12
    words = struct.unpack(f">{len(ds.PixelData) // 2}H", ds.PixelData)
    assert max(words) < 4096 and max(words) > 2048


def test_charset_and_attribute_overrides(tmp_path: Path) -> None:
    path = dicomgen.write_instance(
        tmp_path / "utf8.dcm",
        sop_class_uid=uids.SecondaryCaptureImageStorage,
        transfer_syntax_uid=uids.ExplicitVRLittleEndian,
        patient_name="Müller^Jürgen",
        charset="ISO_IR 192",
        PatientID="ID-42",
        AccessionNumber="ACC1",
    )
    ds = dcmread(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert "Müller".encode() in path.read_bytes()
    assert (ds.PatientID, ds.AccessionNumber) == ("ID-42", "ACC1")


def test_rejects_what_it_cannot_make(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no generator"):
        dicomgen.write_instance(
            tmp_path / "x.dcm",
            sop_class_uid=uids.RawDataStorage,
            transfer_syntax_uid=uids.ExplicitVRLittleEndian,
        )
    with pytest.raises(ValueError, match="no pixel data"):
        dicomgen.write_instance(
            tmp_path / "x.dcm",
            sop_class_uid=uids.BasicTextSRStorage,
            transfer_syntax_uid=uids.JPEGBaseline8Bit,
        )
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        dicomgen.write_instance(
            tmp_path / "x.dcm",
            sop_class_uid=uids.CTImageStorage,
            transfer_syntax_uid=uids.ExplicitVRLittleEndian,
            NotAKeyword=1,
        )
