"""A deliberately dumb peer for end-to-end tests: raw bytes out, whole PDUs back, bounded in time."""

from __future__ import annotations

import asyncio

from dicomd.dimse.messages import CEchoRQ, encode_command
from dicomd.ul.items import (
    ImplementationClassUID,
    MaximumLength,
    PresentationContextRQ,
    UserInformation,
)
from dicomd.ul.pdu import PDU, PDV, AssociateRQ, PDataTF, encode
from dicomd.ul.reader import PDUReader

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"


def associate_rq(
    *,
    called: str = "DICOMD",
    calling: str = "RAWPEER",
    contexts: tuple[PresentationContextRQ, ...] | None = None,
    application_context: str = APP_CONTEXT,
    protocol_version: int = 1,
    max_length: int = 16384,
) -> AssociateRQ:
    if contexts is None:
        contexts = (PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),)
    return AssociateRQ(
        called_ae_title=called,
        calling_ae_title=calling,
        application_context=application_context,
        presentation_contexts=contexts,
        user_information=UserInformation(
            (MaximumLength(max_length), ImplementationClassUID("1.2.3.4"))
        ),
        protocol_version=protocol_version,
    )


def echo_pdata(message_id: int = 1, context_id: int = 1) -> PDataTF:
    command = encode_command(CEchoRQ(message_id, VERIFICATION))
    return PDataTF((PDV(context_id, 0x03, command),))


class RawPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._pdus = PDUReader(1 << 24)

    @classmethod
    async def connect(cls, port: int) -> RawPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes | PDU) -> None:
        self.writer.write(data if isinstance(data, bytes) else encode(data))
        await self.writer.drain()

    async def receive(self, timeout: float = 5.0) -> PDU | None:
        """The next PDU from the server; None when it closed the connection first."""
        async with asyncio.timeout(timeout):
            while True:
                pdu = self._pdus.next_pdu()
                if pdu is not None:
                    return pdu
                data = await self.reader.read(65536)
                if not data:
                    return None
                self._pdus.feed(data)

    async def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True once the server closes the connection (EOF or reset), reading and dropping bytes."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if not await self.reader.read(65536):
                        return True
        except ConnectionError:
            return True

    def close(self) -> None:
        self.writer.close()

    async def associate(self, rq: AssociateRQ | None = None) -> PDU | None:
        await self.send(rq or associate_rq())
        return await self.receive()


def store_pdus(
    *,
    sop_class: str,
    sop_instance: str,
    dataset: bytes,
    message_id: int = 1,
    context_id: int = 1,
    max_pdu: int = 16384,
) -> list[PDataTF]:
    """The P-DATA-TF PDUs of one C-STORE-RQ carrying `dataset`."""
    from dicomd.dimse.fragments import fragment
    from dicomd.dimse.messages import CStoreRQ

    command = encode_command(CStoreRQ(message_id, sop_class, sop_instance))
    return [
        *fragment(context_id, command, is_command=True, max_pdu_length=max_pdu),
        *fragment(context_id, dataset, is_command=False, max_pdu_length=max_pdu),
    ]
