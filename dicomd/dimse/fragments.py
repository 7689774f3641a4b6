"""DIMSE messages to and from P-DATA-TF PDUs: fragmentation under the peer's limit, and reassembly.

Owns: cutting a command set or a data set into PDVs whose P-DATA-TF fits the negotiated maximum PDU
length, and turning incoming PDVs back into whole commands plus a stream of data set fragments in
order, enforcing the PS3.7/PS3.8 ordering rules.
Must not know: sockets, the association state machine, presentation context negotiation (whether a
context id was accepted is the runner's check), what a data set contains, where it is stored.

References: PS3.8 9.3.5 (P-DATA-TF, PDV items), PS3.8 Annex E.2 (message control header),
PS3.7 6.3.1 and 9.3 (a message is a command set, then at most one data set, each in its own PDVs
of one presentation context).

The reassembler never buffers data set bytes: each data set PDV is handed out as it arrives, so a
C-STORE of any size costs memory for one PDU, and the caller streams it to its sink. Only command
sets are buffered, and they are capped.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from dicomd.dimse.messages import (
    MAX_COMMAND_LENGTH,
    DIMSEDecodeError,
    Message,
    decode_command,
    has_dataset,
)
from dicomd.ul.codes import AbortReason, LocalProtocolError, PDUType, RemoteProtocolError
from dicomd.ul.pdu import PDV, PDataTF, p_data_head

__all__ = [
    "UNLIMITED_CHUNK",
    "CommandReceived",
    "DatasetFragment",
    "MessageAssembler",
    "data_set_framer",
    "encoded_fragments",
    "encoded_message",
    "fragment",
]

# PS3.8 9.3.5: a PDV item is 4-byte item length + 1-byte context id + 1-byte message control header
# + data, and the PDU-length of a P-DATA-TF counts whole PDV items, so one PDV per PDU leaves
# max_pdu_length - 6 bytes of data.
_PDV_OVERHEAD: Final = 6
# Maximum Length 0 means "no limit" (PS3.8 D.1); we still cut, so no single PDU is unboundedly big.
UNLIMITED_CHUNK: Final = 1 << 20

# A P-DATA-TF PDU's header and its one PDV item's header, packed at once.
_DATA_PDU_HEAD: Final = struct.Struct(">BxLLBB")
_P_DATA_TF: Final = int(PDUType.P_DATA_TF)
_COMMAND_BIT: Final = 0x01  # PS3.8 E.2 bit 0: 1 = command information, 0 = data set information
_LAST_BIT: Final = 0x02  # PS3.8 E.2 bit 1: 1 = last fragment of this command or data set


def fragment(
    context_id: int,
    data: bytes | bytearray | memoryview,
    *,
    is_command: bool,
    max_pdu_length: int,
    last: bool = True,
) -> Iterator[PDataTF]:
    """P-DATA-TF PDUs carrying `data`, one PDV each, every PDU-length field <= max_pdu_length.

    With `last=False`, `data` is one piece of a longer message (a stored file streamed in chunks):
    no PDV gets the last-fragment bit, and an empty piece yields nothing.

    `max_pdu_length` is the peer's Maximum Length (0 = unlimited). Lazy: a PDU is cut only when
    asked for, and slices of `data` are copied one PDV at a time. An empty `data` still yields one
    PDV, with the last-fragment bit, because the receiver needs that bit to end the message.
    Arguments are checked at the call, not at the first iteration.
    """
    chunk = _chunk_size(context_id, max_pdu_length)
    view = memoryview(data).cast("B")  # any contiguous buffer, addressed in bytes
    if not last and not view:
        return iter(())
    return _fragments(context_id, view, _COMMAND_BIT if is_command else 0, chunk, last)


def _chunk_size(context_id: int, max_pdu_length: int) -> int:
    """Data bytes per PDV under the peer's Maximum Length; checks the arguments."""
    if not 1 <= context_id <= 255:
        raise LocalProtocolError(f"presentation context id {context_id} is not 1..255")
    if max_pdu_length == 0:
        return UNLIMITED_CHUNK
    if max_pdu_length > _PDV_OVERHEAD:
        return max_pdu_length - _PDV_OVERHEAD
    raise LocalProtocolError(f"maximum PDU length {max_pdu_length} cannot carry any data")


def _fragments(
    context_id: int, view: memoryview, kind: int, chunk: int, last: bool
) -> Iterator[PDataTF]:
    for start, end, header in _cuts(len(view), kind, chunk, last):
        yield PDataTF((PDV(context_id, header, bytes(view[start:end])),))


def _last_start(total: int, chunk: int) -> int:
    """Where the last PDV of `total` bytes begins: every one before it carries `chunk` bytes, the
    last one the rest (1..chunk bytes, or none of an empty message)."""
    return total - 1 - (total - 1) % chunk if total else 0


def _cuts(total: int, kind: int, chunk: int, last: bool) -> Iterator[tuple[int, int, int]]:
    """(start, end, message control header) of each PDV of `total` bytes; at least one."""
    last_start = _last_start(total, chunk)
    for start in range(0, last_start, chunk):
        yield start, start + chunk, kind
    yield last_start, total, kind | (_LAST_BIT if last else 0)


def encoded_fragments(
    context_id: int,
    data: bytes | memoryview,
    *,
    is_command: bool,
    max_pdu_length: int,
    last: bool = True,
) -> list[bytes | memoryview]:
    """The PDUs fragment() makes, already encoded: the wire bytes of each P-DATA-TF PDU (PS3.8
    9.3.5) as a header and a view of `data`, with no copy of the data and no PDU object.

    For streaming a stored file, where one chunk is hundreds of PDUs. `data` must not change
    until the pieces are written. Byte for byte what encode(pdu) gives for every PDU of
    fragment() with the same arguments (tested).
    """
    chunk = _chunk_size(context_id, max_pdu_length)
    pieces: list[bytes | memoryview] = []
    if not last and not data:
        return pieces
    view = memoryview(data).cast("B")
    kind = _COMMAND_BIT if is_command else 0
    total = len(view)
    last_start = _last_start(total, chunk)
    if last_start:
        # The PDUs before the last all carry `chunk` bytes without the last-fragment bit: one
        # header, packed once (a 512 KB slice is 32 PDUs under DCMTK's 16 KB default).
        head = p_data_head(context_id, kind, chunk)
        for start in range(0, last_start, chunk):
            pieces.append(head)
            pieces.append(view[start : start + chunk])
    pieces.append(p_data_head(context_id, kind | (_LAST_BIT if last else 0), total - last_start))
    pieces.append(view[last_start:])
    return pieces


def encoded_message(
    context_id: int, data: bytes, max_pdu_length: int, *, is_command: bool
) -> list[bytes | memoryview]:
    """encoded_fragments() of a whole command or data set held in memory, where a PDU that fits
    is one bytes object (header and data joined): most commands and C-FIND identifiers, queued
    by the thousand, are one piece each instead of a header and a view."""
    if 0 < len(data) <= _chunk_size(context_id, max_pdu_length):
        kind = (_COMMAND_BIT if is_command else 0) | _LAST_BIT
        return [p_data_head(context_id, kind, len(data)) + data]
    return encoded_fragments(context_id, data, is_command=is_command, max_pdu_length=max_pdu_length)


def data_set_framer(context_id: int, max_pdu_length: int) -> Callable[[bytes], bytes]:
    """A function from a data set held in memory to the wire bytes of its P-DATA-TF PDUs, joined:
    what encoded_message(is_command=False) gives, as one bytes object. C-FIND frames a page of
    responses as it encodes them, then queues the page as one piece (Channel.send_framed)."""
    chunk = _chunk_size(context_id, max_pdu_length)
    pack = _DATA_PDU_HEAD.pack

    def frame(data: bytes) -> bytes:
        size = len(data)
        if 0 < size <= chunk:
            # PS3.8 Table 9-22 and 9-23: PDU-type, PDU-length, Item-length, context, header.
            return pack(_P_DATA_TF, size + 6, size + 2, context_id, _LAST_BIT) + data
        return b"".join(
            encoded_fragments(context_id, data, is_command=False, max_pdu_length=max_pdu_length)
        )

    return frame


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A whole command set arrived and decoded."""

    context_id: int
    command: Message


@dataclass(frozen=True, slots=True)
class DatasetFragment:
    """One PDV of the data set that follows the last CommandReceived, as it arrived."""

    context_id: int
    data: bytes
    is_last: bool


AssemblerEvent = CommandReceived | DatasetFragment


class MessageAssembler:
    """Incoming PDVs -> CommandReceived / DatasetFragment events, in arrival order.

    One message at a time: PS3.7 9.3 and PS3.8 Annex E put a message's command PDVs first, then its
    data set PDVs, all on one presentation context, and a PDV never mixes the two. Anything else is
    the peer's fault and raises RemoteProtocolError; after that the assembler is not to be reused
    (the association is aborted).
    """

    def __init__(self, max_command_length: int = MAX_COMMAND_LENGTH) -> None:
        self._max_command_length = max_command_length
        self._command = bytearray()
        self._command_context: int | None = None  # set while a command set is being collected
        self._dataset_context: int | None = None  # set while a data set is expected

    @property
    def expecting_dataset(self) -> bool:
        """A command that carries a data set arrived, and that data set's last PDV has not."""
        return self._dataset_context is not None

    def feed(self, pdu: PDataTF) -> list[AssemblerEvent]:
        events: list[AssemblerEvent] = []
        for pdv in pdu.pdvs:
            if pdv.is_command:
                received = self._command_pdv(pdv)
                if received is not None:
                    events.append(received)
            else:
                events.append(self._dataset_pdv(pdv))
        return events

    def _command_pdv(self, pdv: PDV) -> CommandReceived | None:
        if self._dataset_context is not None:
            raise RemoteProtocolError(
                "command PDV while the previous message's data set is still expected",
                AbortReason.UNEXPECTED_PDU_PARAMETER,
            )
        if self._command_context is not None and pdv.context_id != self._command_context:
            raise RemoteProtocolError(
                f"presentation context changed from {self._command_context} to "
                f"{pdv.context_id} inside one command set",
                AbortReason.UNEXPECTED_PDU_PARAMETER,
            )
        # Checked before appending, so the buffer never holds more than the cap.
        if len(self._command) + len(pdv.data) > self._max_command_length:
            raise RemoteProtocolError(
                f"command set longer than {self._max_command_length} bytes",
                AbortReason.INVALID_PDU_PARAMETER_VALUE,
            )
        self._command += pdv.data
        self._command_context = pdv.context_id
        if not pdv.is_last:
            return None
        try:
            command = decode_command(self._command)
        except DIMSEDecodeError as exc:
            raise RemoteProtocolError(
                f"bad command set: {exc}", AbortReason.INVALID_PDU_PARAMETER_VALUE
            ) from exc
        self._command = bytearray()
        self._command_context = None
        if has_dataset(command):
            self._dataset_context = pdv.context_id
        return CommandReceived(pdv.context_id, command)

    def _dataset_pdv(self, pdv: PDV) -> DatasetFragment:
        if self._dataset_context is None:
            if self._command_context is not None:
                problem = "data set PDV before the last fragment of its command set"
            else:
                problem = "data set PDV without a command announcing a data set"
            raise RemoteProtocolError(problem, AbortReason.UNEXPECTED_PDU_PARAMETER)
        if pdv.context_id != self._dataset_context:
            raise RemoteProtocolError(
                f"data set PDV on presentation context {pdv.context_id}, "
                f"its command came on {self._dataset_context}",
                AbortReason.UNEXPECTED_PDU_PARAMETER,
            )
        if pdv.is_last:
            self._dataset_context = None
        return DatasetFragment(pdv.context_id, pdv.data, pdv.is_last)
