"""Associations from us to a configured remote AE (a C-MOVE's destination), opened as the
configuration says: our AE title, maximum PDU length, DIMSE timeout, and TLS where the remote has it.

Used by the event loop that runs a move's sub-operations: the server's own (retrieve.move_processes
= 0) or a mover process's (mover_process.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from dicomd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomd.config import Config, RemoteAE
from dicomd.net.requestor import RequestorAssociation
from dicomd.services.base import Outbound
from dicomd.tls import client_context
from dicomd.ul.negotiation import ProposedContext


async def open_outbound(
    config: Config, remote: RemoteAE, contexts: Sequence[ProposedContext]
) -> Outbound:
    """An association from us to `remote`, proposing `contexts`."""
    return await RequestorAssociation.open(
        remote.host,
        remote.port,
        calling_ae_title=config.server.ae_title,
        called_ae_title=remote.ae_title,
        contexts=contexts,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        max_pdu_length=config.server.max_pdu_length,
        timeout=config.server.dimse_timeout,
        ssl_context=client_context(config.tls) if remote.tls else None,
    )
