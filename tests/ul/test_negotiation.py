"""Acceptor negotiation: per-context results, rejections with their PS3.8 result/source/reason."""

from __future__ import annotations

from dataclasses import replace

from dicomd.ul.codes import ContextResult, RejectResult, RejectSource, UserIdentityType
from dicomd.ul.items import (
    ImplementationClassUID,
    MaximumLength,
    PresentationContextRQ,
    RoleSelection,
    SOPClassExtendedNegotiation,
    UserIdentityRQ,
    UserInformation,
)
from dicomd.ul.negotiation import (
    DICOM_APPLICATION_CONTEXT,
    AcceptorPolicy,
    Negotiated,
    negotiate,
    screen,
)
from dicomd.ul.pdu import AssociateRJ, AssociateRQ

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
JPEG = "1.2.840.10008.1.2.4.50"

POLICY = AcceptorPolicy(
    ae_title="DICOMD",
    implementation_class_uid="1.2.3",
    implementation_version_name="TEST",
    abstract_syntaxes={VERIFICATION: (IMPLICIT,), CT: (EXPLICIT, IMPLICIT, JPEG)},
    max_pdu_length=65536,
    requestor_scp_allowed=frozenset({CT}),
)


def rq(
    *contexts: PresentationContextRQ, user: tuple[object, ...] = (), **kw: object
) -> AssociateRQ:
    base = AssociateRQ(
        called_ae_title="DICOMD",
        calling_ae_title="SCU",
        application_context=DICOM_APPLICATION_CONTEXT,
        presentation_contexts=contexts or (PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),),
        user_information=UserInformation((MaximumLength(16384), *user)),  # type: ignore[arg-type]
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def accepted(result: Negotiated | AssociateRJ) -> Negotiated:
    assert isinstance(result, Negotiated), result
    return result


def test_transfer_syntax_is_ours_in_our_order() -> None:
    n = accepted(negotiate(rq(PresentationContextRQ(1, CT, (JPEG, IMPLICIT, EXPLICIT))), POLICY))
    assert n.contexts[1].transfer_syntax == EXPLICIT
    assert n.response.presentation_contexts[0].result == ContextResult.ACCEPTANCE
    assert n.peer_max_pdu_length == 16384
    ui = n.response.user_information
    assert ui.max_length == 65536
    assert ui.implementation_class_uid == "1.2.3"
    assert ui.implementation_version_name == "TEST"
    # No async window and no identity response: PS3.7 D.3.3.3 and D.3.3.7 defaults.
    assert ui.async_window is None and ui.user_identity_ac is None


def test_per_context_results() -> None:
    n = accepted(
        negotiate(
            rq(
                PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),
                PresentationContextRQ(3, "1.2.3.4", (IMPLICIT,)),
                PresentationContextRQ(5, VERIFICATION, (JPEG,)),
                PresentationContextRQ(7, VERIFICATION, (IMPLICIT,)),
                PresentationContextRQ(7, VERIFICATION, (IMPLICIT,)),
                PresentationContextRQ(8, VERIFICATION, (IMPLICIT,)),
            ),
            POLICY,
        )
    )
    got = [(pc.context_id, pc.result) for pc in n.response.presentation_contexts]
    assert got == [
        (1, ContextResult.ACCEPTANCE),
        (3, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED),
        (5, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED),
        (7, ContextResult.ACCEPTANCE),
        (7, ContextResult.NO_REASON),  # duplicate id
        (8, ContextResult.NO_REASON),  # even id
    ]
    assert set(n.contexts) == {1, 7}


def test_rejections() -> None:
    def reason(result: Negotiated | AssociateRJ) -> tuple[int, int, int]:
        assert isinstance(result, AssociateRJ)
        return int(result.result), int(result.source), int(result.reason)

    assert reason(negotiate(rq(application_context="1.2.3"), POLICY)) == (1, 1, 2)
    assert reason(negotiate(rq(called_ae_title="OTHER"), POLICY)) == (1, 1, 7)
    assert isinstance(
        negotiate(rq(called_ae_title="OTHER"), replace(POLICY, reject_wrong_called_ae=False)),
        Negotiated,
    )
    strict = replace(POLICY, allowed_calling_aets=frozenset({"CT1"}))
    assert reason(negotiate(rq(), strict)) == (1, 1, 3)
    assert isinstance(negotiate(rq(calling_ae_title="CT1"), strict), Negotiated)
    assert reason(negotiate(replace(rq(), presentation_contexts=()), POLICY)) == (1, 1, 1)


def test_screen_protocol_version_and_limit() -> None:
    assert screen(rq(), active_associations=0, max_associations=1) is None
    rj = screen(rq(protocol_version=2), active_associations=0, max_associations=1)
    assert rj is not None
    assert (rj.result, rj.source, int(rj.reason)) == (
        RejectResult.REJECTED_PERMANENT,
        RejectSource.SERVICE_PROVIDER_ACSE,
        2,
    )
    # Bit 0 set with other bits: still version 1 as far as PS3.8 is concerned.
    assert screen(rq(protocol_version=3), active_associations=0, max_associations=1) is None
    rj = screen(rq(), active_associations=1, max_associations=1)
    assert rj is not None
    assert (rj.result, rj.source, int(rj.reason)) == (
        RejectResult.REJECTED_TRANSIENT,
        RejectSource.SERVICE_PROVIDER_PRESENTATION,
        2,
    )


def test_role_selection_only_turns_roles_off() -> None:
    n = accepted(
        negotiate(
            rq(
                PresentationContextRQ(1, CT, (IMPLICIT,)),
                PresentationContextRQ(3, VERIFICATION, (IMPLICIT,)),
                user=(
                    RoleSelection(CT, scu_role=False, scp_role=True),
                    RoleSelection(VERIFICATION, scu_role=True, scp_role=True),
                ),
            ),
            POLICY,
        )
    )
    assert (n.contexts[1].requestor_is_scu, n.contexts[1].requestor_is_scp) == (False, True)
    # SCP role on Verification is not something we allow the requestor: turned off.
    assert (n.contexts[3].requestor_is_scu, n.contexts[3].requestor_is_scp) == (True, False)
    replies = {r.sop_class_uid: r for r in n.response.user_information.role_selections}
    assert replies[CT] == RoleSelection(CT, False, True)
    assert replies[VERIFICATION] == RoleSelection(VERIFICATION, True, False)


def test_extended_negotiation_answered_only_when_supported() -> None:
    policy = replace(POLICY, extended_negotiation={CT: lambda info: info[:1]})
    n = accepted(
        negotiate(
            rq(
                PresentationContextRQ(1, CT, (IMPLICIT,)),
                user=(
                    SOPClassExtendedNegotiation(CT, b"\x01\x01"),
                    SOPClassExtendedNegotiation(VERIFICATION, b"\x01"),
                    UserIdentityRQ(UserIdentityType.USERNAME, True, b"user", b""),
                    ImplementationClassUID("9.9"),
                ),
            ),
            policy,
        )
    )
    assert n.extended == {CT: b"\x01"}
    assert n.response.user_information.extended_negotiations == (
        SOPClassExtendedNegotiation(CT, b"\x01"),
    )
