"""Hypothesis round-trips for every PDU and item, and fuzzing of decode() and PDUReader.

Round-trip: decode(encode(x)) == x for valid field values.
Fuzz: on arbitrary bytes and on mutations of valid PDUs, decoding returns a PDU or raises
RemoteProtocolError, never anything else; what it returns re-encodes, and decodes to itself.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from dicomd.ul.codes import (
    AbortReason,
    AbortSource,
    ContextResult,
    RejectResult,
    RejectSource,
    RemoteProtocolError,
    UserIdentityType,
)
from dicomd.ul.items import (
    ApplicationContextItem,
    AsynchronousOperationsWindow,
    ImplementationClassUID,
    ImplementationVersionName,
    Item,
    MaximumLength,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownUserItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    UserItem,
    decode_item,
    encode_item,
)
from dicomd.ul.pdu import (
    PDU,
    PDV,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    ReleaseRP,
    ReleaseRQ,
    decode,
    encode,
)
from dicomd.ul.reader import PDUReader

# --- strategies for valid field values ---------------------------------------------------------

uids = st.text(alphabet="0123456789.", min_size=1, max_size=64)
printable = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
ae_titles = st.text(alphabet=printable, min_size=1, max_size=16).filter(
    lambda s: s == s.strip(" ") and s != ""
)
version_names = st.text(alphabet=printable, min_size=1, max_size=16).filter(
    lambda s: s == s.rstrip(" ")
)
u8 = st.integers(min_value=0, max_value=0xFF)
u16 = st.integers(min_value=0, max_value=0xFFFF)
u32 = st.integers(min_value=0, max_value=0xFFFF_FFFF)
context_ids = st.integers(min_value=1, max_value=255)
small_bytes = st.binary(max_size=64)

context_results = st.builds(ContextResult, u8)

presentation_contexts_rq = st.builds(
    PresentationContextRQ, context_ids, uids, st.lists(uids, max_size=4).map(tuple)
)
presentation_contexts_ac = st.one_of(
    st.builds(PresentationContextAC, context_ids, context_results, uids),
    # Not significant when rejected: sent empty.
    st.builds(
        PresentationContextAC,
        context_ids,
        st.builds(ContextResult, st.integers(min_value=1, max_value=255)),
        st.just(""),
    ),
)
role_selections = st.builds(RoleSelection, uids, st.booleans(), st.booleans())
extended_negotiations = st.builds(SOPClassExtendedNegotiation, uids, small_bytes)
common_extended_negotiations = st.builds(
    SOPClassCommonExtendedNegotiation, uids, uids, st.lists(uids, max_size=4).map(tuple)
)
user_identities_rq = st.builds(
    UserIdentityRQ, st.builds(UserIdentityType, u8), st.booleans(), small_bytes, small_bytes
)
user_identities_ac = st.builds(UserIdentityAC, small_bytes)
unknown_user_items = st.builds(
    UnknownUserItem,
    u8.filter(lambda t: not 0x51 <= t <= 0x59),
    small_bytes,
)
# Sub-items that may appear at most once, each given as an optional strategy.
single_user_items: list[st.SearchStrategy[UserItem]] = [
    st.builds(MaximumLength, u32),
    st.builds(ImplementationClassUID, uids),
    st.builds(ImplementationVersionName, version_names),
    st.builds(AsynchronousOperationsWindow, u16, u16),
    user_identities_rq,
    user_identities_ac,
]
repeatable_user_items: st.SearchStrategy[UserItem] = st.one_of(
    role_selections, extended_negotiations, common_extended_negotiations, unknown_user_items
)


@st.composite
def user_informations(draw: st.DrawFn) -> UserInformation:
    items: list[UserItem] = [
        draw(strategy) for strategy in single_user_items if draw(st.booleans())
    ]
    items += draw(st.lists(repeatable_user_items, max_size=5))
    return UserInformation(tuple(draw(st.permutations(items))))


any_user_item: st.SearchStrategy[UserItem] = st.one_of(*single_user_items, repeatable_user_items)
items: st.SearchStrategy[Item] = st.one_of(
    st.builds(ApplicationContextItem, uids),
    presentation_contexts_rq,
    presentation_contexts_ac,
    user_informations(),
)

associate_rqs = st.builds(
    AssociateRQ,
    ae_titles,
    ae_titles,
    uids,
    st.lists(presentation_contexts_rq, max_size=5).map(tuple),
    user_informations(),
    u16,
)
associate_acs = st.builds(
    AssociateAC,
    ae_titles,
    ae_titles,
    uids,
    st.lists(presentation_contexts_ac, max_size=5).map(tuple),
    user_informations(),
    u16,
)
associate_rjs = st.builds(AssociateRJ, st.builds(RejectResult, u8), st.builds(RejectSource, u8), u8)
pdvs = st.builds(PDV, u8, u8, st.binary(max_size=300))
p_data_tfs = st.builds(PDataTF, st.lists(pdvs, min_size=1, max_size=5).map(tuple))
aborts = st.builds(Abort, st.builds(AbortSource, u8), st.builds(AbortReason, u8))
pdus: st.SearchStrategy[PDU] = st.one_of(
    associate_rqs,
    associate_acs,
    associate_rjs,
    p_data_tfs,
    st.just(ReleaseRQ()),
    st.just(ReleaseRP()),
    aborts,
)

# --- round-trips -------------------------------------------------------------------------------


@given(associate_rqs)
def test_associate_rq_roundtrip(pdu: AssociateRQ) -> None:
    assert decode(encode(pdu)) == pdu


@given(associate_acs)
def test_associate_ac_roundtrip(pdu: AssociateAC) -> None:
    assert decode(encode(pdu)) == pdu


@given(associate_rjs)
def test_associate_rj_roundtrip(pdu: AssociateRJ) -> None:
    assert decode(encode(pdu)) == pdu


@given(p_data_tfs)
def test_p_data_tf_roundtrip(pdu: PDataTF) -> None:
    assert decode(encode(pdu)) == pdu


@given(aborts)
def test_abort_roundtrip(pdu: Abort) -> None:
    assert decode(encode(pdu)) == pdu


def test_release_roundtrip() -> None:
    assert decode(encode(ReleaseRQ())) == ReleaseRQ()
    assert decode(encode(ReleaseRP())) == ReleaseRP()
    assert decode(encode(ReleaseRQ())) != ReleaseRP()


@given(items)
def test_item_roundtrip(item: Item) -> None:
    assert decode_item(encode_item(item)) == item


@given(any_user_item)
def test_user_item_roundtrip(item: UserItem) -> None:
    encoded = encode_item(item)
    if isinstance(item, UnknownUserItem):
        # Only a user information item knows to keep an unknown sub-item; alone it is foreign.
        info = UserInformation((item,))
        assert decode_item(encode_item(info)) == info
    else:
        assert decode_item(encoded) == item


@given(st.lists(pdus, min_size=1, max_size=6), st.integers(min_value=1, max_value=50))
def test_reader_roundtrip(sequence: list[PDU], chunk: int) -> None:
    stream = b"".join(encode(pdu) for pdu in sequence)
    reader = PDUReader(1 << 20)
    out: list[PDU] = []
    for start in range(0, len(stream), chunk):
        reader.feed(stream[start : start + chunk])
        while (pdu := reader.next_pdu()) is not None:
            out.append(pdu)
    assert out == sequence


def test_large_pdv_roundtrip() -> None:
    data = bytes(range(256)) * 4096
    pdu = PDataTF((PDV(1, 0x02, data), PDV(3, 0x03, b"")))
    assert decode(encode(pdu)) == pdu


# --- fuzzing -----------------------------------------------------------------------------------

_SEED_PDUS: list[PDU] = [
    AssociateRQ(
        "ANY-SCP",
        "ECHOSCU",
        "1.2.840.10008.3.1.1.1",
        (
            PresentationContextRQ(1, "1.2.840.10008.1.1", ("1.2.840.10008.1.2",)),
            PresentationContextRQ(3, "1.2.840.10008.5.1.4.1.1.2", ("1.2.840.10008.1.2.1", "1.2")),
        ),
        UserInformation(
            (
                MaximumLength(16384),
                ImplementationClassUID("1.2.276.0.7230010.3.0.3.6.9"),
                ImplementationVersionName("OFFIS_DCMTK_369"),
                AsynchronousOperationsWindow(5, 1),
                RoleSelection("1.2.840.10008.5.1.4.1.1.2", False, True),
                SOPClassExtendedNegotiation("1.2.840.10008.5.1.4.1.2.2.1", b"\x01\x01"),
                SOPClassCommonExtendedNegotiation("1.2.3", "1.2.840.10008.4.2", ("1.2", "1.3")),
                UserIdentityRQ(UserIdentityType.USERNAME_AND_PASSCODE, True, b"alice", b"pw"),
                UnknownUserItem(0x5A, b"abc"),
            )
        ),
    ),
    AssociateAC(
        "ANY-SCP",
        "ECHOSCU",
        "1.2.840.10008.3.1.1.1",
        (
            PresentationContextAC(1, ContextResult.ACCEPTANCE, "1.2.840.10008.1.2"),
            PresentationContextAC(3, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
        ),
        UserInformation(
            (MaximumLength(0), ImplementationClassUID("1.2.3"), UserIdentityAC(b"ticket"))
        ),
    ),
    AssociateRJ(RejectResult.REJECTED_PERMANENT, RejectSource.SERVICE_USER, 7),
    PDataTF((PDV(1, 0x03, b"\x00\x00\x02\x00"), PDV(1, 0x00, b"\xca\xfe"), PDV(3, 0x02, b""))),
    ReleaseRQ(),
    ReleaseRP(),
    Abort(AbortSource.SERVICE_PROVIDER, AbortReason.INVALID_PDU_PARAMETER_VALUE),
]
SEEDS = [encode(pdu) for pdu in _SEED_PDUS]


def _mutate(draw: st.DrawFn, seed: bytes) -> bytearray:
    data = bytearray(seed)
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        if not data:
            break
        position = draw(st.integers(min_value=0, max_value=len(data) - 1))
        operation = draw(st.sampled_from(["set", "flip", "insert", "delete", "truncate"]))
        if operation == "set":
            data[position] = draw(st.sampled_from([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF]))
        elif operation == "flip":
            data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del data[position : position + draw(st.integers(min_value=1, max_value=8))]
        else:
            del data[position:]
    return data


@st.composite
def mutated_pdus(draw: st.DrawFn) -> bytes:
    data = _mutate(draw, draw(st.sampled_from(SEEDS)))
    # Most of the time keep the PDU length consistent so that the mutation reaches the items.
    if len(data) >= 6 and draw(st.integers(min_value=0, max_value=3)) > 0:
        data[2:6] = struct.pack(">L", len(data) - 6)
    return bytes(data)


_RQ, _AC = _SEED_PDUS[0], _SEED_PDUS[1]
assert isinstance(_RQ, AssociateRQ) and isinstance(_AC, AssociateAC)
ITEM_SEEDS = [
    encode_item(item)
    for item in (
        ApplicationContextItem(_RQ.application_context),
        *_RQ.presentation_contexts,
        *_AC.presentation_contexts,
        _RQ.user_information,
        _AC.user_information,
        *_RQ.user_information.items[:-1],  # all but the UnknownUserItem
        *_AC.user_information.items,
    )
]


@st.composite
def mutated_items(draw: st.DrawFn) -> bytes:
    data = _mutate(draw, draw(st.sampled_from(ITEM_SEEDS)))
    if len(data) >= 4 and len(data) - 4 <= 0xFFFF and draw(st.integers(0, 3)) > 0:
        data[2:4] = struct.pack(">H", len(data) - 4)
    return bytes(data)


def check_decode(data: bytes) -> None:
    try:
        pdu = decode(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc.reason, AbortReason)
        return
    # Whatever decodes must re-encode, and decoding that gives the same PDU back (a fixpoint:
    # padding and unknown items are dropped once, the rest is kept).
    assert decode(encode(pdu)) == pdu


@settings(max_examples=800, deadline=None)
@given(mutated_pdus())
def test_fuzz_decode_mutations(data: bytes) -> None:
    check_decode(data)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_decode_arbitrary_bytes(data: bytes) -> None:
    check_decode(data)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=1, max_value=7), st.binary(max_size=400))
def test_fuzz_decode_consistent_header(pdu_type: int, body: bytes) -> None:
    check_decode(struct.pack(">BxL", pdu_type, len(body)) + body)


@settings(max_examples=500, deadline=None)
@given(mutated_items())
def test_fuzz_decode_item(data: bytes) -> None:
    try:
        item = decode_item(data)
    except RemoteProtocolError as exc:
        assert isinstance(exc.reason, AbortReason)
        return
    assert decode_item(encode_item(item)) == item


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(mutated_pdus(), st.sampled_from(SEEDS)), min_size=1, max_size=5),
    st.integers(min_value=1, max_value=64),
)
def test_fuzz_reader(chunks: list[bytes], size: int) -> None:
    stream = b"".join(chunks)
    reader = PDUReader(4096)
    try:
        for start in range(0, len(stream), size):
            reader.feed(stream[start : start + size])
            while reader.next_pdu() is not None:
                pass
    except RemoteProtocolError:
        assert reader.buffered == 0
        reader.feed(b"more")  # a failed reader stays failed, quietly
        try:
            reader.next_pdu()
        except RemoteProtocolError:
            return
        raise AssertionError("a failed reader returned to life") from None
