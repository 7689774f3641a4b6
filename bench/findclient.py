"""A fast C-FIND client for the benchmark: raw PDUs over one asyncio connection, in this process.

Why not DCMTK findscu or pynetdicom: a findscu process per query measures process start and
association set-up (tens of milliseconds), and pynetdicom's threads poll their queues every
millisecond and decode every response; both would hide the server's own latency. Not dicomd's
RequestorAssociation either: it runs every PDU through the state machine and decodes every command
set in full, ~0.3 ms of client CPU per response here, which would be a good part of what is measured
when thousands of responses stream.

So: the association is negotiated with dicomd's pure PS3.8 codec (dicomd.ul.pdu: an
A-ASSOCIATE-RQ proposing Study Root FIND in Explicit and Implicit VR Little Endian, our maximum PDU
of 256 KiB, TCP_NODELAY), each query's identifier is encoded once before timing, and a query is one
write of its C-FIND-RQ P-DATA-TF PDUs (dicomd.dimse codecs); then the responses are read in chunks of
whatever has arrived (one read for many small responses, not two awaits per PDU) and walked PDU by
PDU with a minimal walk over the PDV items: data set fragments are counted and skipped, and of each
command set only Status (0000,0900), Command Data Set Type (0000,0800) and Message ID Being Responded
To (0000,0120) are read. A query's latency runs from the write of the request to the arrival of the
whole final response; the arrival of the first whole response is recorded too. One association,
queries strictly one after another.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicomd import IMPLEMENTATION_CLASS_UID
from dicomd.dimse import status
from dicomd.dimse.fragments import fragment
from dicomd.dimse.messages import CFindRQ, encode_command
from dicomd.ul import pdu
from dicomd.ul.codes import ContextResult
from dicomd.ul.items import (
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PresentationContextRQ,
    UserInformation,
)
from dicomd.ul.negotiation import DICOM_APPLICATION_CONTEXT

STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
EXPLICIT_VR_LE: Final = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE: Final = "1.2.840.10008.1.2"
MAX_PDU: Final = 262_144
CONTEXT_ID: Final = 1

_HEADER: Final = struct.Struct(">BxL")  # PDU type, reserved, PDU length
_PDV: Final = struct.Struct(">LBB")  # item length, context id, message control header
_ELEMENT: Final = struct.Struct("<HHL")  # Implicit VR LE: group, element, value length
_P_DATA_TF, _RELEASE_RQ, _RELEASE_RP, _ABORT = 0x04, 0x05, 0x06, 0x07
_RELEASE_BODY: Final = b"\x00\x00\x00\x00"
_NO_DATA_SET: Final = 0x0101  # (0000,0800) Command Data Set Type: no data set
_READ: Final = 1024 * 1024  # bytes asked of the socket at once


class FindFailed(Exception):
    """The peer answered a query with a failure status, or the association broke."""


@dataclass(frozen=True, slots=True)
class FindResult:
    first_s: float  # to the first response (a match, or the final one when nothing matched)
    last_s: float  # to the final response
    matches: int
    status: int


def _command_fields(data: bytes) -> tuple[int, int, int, str]:
    """(Status, Command Data Set Type, Message ID Being Responded To, Error Comment)."""
    code = dataset_type = responded = -1
    comment = ""
    offset, end = 0, len(data)
    while offset + 8 <= end:
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group == 0x0000:
            if element == 0x0900:
                code = int.from_bytes(data[offset : offset + 2], "little")
            elif element == 0x0800:
                dataset_type = int.from_bytes(data[offset : offset + 2], "little")
            elif element == 0x0120:
                responded = int.from_bytes(data[offset : offset + 2], "little")
            elif element == 0x0902:
                comment = data[offset : offset + length].decode("latin-1").strip(" \x00")
        offset += length
    return code, dataset_type, responded, comment


class FindClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        implicit: bool,
        peer_max_pdu: int,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._implicit = implicit
        self._peer_max_pdu = peer_max_pdu
        self._message_id = 0
        self._buffer = bytearray()  # received, not yet parsed (a final response ends a query)

    @classmethod
    async def open(
        cls, host: str, port: int, called_ae_title: str, calling_ae_title: str = "BENCH"
    ) -> FindClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rq = pdu.AssociateRQ(
            called_ae_title=called_ae_title,
            calling_ae_title=calling_ae_title,
            application_context=DICOM_APPLICATION_CONTEXT,
            presentation_contexts=(
                PresentationContextRQ(
                    CONTEXT_ID, STUDY_ROOT_FIND, (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
                ),
            ),
            user_information=UserInformation(
                (
                    MaximumLength(MAX_PDU),
                    ImplementationClassUID(IMPLEMENTATION_CLASS_UID),
                    ImplementationVersionName("DICOMD_BENCH"),
                )
            ),
        )
        writer.write(pdu.encode(rq))
        try:
            kind, body = await asyncio.wait_for(_read_pdu(reader), 30)
            answer = pdu.decode(_HEADER.pack(kind, len(body)) + body)
            if not isinstance(answer, pdu.AssociateAC):
                raise FindFailed(f"association not accepted: {answer}")
            for context in answer.presentation_contexts:
                if (
                    context.context_id == CONTEXT_ID
                    and context.result == ContextResult.ACCEPTANCE
                    and context.transfer_syntax in (EXPLICIT_VR_LE, IMPLICIT_VR_LE)
                ):
                    implicit = context.transfer_syntax == IMPLICIT_VR_LE
                    max_pdu = answer.user_information.max_length or 0
                    return cls(reader, writer, implicit, max_pdu)
            raise FindFailed("the server did not accept Study Root Query/Retrieve - FIND")
        except BaseException:
            writer.close()
            raise

    def encode(self, identifier: Dataset) -> bytes:
        """The identifier in the accepted transfer syntax (done before timing)."""
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = self._implicit
        write_dataset(fp, identifier)
        return fp.getvalue()

    def _request(self, identifier: bytes) -> tuple[int, bytes]:
        self._message_id = self._message_id % 0xFFFF + 1
        command = encode_command(CFindRQ(self._message_id, STUDY_ROOT_FIND))
        pdus = [
            *fragment(CONTEXT_ID, command, is_command=True, max_pdu_length=self._peer_max_pdu),
            *fragment(CONTEXT_ID, identifier, is_command=False, max_pdu_length=self._peer_max_pdu),
        ]
        return self._message_id, b"".join(pdu.encode(p) for p in pdus)

    async def find(self, identifier: bytes) -> FindResult:
        message_id, request = self._request(identifier)
        reader = self._reader
        buffer = self._buffer
        started = time.perf_counter()
        self._writer.write(request)
        first: float | None = None
        matches = 0
        command = bytearray()
        previous: tuple[bytes, tuple[int, int, int, str]] = (b"", (-1, -1, -1, ""))
        command_done = False  # the current message's command set is complete
        code = dataset_type = -1
        comment = ""
        start = 0  # of the next PDU in buffer
        while True:
            # Whole PDUs first; then one read of whatever has arrived (many responses at once).
            if (
                len(buffer) - start < 6
                or len(buffer) - start < 6 + _HEADER.unpack_from(buffer, start)[1]
            ):
                del buffer[:start]
                start = 0
                chunk = await reader.read(_READ)
                if not chunk:
                    raise FindFailed("the server closed the connection")
                buffer += chunk
                continue
            kind, length = _HEADER.unpack_from(buffer, start)
            body_start, start = start + 6, start + 6 + length
            if kind == _ABORT:
                raise FindFailed("the server aborted the association")
            if kind != _P_DATA_TF:
                raise FindFailed(f"PDU type {kind:#04x} while waiting for C-FIND responses")
            offset = body_start
            while offset < start:
                item_length, _context, header = _PDV.unpack_from(buffer, offset)
                data_start, offset = offset + 6, offset + 4 + item_length
                last = header & 0x02
                if header & 0x01:  # command fragment
                    command += buffer[data_start:offset]
                    if not last:
                        continue
                    if command != previous[0]:  # pending responses often repeat one command set
                        previous = (bytes(command), _command_fields(bytes(command)))
                    code, dataset_type, responded, comment = previous[1]
                    command.clear()
                    if responded != message_id:
                        raise FindFailed(f"response to message {responded}, not {message_id}")
                    command_done = True
                    if dataset_type != _NO_DATA_SET:
                        continue  # its data set follows
                elif not (command_done and last):
                    continue  # a data set fragment, not the last
                # A whole message: a command without data set, or the last data set fragment.
                now = time.perf_counter()
                if first is None:
                    first = now - started
                command_done = False
                if code in (status.PENDING, status.PENDING_WARNING):
                    matches += 1
                    continue
                if code != status.SUCCESS:
                    detail = f" ({comment})" if comment else ""
                    raise FindFailed(f"C-FIND status {code:04X}{detail}")
                del buffer[:start]
                return FindResult(first, now - started, matches, code)

    async def close(self) -> None:
        try:
            self._writer.write(_HEADER.pack(_RELEASE_RQ, 4) + _RELEASE_BODY)
            kind, _body = await asyncio.wait_for(_read_pdu(self._reader), 10)
            if kind != _RELEASE_RP:
                raise FindFailed(f"PDU type {kind:#04x} instead of A-RELEASE-RP")
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            self._writer.close()
            with contextlib.suppress(ConnectionError):
                await self._writer.wait_closed()


async def _read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    try:
        header = await reader.readexactly(6)
        kind, length = _HEADER.unpack(header)
        if kind == _ABORT:
            raise FindFailed("the server aborted the association")
        return kind, await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        raise FindFailed("the server closed the connection") from e
