"""Valid captures to fuzz from, and the Hypothesis strategies that break them.

The seeds are what a real SCU sends, built with dicomd's own codec: an A-ASSOCIATE-RQ proposing
Verification and CT Image Storage (with the user information sub-items real peers send), C-ECHO-RQ,
a C-STORE-RQ whose small CT dataset is cut into several PDVs, A-RELEASE-RQ and A-ABORT. A stream is a
list of these PDUs; the strategies below mutate it at three levels, so that the faults reach every
layer and not only the first header:

- PDU level: drop, repeat, reorder, splice PDUs of other sessions in, truncate the stream;
- inside a PDU: set/flip/insert/delete bytes, then (usually) repair the PDU-length so the reader
  accepts the frame and the fault reaches the items, PDVs or the command set inside;
- command level: a mutated DIMSE command set re-wrapped in a valid PDV and P-DATA-TF.

Everything here is pure (no I/O); the runner fuzz and the soak/crash benches reuse the seeds.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Callable
from typing import Literal

from hypothesis import strategies as st

from dicomd.dimse.fragments import fragment
from dicomd.dimse.messages import (
    CCancelRQ,
    CEchoRQ,
    CEchoRSP,
    CFindRQ,
    CFindRSP,
    CGetRQ,
    CGetRSP,
    CMoveRQ,
    CMoveRSP,
    CStoreRQ,
    CStoreRSP,
    Message,
    Priority,
    encode_command,
)
from dicomd.ul.codes import AbortReason, AbortSource, UserIdentityType
from dicomd.ul.items import (
    AsynchronousOperationsWindow,
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PresentationContextRQ,
    RoleSelection,
    UnknownUserItem,
    UserIdentityRQ,
    UserInformation,
)
from dicomd.ul.pdu import PDV, Abort, AssociateRQ, PDataTF, ReleaseRQ, encode

APP_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
SEED_STUDY = "1.2.826.0.1.3680043.8.498.1.1"
SEED_INSTANCE = "1.2.826.0.1.3680043.8.498.1.9001"
MAX_PDU = 16384  # what the seed requestor accepts


def associate_rq(
    *,
    calling: str = "FUZZSCU",
    called: str = "DICOMD",
    contexts: tuple[PresentationContextRQ, ...] | None = None,
    max_length: int = MAX_PDU,
) -> AssociateRQ:
    if contexts is None:
        contexts = (
            PresentationContextRQ(1, VERIFICATION, (IMPLICIT, EXPLICIT)),
            PresentationContextRQ(3, CT, (IMPLICIT,)),
            PresentationContextRQ(5, CT, (DEFLATED,)),
            PresentationContextRQ(7, STUDY_FIND, (IMPLICIT,)),
            PresentationContextRQ(9, STUDY_GET, (IMPLICIT,)),
            PresentationContextRQ(11, STUDY_MOVE, (IMPLICIT,)),
        )
    return AssociateRQ(
        called_ae_title=called,
        calling_ae_title=calling,
        application_context=APP_CONTEXT,
        presentation_contexts=contexts,
        user_information=UserInformation(
            (
                MaximumLength(max_length),
                ImplementationClassUID("1.2.276.0.7230010.3.0.3.6.9"),
                ImplementationVersionName("OFFIS_DCMTK_369"),
                AsynchronousOperationsWindow(1, 1),
                RoleSelection(CT, True, True),  # C-GET sends its C-STOREs back on context 3
                UserIdentityRQ(UserIdentityType.USERNAME, False, b"fuzz", b""),
                UnknownUserItem(0x5A, b"xyz"),
            )
        ),
    )


def _element(group: int, element: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element (even length: UIDs padded with NUL, text with space)."""
    return struct.pack("<HHI", group, element, len(value)) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\x00" * (len(raw) % 2)


# Study-level identifiers (Implicit VR LE): Query/Retrieve Level, Patient's Name as a return key for
# C-FIND, and the Study Instance UID of the seed instance (so C-GET/C-MOVE have something to send).
FIND_IDENTIFIER = (
    _element(0x0008, 0x0052, b"STUDY ")
    + _element(0x0010, 0x0010, b"")
    + _element(0x0020, 0x000D, b"")
)
RETRIEVE_IDENTIFIER = _element(0x0008, 0x0052, b"STUDY ") + _element(
    0x0020, 0x000D, _ui(SEED_STUDY)
)


def ct_dataset(sop_instance: str = SEED_INSTANCE, *, pixels: int = 1024) -> bytes:
    """A small CT dataset in Implicit VR Little Endian, written by hand (no pydicom needed)."""

    ui = _ui

    def text(value: str) -> bytes:
        raw = value.encode()
        return raw + b" " * (len(raw) % 2)

    return b"".join(
        [
            _element(0x0008, 0x0016, ui(CT)),
            _element(0x0008, 0x0018, ui(sop_instance)),
            _element(0x0008, 0x0020, text("20260101")),
            _element(0x0008, 0x0060, text("CT")),
            # (0008,1140) Referenced Image Sequence, undefined length, one empty item: the scanner's
            # sequence path gets exercised by the mutations too.
            struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
            + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
            + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0),
            _element(0x0010, 0x0010, text("Fuzz^Patient")),
            _element(0x0010, 0x0020, text("FUZZ1")),
            _element(0x0020, 0x000D, ui(SEED_STUDY)),
            _element(0x0020, 0x000E, ui("1.2.826.0.1.3680043.8.498.1.1.1")),
            _element(0x7FE0, 0x0010, bytes(range(256)) * (pixels // 256)),
        ]
    )


def deflate(dataset: bytes) -> bytes:
    """A dataset as Deflated Explicit VR Little Endian carries it (raw deflate, PS3.5 A.5).

    The seed is Implicit VR inside the deflate stream, which dicomd reads as Explicit VR: it is
    refused (C000-class), which is a path worth fuzzing as much as the happy one.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(dataset) + compressor.flush()


def command_pdus(message: Message, context_id: int = 1, max_pdu: int = MAX_PDU) -> list[bytes]:
    return [
        encode(p)
        for p in fragment(
            context_id, encode_command(message), is_command=True, max_pdu_length=max_pdu
        )
    ]


def dataset_pdus(dataset: bytes, context_id: int, max_pdu: int) -> list[bytes]:
    return [
        encode(p) for p in fragment(context_id, dataset, is_command=False, max_pdu_length=max_pdu)
    ]


def echo_pdus(message_id: int = 1) -> list[bytes]:
    return command_pdus(CEchoRQ(message_id, VERIFICATION), 1)


def store_pdus(
    message_id: int = 2,
    sop_instance: str = SEED_INSTANCE,
    dataset: bytes | None = None,
    *,
    context_id: int = 3,
    max_pdu: int = 1024,  # small: several dataset PDVs, so fragment boundaries get fuzzed too
) -> list[bytes]:
    data = ct_dataset(sop_instance) if dataset is None else dataset
    return [
        *command_pdus(CStoreRQ(message_id, CT, sop_instance), context_id),
        *dataset_pdus(data, context_id, max_pdu),
    ]


RQ = encode(associate_rq())
RELEASE = encode(ReleaseRQ())
ABORT = encode(Abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED))
ECHO = echo_pdus(1)
STORE = store_pdus(2)
STORE_DEFLATED = store_pdus(3, dataset=deflate(ct_dataset()), context_id=5)
FIND = [
    *command_pdus(CFindRQ(4, STUDY_FIND, Priority.LOW), 7),
    *dataset_pdus(FIND_IDENTIFIER, 7, MAX_PDU),
]
CANCEL = command_pdus(CCancelRQ(4), 7)
GET = [*command_pdus(CGetRQ(5, STUDY_GET), 9), *dataset_pdus(RETRIEVE_IDENTIFIER, 9, MAX_PDU)]
MOVE = [
    *command_pdus(CMoveRQ(6, STUDY_MOVE, "NOWHERE"), 11),
    *dataset_pdus(RETRIEVE_IDENTIFIER, 11, MAX_PDU),
]

# Whole sessions, as a list of PDUs each.
SESSIONS: list[list[bytes]] = [
    [RQ, *ECHO, RELEASE],
    [RQ, *STORE, RELEASE],
    [RQ, *ECHO, *STORE, *ECHO, RELEASE],
    [RQ, *STORE_DEFLATED, *FIND, *CANCEL, RELEASE],
    [RQ, *STORE, *FIND, *GET, *MOVE, RELEASE],
    [RQ, *STORE[:3], ABORT],
]
# Every distinct PDU of the sessions: the material that splicing draws from.
POOL: list[bytes] = sorted(
    {pdu for session in SESSIONS for pdu in session}, key=lambda p: (len(p), p)
)

# Command sets of every DIMSE-C message, for the command decoder.
COMMANDS: list[bytes] = [
    encode_command(m)
    for m in (
        CEchoRQ(1, VERIFICATION),
        CEchoRSP(1, VERIFICATION, 0x0000),
        CStoreRQ(7, CT, SEED_INSTANCE, Priority.HIGH, "MOVESCU", 99),
        CStoreRSP(7, CT, SEED_INSTANCE, 0xA700, "out of disk space", (0x00080018,)),
        CFindRQ(2, STUDY_FIND, Priority.LOW),
        CFindRSP(2, STUDY_FIND, 0xFF00, True),
        CGetRQ(3, STUDY_GET),
        CGetRSP(3, None, 0xB000, True, 0, 5, 1, 0, "one failed", (0x00100020, 0x0020000D)),
        CMoveRQ(4, STUDY_MOVE, "VIEWER"),
        CMoveRSP(4, STUDY_MOVE, 0xFF00, False, 3, 2, 0, 0),
        CCancelRQ(4),
    )
]

# --- byte-level mutation -----------------------------------------------------------------------

_INTERESTING = [0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xFE, 0xFF]


def mutate_bytes(data: bytes, choose: Callable[[int, int], int], n: int) -> bytes:
    """n random edits of `data`; `choose(lo, hi)` picks an integer in [lo, hi] (Hypothesis or random)."""
    out = bytearray(data)
    for _ in range(n):
        if not out:
            out += bytes([_INTERESTING[choose(0, len(_INTERESTING) - 1)]])
            continue
        position = choose(0, len(out) - 1)
        op = choose(0, 6)
        if op == 0:
            out[position] = _INTERESTING[choose(0, len(_INTERESTING) - 1)]
        elif op == 1:
            out[position] ^= 1 << choose(0, 7)
        elif op == 2:
            out[position : position + 1] = bytes([choose(0, 255)]) * choose(1, 8)
        elif op == 3:
            del out[position : position + choose(1, 16)]
        elif op == 4:
            # A 16- or 32-bit field set to an extreme: lengths, counts, tags.
            width = 2 if choose(0, 1) else 4
            value = [0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFE][choose(0, 6)]
            value &= (1 << (8 * width)) - 1
            out[position : position + width] = value.to_bytes(width, choose_order(choose))
        elif op == 5:
            end = choose(position, len(out))
            out[position:position] = out[position:end]  # duplicate a run
        else:
            del out[position:]
    return bytes(out)


def choose_order(choose: Callable[[int, int], int]) -> Literal["big", "little"]:
    return "big" if choose(0, 1) else "little"


def fix_pdu_length(pdu: bytes) -> bytes:
    if len(pdu) < 6:
        return pdu
    return pdu[:2] + struct.pack(">L", len(pdu) - 6) + pdu[6:]


def wrap_command(command: bytes, context_id: int = 1, control: int = 0x03) -> bytes:
    return encode(PDataTF((PDV(context_id, control, command),)))


def mutate_stream(rng: random.Random, *, max_edits: int = 4) -> bytes:
    """A seeded (non-Hypothesis) mutated session: for corpus replays, the residue test, benches."""

    def choose(lo: int, hi: int) -> int:
        return rng.randint(lo, hi)

    session = list(rng.choice(SESSIONS))
    for _ in range(rng.randint(0, 3)):
        kind = rng.randint(0, 5)
        i = rng.randrange(len(session))
        if kind == 0:
            session[i] = fix_pdu_length(mutate_bytes(session[i], choose, rng.randint(1, max_edits)))
        elif kind == 1:
            session[i] = mutate_bytes(session[i], choose, rng.randint(1, max_edits))
        elif kind == 2:
            session.insert(i, rng.choice(POOL))
        elif kind == 3 and len(session) > 1:
            del session[i]
        elif kind == 4:
            j = rng.randrange(len(session))
            session[i], session[j] = session[j], session[i]
        else:
            command = mutate_bytes(rng.choice(COMMANDS), choose, rng.randint(1, max_edits))
            session.insert(i, wrap_command(command, rng.choice([1, 3, 5, 7, 9, 11, 13])))
    stream = b"".join(session)
    if rng.random() < 0.2:
        stream = stream[: rng.randint(0, len(stream))]
    return stream


# --- Hypothesis strategies -------------------------------------------------------------------


def _chooser(draw: st.DrawFn) -> Callable[[int, int], int]:
    return lambda lo, hi: draw(st.integers(min_value=lo, max_value=hi))


@st.composite
def mutated_pdu(draw: st.DrawFn, seeds: list[bytes] = POOL) -> bytes:
    pdu = mutate_bytes(draw(st.sampled_from(seeds)), _chooser(draw), draw(st.integers(1, 4)))
    # Usually keep the frame valid so that the fault reaches what is inside the PDU.
    return fix_pdu_length(pdu) if draw(st.integers(0, 3)) else pdu


@st.composite
def mutated_command_pdu(draw: st.DrawFn) -> bytes:
    command = draw(mutated_command())
    context_id = draw(st.sampled_from([1, 3, 5, 7, 9, 11, 13, 255]))
    control = draw(st.sampled_from([0x03, 0x01, 0x02, 0x00, 0xFF]))
    return wrap_command(command, context_id, control)


@st.composite
def mutated_command(draw: st.DrawFn) -> bytes:
    return mutate_bytes(draw(st.sampled_from(COMMANDS)), _chooser(draw), draw(st.integers(1, 5)))


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """A session made of valid PDUs, with some of them mutated, spliced, dropped or swapped."""
    session = list(draw(st.sampled_from(SESSIONS)))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(session) - 1))
        kind = draw(st.sampled_from(["mutate", "splice", "drop", "swap", "command", "repeat"]))
        if kind == "mutate":
            session[i] = draw(mutated_pdu([session[i]]))
        elif kind == "splice":
            session.insert(i, draw(st.sampled_from(POOL)))
        elif kind == "drop" and len(session) > 1:
            del session[i]
        elif kind == "swap":
            j = draw(st.integers(0, len(session) - 1))
            session[i], session[j] = session[j], session[i]
        elif kind == "command":
            session.insert(i, draw(mutated_command_pdu()))
        elif kind == "repeat":
            session[i:i] = [session[i]] * draw(st.integers(1, 4))
    stream = b"".join(session)
    if draw(st.integers(0, 9)) == 0:
        stream = stream[: draw(st.integers(0, len(stream)))]
    if draw(st.integers(0, 9)) == 0:
        stream += draw(st.binary(min_size=1, max_size=64))  # trailing garbage
    return stream


# Regression inputs: byte strings that once broke (or nearly broke) a layer. Kept as explicit
# examples in the tests that replay them.
REGRESSIONS: list[bytes] = [
    b"",
    RQ[:5],
    RQ + b"\x04\x00\x00\x00\x00\x00",  # P-DATA-TF without any PDV
    RQ + b"\x04\x00\xff\xff\xff\xff",  # P-DATA-TF announcing 4 GiB
    RQ + b"\x08\x00\x00\x00\x00\x04abcd",  # unknown PDU type
    RQ + wrap_command(b"", 1),  # empty command set
    RQ + wrap_command(COMMANDS[2], 1),  # C-STORE-RQ on the Verification context
    RQ + wrap_command(COMMANDS[0], 9),  # a context that was never proposed
    RQ + STORE[0] + RELEASE,  # release in the middle of a dataset
    RQ + STORE[0] + STORE[0],  # a second command instead of the dataset
    RQ + b"".join(STORE[1:]),  # a dataset without its command
    RQ + ABORT + RQ,  # anything after an abort
    RQ + RQ,  # a second A-ASSOCIATE-RQ
]
