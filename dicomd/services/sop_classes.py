"""Which SOP classes and transfer syntaxes dicomd accepts for storage (PS3.4 Annex B).

Owns: the storage SOP class list, taken from pydicom's copy of the DICOM registry (PS3.6 Annex A) so
that new classes arrive with a pydicom upgrade, and the transfer syntaxes we can store as received.
The conformance statement is generated from these same lists.
"""

from __future__ import annotations

from pydicom._uid_dict import UID_dictionary

from dicomd.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
)

# Registry entries named "... Storage" that are not composite objects of a patient's study:
# DICOMDIR, Storage Commitment, print management, and the non-patient objects (hanging protocols,
# palettes, implant templates, procedure protocols, inventories) that have no Study to index under.
_NOT_STORAGE = frozenset(
    {
        "1.2.840.10008.1.3.10",  # Media Storage Directory Storage
        "1.2.840.10008.1.20.1",  # Storage Commitment Push Model
        "1.2.840.10008.1.20.2",  # Storage Commitment Pull Model (retired)
        "1.2.840.10008.5.1.1.27",  # Stored Print Storage (retired)
        "1.2.840.10008.5.1.1.29",  # Hardcopy Grayscale Image Storage (retired)
        "1.2.840.10008.5.1.1.30",  # Hardcopy Color Image Storage (retired)
        "1.2.840.10008.5.1.4.38.1",  # Hanging Protocol Storage
        "1.2.840.10008.5.1.4.39.1",  # Color Palette Storage
        "1.2.840.10008.5.1.4.43.1",  # Generic Implant Template Storage
        "1.2.840.10008.5.1.4.44.1",  # Implant Assembly Template Storage
        "1.2.840.10008.5.1.4.45.1",  # Implant Template Group Storage
        "1.2.840.10008.5.1.4.1.1.200.1",  # CT Defined Procedure Protocol Storage
        "1.2.840.10008.5.1.4.1.1.200.3",  # Protocol Approval Storage
        "1.2.840.10008.5.1.4.1.1.200.7",  # XA Defined Procedure Protocol Storage
        "1.2.840.10008.5.1.4.1.1.201.1",  # Inventory Storage
    }
)


def _storage_sop_classes() -> frozenset[str]:
    return frozenset(
        uid
        for uid, (name, kind, *_rest) in UID_dictionary.items()
        if kind == "SOP Class" and "Storage" in name and uid not in _NOT_STORAGE
    )


STORAGE_SOP_CLASSES: frozenset[str] = _storage_sop_classes()

# Our default order of preference when one presentation context proposes several. A proposal of a
# compressed syntax means the SCU holds the image that way (DCMTK's storescu offers the file's own
# syntax beside the uncompressed ones): choosing it stores the object exactly as received, with no
# transcoding on either side. So: compressed first (lossless before lossy), then Deflated, then the
# native encodings. This is also the order of DCMTK storescp with --accept-all.
DEFAULT_STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.100.1",
    "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.101.1",
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.102.1",
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible
    "1.2.840.10008.1.2.4.103.1",
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 Level 4.2 2D
    "1.2.840.10008.1.2.4.104.1",
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 Level 4.2 3D
    "1.2.840.10008.1.2.4.105.1",
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo
    "1.2.840.10008.1.2.4.106.1",
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile
    "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    EXPLICIT_VR_BE,  # retired, still sent by old equipment
)


def is_known_transfer_syntax(uid: str) -> bool:
    entry = UID_dictionary.get(uid)
    return entry is not None and entry[1] == "Transfer Syntax"


def uid_name(uid: str) -> str:
    entry = UID_dictionary.get(uid)
    return entry[0] if entry is not None else uid
