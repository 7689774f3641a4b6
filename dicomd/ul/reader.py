"""Incremental PDU reader: bytes in as they arrive, whole PDUs out.

Owns: buffering of received bytes and the PDU length guard.
Must not know: sockets, the state machine, what the PDUs mean.

The 6-byte header (PS3.8 9.3, PDU-type and PDU-length) is judged as soon as it is in, before any
of the body is waited for, so a peer announcing a 4 GiB PDU costs us 6 bytes plus the chunk they
came in, not 4 GiB. The limit applies to the PDU-length field, the quantity PS3.8 Annex D.1 bounds
with the Maximum Length sub-item; the runner raises it after negotiation.
"""

from __future__ import annotations

from typing import NoReturn

from dicomd.ul.codes import AbortReason, RemoteProtocolError
from dicomd.ul.items import Buffer
from dicomd.ul.pdu import PDU, PDU_HEADER, decode

_KNOWN_PDU_TYPES = frozenset(range(1, 8))
# Consumed bytes are dropped from the front of the buffer once they are at least this many and
# at least half of it, so each byte is moved O(1) times however the stream is chunked.
_COMPACT_THRESHOLD = 64 * 1024


class PDUReader:
    """Feed bytes with feed(); take PDUs with next_pdu() until it returns None.

    The first RemoteProtocolError is final: the stream cannot be resynchronised, so later
    next_pdu() calls raise it again and feed() drops its data.
    """

    __slots__ = ("_buffer", "_error", "_start", "max_pdu_length")

    def __init__(self, max_pdu_length: int) -> None:
        self.max_pdu_length = max_pdu_length
        self._buffer = bytearray()
        self._start = 0  # offset of the first unconsumed byte in _buffer
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a PDU."""
        return len(self._buffer) - self._start

    def feed(self, data: Buffer) -> None:
        if self._error is None:
            self._buffer += data

    def next_pdu(self) -> PDU | None:
        """The next whole PDU, or None until more data is fed."""
        if self._error is not None:
            raise self._error
        buffer, start = self._buffer, self._start
        if len(buffer) - start < PDU_HEADER.size:
            return None
        pdu_type, length = PDU_HEADER.unpack_from(buffer, start)
        if pdu_type not in _KNOWN_PDU_TYPES:
            self._fail(
                RemoteProtocolError(
                    f"unrecognized PDU type {pdu_type:#04x}", AbortReason.UNRECOGNIZED_PDU
                )
            )
        if length > self.max_pdu_length:
            self._fail(
                RemoteProtocolError(
                    f"PDU length {length} exceeds the limit of {self.max_pdu_length}",
                    AbortReason.INVALID_PDU_PARAMETER_VALUE,
                )
            )
        end = start + PDU_HEADER.size + length
        if len(buffer) < end:
            return None
        error: RemoteProtocolError | None = None
        # Decode straight from the buffer; the view must be gone before the buffer is resized.
        # A raised exception's traceback would keep views alive through its frames, so it is
        # replaced by a fresh one once the `except` block has dropped it.
        with memoryview(buffer) as view:
            try:
                pdu = decode(view[start:end])
            except RemoteProtocolError as exc:
                error = RemoteProtocolError(str(exc), exc.reason)
        if error is not None:
            self._fail(error)
        self._consume(end)
        return pdu

    def _consume(self, end: int) -> None:
        buffer = self._buffer
        if end == len(buffer):
            buffer.clear()
            self._start = 0
        elif end >= _COMPACT_THRESHOLD and 2 * end >= len(buffer):
            del buffer[:end]
            self._start = 0
        else:
            self._start = end

    def _fail(self, error: RemoteProtocolError) -> NoReturn:
        self._error = error
        self._buffer = bytearray()
        self._start = 0
        raise error
