"""Outbound associations: dicomd as association-requestor (`dicomd echo`, C-MOVE sub-operations).

Owns: opening a TCP connection, proposing presentation contexts, reading the AC into the contexts we
may use, sending DIMSE requests and reading their responses, release and abort. Runs the same sans-I/O
`Connection` as the acceptor, in the requestor role.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from types import TracebackType

from dicomd.dimse.fragments import CommandReceived, MessageAssembler
from dicomd.dimse.messages import CEchoRQ, CEchoRSP, Message, has_dataset
from dicomd.net.channel import Channel, IdleTimeout, set_nodelay
from dicomd.services.base import DatasetSource
from dicomd.transfer_syntaxes import EXPLICIT_VR_LE, IMPLICIT_VR_LE
from dicomd.ul.codes import ContextResult
from dicomd.ul.connection import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    Connection,
    ConnectionClosed,
    DataReceived,
    ReleaseConfirmed,
    ReleaseRequested,
    Role,
)
from dicomd.ul.items import (
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PresentationContextRQ,
    RoleSelection,
    UserInformation,
    UserItem,
)
from dicomd.ul.negotiation import DICOM_APPLICATION_CONTEXT, AcceptedContext, ProposedContext
from dicomd.ul.pdu import AssociateAC, AssociateRJ, AssociateRQ

VERIFICATION = "1.2.840.10008.1.1"


class AssociationError(Exception):
    """The association could not be established or ended abnormally."""


class AssociationRejectedError(AssociationError):
    def __init__(self, rejection: AssociateRJ) -> None:
        super().__init__(
            f"association rejected: result {int(rejection.result)}, "
            f"source {int(rejection.source)}, reason {int(rejection.reason)}"
        )
        self.rejection = rejection


class RequestorAssociation:
    def __init__(
        self, channel: Channel, contexts: dict[int, AcceptedContext], ac: AssociateAC
    ) -> None:
        self._channel = channel
        self.contexts = contexts
        self.response = ac
        self._assembler = MessageAssembler()
        self._message_ids = 0

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        calling_ae_title: str,
        called_ae_title: str,
        contexts: Sequence[ProposedContext],
        implementation_class_uid: str,
        implementation_version_name: str,
        max_pdu_length: int = 262_144,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RequestorAssociation:
        loop = asyncio.get_running_loop()
        conn = Connection(
            Role.REQUESTOR, artim_timeout=timeout, clock=loop.time, max_pdu_length=max_pdu_length
        )
        user_items: list[UserItem] = [
            MaximumLength(max_pdu_length),
            ImplementationClassUID(implementation_class_uid),
        ]
        for pc in contexts:
            if pc.scu_role is not None or pc.scp_role is not None:
                user_items.append(
                    RoleSelection(pc.abstract_syntax, bool(pc.scu_role), bool(pc.scp_role))
                )
        user_items.append(ImplementationVersionName(implementation_version_name))
        rq = AssociateRQ(
            called_ae_title=called_ae_title,
            calling_ae_title=calling_ae_title,
            application_context=DICOM_APPLICATION_CONTEXT,
            presentation_contexts=tuple(
                PresentationContextRQ(2 * i + 1, pc.abstract_syntax, pc.transfer_syntaxes)
                for i, pc in enumerate(contexts)
            ),
            user_information=UserInformation(tuple(user_items)),
        )
        conn.request(rq)
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
            )
        set_nodelay(writer)
        channel = Channel(conn, reader, writer, idle_timeout=timeout, write_timeout=timeout)
        conn.connection_made()
        try:
            event = await channel.next_event()
        except BaseException:
            await channel.close()
            raise
        if isinstance(event, AssociationAccepted):
            ac = event.response
            conn.established(ac.user_information.max_length or 0)
            return cls(channel, _accepted_contexts(rq, ac), ac)
        await channel.close()
        if isinstance(event, AssociationRejected):
            raise AssociationRejectedError(event.rejection)
        raise AssociationError(f"association failed: {event}")

    # -- DIMSE -----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """The association is over (released, aborted by either side, or its connection lost):
        it can carry no more messages."""
        return self._channel.connection.closed

    def next_message_id(self) -> int:
        self._message_ids = self._message_ids % 0xFFFF + 1
        return self._message_ids

    def context_for(self, abstract_syntax: str) -> AcceptedContext | None:
        for ctx in self.contexts.values():
            if ctx.abstract_syntax == abstract_syntax:
                return ctx
        return None

    async def send(self, context_id: int, message: Message, dataset: DatasetSource = None) -> None:
        await self._channel.send_message(context_id, message, dataset)

    async def request(self, context_id: int, message: Message, dataset: DatasetSource) -> Message:
        """Send a request and return its response (one outstanding operation at a time).

        A response that does not come within the timeout, or a message that is not it, ends the
        association (A-ABORT) before the error is raised: without an asynchronous operations
        window (PS3.7 D.3.3.3) the peer's late answer would be taken for the next request's."""
        await self.send(context_id, message, dataset)
        message_id = getattr(message, "message_id", None)
        try:
            _cid, response, _ds = await self.receive()
        except IdleTimeout:
            await self.abort()
            raise AssociationError("no response within the DIMSE timeout") from None
        if getattr(response, "message_id_being_responded_to", None) != message_id:
            await self.abort()
            raise AssociationError(f"unexpected message while waiting for a response: {response}")
        return response

    async def receive(self) -> tuple[int, Message, bytes | None]:
        """The next whole DIMSE message from the peer (its dataset, if any, in memory)."""
        command: CommandReceived | None = None
        buffer = bytearray()
        while True:
            event = await self._channel.next_event()
            if isinstance(event, DataReceived):
                for item in self._assembler.feed(event.pdu):
                    if isinstance(item, CommandReceived):
                        if not has_dataset(item.command):
                            return item.context_id, item.command, None
                        command = item
                    else:
                        buffer += item.data
                        if item.is_last and command is not None:
                            return command.context_id, command.command, bytes(buffer)
            elif isinstance(event, ReleaseRequested):
                raise AssociationError("peer asked to release while a response was due")
            elif isinstance(event, Aborted):
                raise AssociationError(
                    f"association aborted: {event.source.name} {event.reason.name}"
                )
            elif isinstance(event, ConnectionClosed):
                raise AssociationError("connection closed")

    async def echo(self) -> int:
        """Send a C-ECHO-RQ and return the status of the response."""
        ctx = self.context_for(VERIFICATION)
        if ctx is None:
            raise AssociationError("the peer did not accept the Verification SOP Class")
        response = await self.request(
            ctx.context_id, CEchoRQ(self.next_message_id(), VERIFICATION), None
        )
        if not isinstance(response, CEchoRSP):
            raise AssociationError(f"unexpected response to C-ECHO: {response}")
        return response.status

    # -- ending ----------------------------------------------------------------------------------

    async def release(self) -> None:
        if self._channel.torn:
            await self.abort()  # no A-RELEASE-RQ may follow half a message
            return
        conn = self._channel.connection
        try:
            if not conn.closed:
                conn.release()
                while True:
                    event = await self._channel.next_event()
                    if isinstance(event, ReleaseRequested):
                        # Release collision (PS3.8 9.2.2): answer theirs, then ours completes.
                        conn.release_response()
                    elif (
                        isinstance(event, ReleaseConfirmed | ConnectionClosed | Aborted)
                        and conn.closed
                    ):
                        break
        finally:
            await self._channel.close()

    async def abort(self) -> None:
        await self._channel.abort()

    async def __aenter__(self) -> RequestorAssociation:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.release()
        else:
            await self.abort()


def _accepted_contexts(rq: AssociateRQ, ac: AssociateAC) -> dict[int, AcceptedContext]:
    by_id = {pc.context_id: pc for pc in rq.presentation_contexts}
    roles = {r.sop_class_uid: r for r in ac.user_information.role_selections}
    accepted: dict[int, AcceptedContext] = {}
    for result in ac.presentation_contexts:
        ours = by_id.get(result.context_id)
        if ours is None or result.result != ContextResult.ACCEPTANCE:
            continue
        if result.transfer_syntax not in ours.transfer_syntaxes:
            continue  # the acceptor picked something we did not offer: unusable
        role = roles.get(ours.abstract_syntax)
        scu, scp = (role.scu_role, role.scp_role) if role is not None else (True, False)
        accepted[result.context_id] = AcceptedContext(
            result.context_id, ours.abstract_syntax, result.transfer_syntax, scu, scp
        )
    return accepted


async def echo(
    host: str,
    port: int,
    *,
    calling_ae_title: str,
    called_ae_title: str,
    implementation_class_uid: str,
    implementation_version_name: str,
    timeout: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """One association with one C-ECHO (over TLS with `ssl_context`); returns the status."""
    assoc = await RequestorAssociation.open(
        host,
        port,
        calling_ae_title=calling_ae_title,
        called_ae_title=called_ae_title,
        contexts=[ProposedContext(VERIFICATION, (EXPLICIT_VR_LE, IMPLICIT_VR_LE))],
        implementation_class_uid=implementation_class_uid,
        implementation_version_name=implementation_version_name,
        timeout=timeout,
        ssl_context=ssl_context,
    )
    async with assoc:
        return await assoc.echo()
