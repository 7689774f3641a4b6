"""Association negotiation as acceptor: an A-ASSOCIATE-RQ and a policy in, an AC or RJ out.

Owns: which associations and presentation contexts we accept, and why we reject the others
(PS3.8 7.1.1 and 9.3.2-9.3.4, PS3.7 Annex D.3.3 for the user information sub-items).
Must not know: sockets, timers, DIMSE. Pure functions over the PDU dataclasses.

Rejections come in two layers, as in the standard:
- `screen()` is the service-provider's check (state machine action AE-6): a protocol version we do not
  speak, or the association limit. It runs before the request reaches the application.
- `negotiate()` is the service-user's decision (EVT7/EVT8): application context, AE titles, and the
  per-context results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from dicomd.ul.codes import (
    AcseRejectReason,
    ContextResult,
    PresentationRejectReason,
    RejectResult,
    RejectSource,
    UserRejectReason,
)
from dicomd.ul.items import (
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassExtendedNegotiation,
    UserInformation,
    UserItem,
)
from dicomd.ul.pdu import AssociateAC, AssociateRJ, AssociateRQ

# PS3.7 Annex A.2.1: the only application context name DICOM defines.
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """A presentation context we accepted, with the roles each side may take on it (PS3.7 D.3.3.4)."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    # Roles of the association-requestor; we take the opposite ones.
    requestor_is_scu: bool = True
    requestor_is_scp: bool = False
    # Our answer to the requestor's SOP class extended negotiation for this abstract syntax
    # (PS3.7 D.3.3.5), b"" when there was none: what the service may rely on (Q/R: relational
    # queries, combined date-time matching).
    extended_negotiation: bytes = b""


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """A presentation context we propose as association-requestor."""

    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]
    # Role selection (PS3.7 D.3.3.4); None leaves the default (the requestor is SCU only).
    scu_role: bool | None = None
    scp_role: bool | None = None


@dataclass(frozen=True, slots=True)
class AcceptorPolicy:
    ae_title: str
    implementation_class_uid: str
    implementation_version_name: str
    # SOP class UID -> transfer syntaxes we accept for it, in our order of preference.
    abstract_syntaxes: Mapping[str, tuple[str, ...]]
    max_pdu_length: int
    reject_wrong_called_ae: bool = True
    allowed_calling_aets: frozenset[str] = frozenset()
    # SOP classes on which the requestor may take the SCP role (C-GET sends its C-STOREs that way).
    requestor_scp_allowed: frozenset[str] = frozenset()
    # SOP class UID -> answer to the requestor's extended negotiation info (None: not supported).
    extended_negotiation: Mapping[str, Callable[[bytes], bytes | None]] = field(
        default_factory=dict
    )


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What the AC established: the contexts we may use and the peer's limits."""

    response: AssociateAC
    contexts: Mapping[int, AcceptedContext]
    # The largest PDU the peer accepts from us; 0 means no limit (PS3.8 D.1).
    peer_max_pdu_length: int
    extended: Mapping[str, bytes]


def screen(
    rq: AssociateRQ, *, active_associations: int, max_associations: int
) -> AssociateRJ | None:
    """The service-provider's acceptability check of PS3.8 action AE-6 (None: acceptable)."""
    if not rq.protocol_version & 0x0001:
        # PS3.8 9.3.2: bit 0 set means version 1; a peer without it speaks something we do not.
        return AssociateRJ(
            RejectResult.REJECTED_PERMANENT,
            RejectSource.SERVICE_PROVIDER_ACSE,
            AcseRejectReason.PROTOCOL_VERSION_NOT_SUPPORTED,
        )
    if active_associations >= max_associations:
        return AssociateRJ(
            RejectResult.REJECTED_TRANSIENT,
            RejectSource.SERVICE_PROVIDER_PRESENTATION,
            PresentationRejectReason.LOCAL_LIMIT_EXCEEDED,
        )
    return None


def _user_reject(reason: UserRejectReason) -> AssociateRJ:
    return AssociateRJ(RejectResult.REJECTED_PERMANENT, RejectSource.SERVICE_USER, reason)


def negotiate(rq: AssociateRQ, policy: AcceptorPolicy) -> Negotiated | AssociateRJ:
    """The service-user's answer to an acceptable A-ASSOCIATE-RQ."""
    if rq.application_context != DICOM_APPLICATION_CONTEXT:
        return _user_reject(UserRejectReason.APPLICATION_CONTEXT_NAME_NOT_SUPPORTED)
    if policy.reject_wrong_called_ae and rq.called_ae_title != policy.ae_title:
        return _user_reject(UserRejectReason.CALLED_AE_TITLE_NOT_RECOGNIZED)
    if policy.allowed_calling_aets and rq.calling_ae_title not in policy.allowed_calling_aets:
        return _user_reject(UserRejectReason.CALLING_AE_TITLE_NOT_RECOGNIZED)
    if not rq.presentation_contexts:
        # PS3.8 9.3.2 requires one or more presentation context items. An association that could
        # carry no DIMSE message has nothing to accept; "no reason given" is the honest answer.
        return _user_reject(UserRejectReason.NO_REASON_GIVEN)

    roles = _requested_roles(rq.user_information)
    extended: dict[str, bytes] = {}
    for item in rq.user_information.extended_negotiations:
        answer_fn = policy.extended_negotiation.get(item.sop_class_uid)
        answer = answer_fn(item.info) if answer_fn is not None else None
        if answer is not None:
            extended[item.sop_class_uid] = answer
    results: list[PresentationContextAC] = []
    accepted: dict[int, AcceptedContext] = {}
    role_replies: dict[str, RoleSelection] = {}
    seen_ids: set[int] = set()
    for pc in rq.presentation_contexts:
        result, ts = _context_result(pc, policy, seen_ids)
        seen_ids.add(pc.context_id)
        if result != ContextResult.ACCEPTANCE:
            # PS3.8 9.3.3.2: the transfer syntax of a rejected context is not significant; echoing
            # one the peer proposed keeps strict parsers away from a zero-length sub-item.
            fallback = pc.transfer_syntaxes[0] if pc.transfer_syntaxes else ""
            results.append(PresentationContextAC(pc.context_id, result, fallback))
            continue
        results.append(PresentationContextAC(pc.context_id, result, ts))
        scu, scp = True, False
        proposed = roles.get(pc.abstract_syntax)
        if proposed is not None:
            # PS3.7 D.3.3.4: the acceptor may only turn a proposed role off, never on.
            scu = proposed.scu_role
            scp = proposed.scp_role and pc.abstract_syntax in policy.requestor_scp_allowed
            role_replies[pc.abstract_syntax] = RoleSelection(pc.abstract_syntax, scu, scp)
        accepted[pc.context_id] = AcceptedContext(
            pc.context_id, pc.abstract_syntax, ts, scu, scp, extended.get(pc.abstract_syntax, b"")
        )

    user_items: list[UserItem] = [
        MaximumLength(policy.max_pdu_length),
        ImplementationClassUID(policy.implementation_class_uid),
    ]
    user_items.extend(role_replies.values())
    user_items.extend(SOPClassExtendedNegotiation(uid, info) for uid, info in extended.items())
    user_items.append(ImplementationVersionName(policy.implementation_version_name))
    # Asynchronous operations window and user identity are left out of the AC on purpose: PS3.7
    # D.3.3.3 and D.3.3.7 say an acceptor that does not support them omits the sub-item, which means
    # one outstanding operation each way and no identity assertion.
    ac = AssociateAC(
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        application_context=DICOM_APPLICATION_CONTEXT,
        presentation_contexts=tuple(results),
        user_information=UserInformation(tuple(user_items)),
        protocol_version=1,
    )
    peer_max = rq.user_information.max_length
    return Negotiated(ac, accepted, peer_max if peer_max is not None else 0, extended)


def _context_result(
    pc: PresentationContextRQ, policy: AcceptorPolicy, seen_ids: set[int]
) -> tuple[ContextResult, str]:
    # PS3.8 9.3.2.2: context IDs are odd numbers 1-255 and unique within the association; a context
    # that breaks this cannot be addressed unambiguously, so the provider rejects it.
    if pc.context_id % 2 == 0 or not 1 <= pc.context_id <= 255 or pc.context_id in seen_ids:
        return ContextResult.NO_REASON, ""
    ours = policy.abstract_syntaxes.get(pc.abstract_syntax)
    if ours is None:
        return ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""
    offered = set(pc.transfer_syntaxes)
    for ts in ours:
        if ts in offered:
            return ContextResult.ACCEPTANCE, ts
    return ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""


def _requested_roles(user_info: UserInformation) -> dict[str, RoleSelection]:
    return {item.sop_class_uid: item for item in user_info.role_selections}
