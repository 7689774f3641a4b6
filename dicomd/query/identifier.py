"""The C-FIND request identifier: bytes -> a checked Query, or the failure status that answers it.

Owns: decoding the identifier (bounded: the structure is walked by storage/scan.py before pydicom
reads it, a Deflated one inflates to at most MAX_INFLATED), the Query/Retrieve Level, the
hierarchical rules (PS3.4 C.4.1.2.2.1) and where each key stands relative to the query level.
Must not know: SQL, the network.

PS3.4 C.4.1.1.3.1: the identifier holds the Query/Retrieve Level, the keys, and the Specific
Character Set when the values need one; text is decoded with it here (pydicom), so the matching and
the index compare Unicode with Unicode, whatever character set the instances were stored in.

Hierarchical (no relational queries negotiated): each level above the query level must be pinned by
its unique key with a single value, or the request is answered A900 with that key as the Offending
Element. Relational: any key at or above the query level may be given, or none. Either way, keys of
higher levels are matched and answered (they describe the entity's parents), and keys below the
query level are answered empty and not matched (FF01 when they had a value).
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from dicomd.dimse import status
from dicomd.query.model import KEYS, UNIQUE_KEYS, InformationModel, KeyDef, Level
from dicomd.storage.scan import ScanError, scan
from dicomd.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
)

__all__ = [
    "MAX_INFLATED",
    "Placement",
    "Query",
    "QueryError",
    "RequestedKey",
    "element_text",
    "parse_identifier",
    "tags",
]

MAX_INFLATED: Final = 16 * 1024 * 1024

SPECIFIC_CHARACTER_SET: Final = 0x00080005
QUERY_RETRIEVE_LEVEL: Final = 0x00080052
QUERY_RETRIEVE_VIEW: Final = 0x00080053
RETRIEVE_AE_TITLE: Final = 0x00080054
# Keys the identifier may carry that are not matched against anything and not answered as keys.
_NOT_KEYS: Final = frozenset({SPECIFIC_CHARACTER_SET, QUERY_RETRIEVE_LEVEL, QUERY_RETRIEVE_VIEW})


class QueryError(Exception):
    """The request cannot be answered with matches: a failure status, comment, offending tags."""

    def __init__(self, code: int, comment: str, offending: tuple[int, ...] = ()) -> None:
        super().__init__(comment)
        self.code = code
        self.comment = comment
        self.offending = offending


class Placement(Enum):
    ANSWERED = "answered"  # at or above the query level: matched and answered
    BELOW = "below"  # below the query level: answered empty, not matched


@dataclass(frozen=True, slots=True)
class RequestedKey:
    tag: int
    vr: str  # the VR to answer with
    value: str  # text of the matching value ("" universal; "" for a sequence)
    definition: KeyDef | None  # None: no column, answered from the kept attributes
    placement: Placement
    item: Dataset | None = None  # a sequence key's query item (None: no item)

    @property
    def keyword(self) -> str:
        return (
            self.definition.keyword
            if self.definition
            else f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"
        )


@dataclass(frozen=True, slots=True)
class Query:
    model: InformationModel
    level: Level
    keys: tuple[RequestedKey, ...]
    charsets: tuple[str, ...]  # the identifier's Specific Character Set, () when absent
    relational: bool
    combined_datetime: bool
    retrieve_ae_title_requested: bool = False

    def key(self, tag: int) -> RequestedKey | None:
        for k in self.keys:
            if k.tag == tag:
                return k
        return None


def read_identifier(data: bytes, transfer_syntax: str) -> Dataset:
    """The identifier as a pydicom Dataset, its structure checked first; QueryError (C001) if not."""
    if transfer_syntax == DEFLATED_EXPLICIT_VR_LE:
        data = _inflate(data)
        transfer_syntax = EXPLICIT_VR_LE
    try:
        # The bounded walk: nesting depth, element count and lengths, before pydicom recurses.
        scan(io.BytesIO(data), 0, len(data), transfer_syntax)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return read_dataset(
                io.BytesIO(data),
                transfer_syntax == IMPLICIT_VR_LE,
                transfer_syntax != EXPLICIT_VR_BE,
            )
    except ScanError as e:
        raise QueryError(status.UNABLE_TO_PROCESS, f"cannot parse identifier: {e}") from e
    except Exception as e:
        raise QueryError(status.UNABLE_TO_PROCESS, f"cannot parse identifier: {e}") from e


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED + 1)
    except zlib.error as e:
        raise QueryError(status.UNABLE_TO_PROCESS, f"invalid deflated identifier: {e}") from e
    if len(out) > MAX_INFLATED or inflater.unconsumed_tail:
        raise QueryError(status.UNABLE_TO_PROCESS, "deflated identifier inflates too far")
    return out


def tags(ds: Dataset) -> list[int]:
    """The tags of a dataset's elements, in order (iterating a Dataset yields its elements)."""
    return sorted(int(t) for t in ds.keys())  # noqa: SIM118


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace")
    if isinstance(value, PersonName):
        return str(value)
    return str(value)


def element_text(element: DataElement) -> str:
    """An element's value as text: values joined with "\\", padding stripped."""
    value = element.value
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_scalar(v).strip(" \x00") for v in value)
    return _scalar(value).strip(" \x00")


def _level(ds: Dataset, model: InformationModel) -> Level:
    try:
        element = ds.get(QUERY_RETRIEVE_LEVEL)
        text = element_text(element).upper() if element is not None else ""
    except Exception:
        text = ""
    level = Level.__members__.get(text)
    if level is None or level not in model.levels:
        allowed = "/".join(level.name for level in model.levels)
        raise QueryError(
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"Query/Retrieve Level {text or '(missing)'!r} is not {allowed}",
            (QUERY_RETRIEVE_LEVEL,),
        )
    return level


def _charsets(ds: Dataset) -> tuple[str, ...]:
    if SPECIFIC_CHARACTER_SET not in ds:
        return ()
    try:
        text = element_text(ds[SPECIFIC_CHARACTER_SET])
    except Exception:
        return ()
    values = tuple(v.strip(" ") for v in text.split("\\"))
    return values if any(values) else ()


def parse_identifier(
    ds: Dataset, model: InformationModel, *, relational: bool, combined_datetime: bool
) -> Query:
    """Check the identifier against the model; QueryError (A900) names what does not fit."""
    level = _level(ds, model)
    charsets = _charsets(ds)
    keys: list[RequestedKey] = []
    retrieve_ae = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag in tags(ds):
            group, elem = tag >> 16, tag & 0xFFFF
            if tag in _NOT_KEYS or group in (0x0000, 0x0002) or elem == 0 or group & 1:
                # Command, meta and group-length elements have no place here; private keys are
                # not supported (answered by leaving them out).
                continue
            if tag == RETRIEVE_AE_TITLE:
                retrieve_ae = True  # answered always, with ours
                continue
            keys.append(_key(ds, tag, model, level))
    query = Query(model, level, tuple(keys), charsets, relational, combined_datetime, retrieve_ae)
    if not relational:
        _check_hierarchical(query)
    return query


def _key(ds: Dataset, tag: int, model: InformationModel, level: Level) -> RequestedKey:
    try:
        element = ds[tag]
        vr = str(element.VR)
        if vr == "SQ":
            items = element.value if isinstance(element.value, Sequence) else []
            item = items[0] if len(items) else None
            value = ""
        else:
            item = None
            value = element_text(element)
    except Exception as e:
        raise QueryError(
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"cannot read ({tag >> 16:04X},{tag & 0xFFFF:04X}): {e}",
            (tag,),
        ) from e
    definition = KEYS.get(tag)
    if definition is not None:
        vr = definition.vr
        placement = Placement.BELOW if model.level_of(definition) > level else Placement.ANSWERED
    else:
        placement = Placement.ANSWERED
    return RequestedKey(tag, vr, value, definition, placement, item)


def _check_hierarchical(query: Query) -> None:
    for above in query.model.levels:
        if above >= query.level:
            break
        tag = UNIQUE_KEYS[above]
        key = query.key(tag)
        value = key.value if key is not None else ""
        if not value or "\\" in value or "*" in value or "?" in value:
            name = KEYS[tag].keyword
            raise QueryError(
                status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"{query.level.name} query needs one {name} (no relational queries negotiated)",
                (tag,),
            )
