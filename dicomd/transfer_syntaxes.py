"""The transfer syntaxes that dicomd itself encodes or decodes (PS3.5 Section 10, UIDs from PS3.6
Annex A): every module that tells them apart imports them from here, and every encoder that writes
Deflated calls deflate().

Spelled out rather than taken from pydicom.uid, so that a mover process (net/mover_process.py),
which never decodes a dataset, can use them without loading pydicom. The compressed syntaxes,
which dicomd only stores and sends as received, are listed in services/sop_classes.py.
"""

import zlib
from typing import Final

IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BE: Final = "1.2.840.10008.1.2.2"  # retired, still received from old modalities
DEFLATED_EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1.99"


def deflate(data: bytes) -> bytes:
    """An encoded Explicit VR Little Endian dataset as Deflated carries it (PS3.5 A.5): the raw
    deflate stream of RFC 1951, no zlib header or checksum."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()
