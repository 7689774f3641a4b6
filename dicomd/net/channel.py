"""The asyncio side of one association: a sans-I/O `Connection` driven over a stream pair.

Owns: reading with the ARTIM and idle deadlines, writing with back-pressure and a bound on how long a
peer may leave our writes unread, and turning DIMSE messages into P-DATA-TF PDUs under the peer's
maximum PDU length. Both the acceptor runner and the outbound requestor use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import BinaryIO

from dicomd.dimse.fragments import data_set_framer, encoded_fragments, encoded_message
from dicomd.dimse.messages import Message, encode_command
from dicomd.services.base import FileSlice, IncompleteMessage
from dicomd.ul.codes import LocalProtocolError
from dicomd.ul.connection import Connection, ConnectionEvent, NeedData

READ_CHUNK = 256 * 1024
FILE_CHUNK = 1024 * 1024
COALESCE = 256 * 1024
# Flush to the socket (and wait for the peer to read) every this many bytes of a large message, so
# that sending a big dataset never holds more than this in our buffers.
FLUSH_EVERY = 1024 * 1024


def _open_and_read(source: FileSlice, size: int) -> tuple[BinaryIO | None, bytes]:
    """(worker thread) Up to `size` first bytes of the slice, and the file left open for the rest
    (None, closed, when that was all of it)."""
    f = open(source.path, "rb")  # noqa: SIM115 - closed here, or by the caller after the rest
    try:
        f.seek(source.offset)
        chunk = f.read(min(size, source.length))
    except BaseException:
        f.close()
        raise
    if size >= source.length:
        f.close()
        return None, chunk
    return f, chunk


def _check_chunk(source: FileSlice, chunk: bytes | memoryview, remaining: int) -> None:
    if len(chunk) < min(FILE_CHUNK, remaining):
        raise OSError(f"{source.path.name} is shorter than its index entry")


class _ReadFailed(Exception):
    """(inside send_message) the stored file failed after part of its message was queued; the
    read's OSError is the cause."""


class IdleTimeout(Exception):
    """The peer sent nothing for longer than the idle timeout."""


class WriteTimeout(Exception):
    """The peer did not read what we sent within the DIMSE timeout."""


def set_nodelay(writer: asyncio.StreamWriter) -> None:
    # Each DIMSE exchange is a few small PDUs; without TCP_NODELAY every one of them waits on the
    # peer's delayed ACK (about 40 ms).
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Channel:
    def __init__(
        self,
        connection: Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        idle_timeout: float,
        write_timeout: float,
    ) -> None:
        self.connection = connection
        self._reader = reader
        self._writer = writer
        self._transport = writer.transport
        self._idle_timeout = idle_timeout
        self._write_timeout = write_timeout
        self._send_lock = asyncio.Lock()
        self._unflushed = 0
        self._flush_scheduled = False
        self._last_command: tuple[Message, int, int, list[bytes | memoryview]] | None = None
        self.torn = False  # a message was left part-sent: the association can only be aborted
        self._loop = asyncio.get_running_loop()
        self.last_activity = self._loop.time()

    async def next_event(self) -> ConnectionEvent:
        """The next event of the connection, reading from the peer as needed."""
        conn = self.connection
        while True:
            event = conn.next_event()
            await self.flush()
            if not isinstance(event, NeedData):
                return event
            now = self._loop.time()
            idle_deadline = self.last_activity + self._idle_timeout
            deadline = idle_deadline if conn.deadline is None else min(conn.deadline, idle_deadline)
            try:
                async with asyncio.timeout(max(deadline - now, 0.0)):
                    data = await self._reader.read(READ_CHUNK)
            except TimeoutError:
                if conn.deadline is not None and self._loop.time() >= conn.deadline:
                    conn.handle_timeout()
                    continue
                raise IdleTimeout from None
            except (ConnectionError, OSError):
                data = b""
            self.last_activity = self._loop.time()
            conn.receive_data(data)

    async def flush(self) -> None:
        chunks = self.connection.data_to_send()
        self._unflushed = 0
        if chunks:
            await self._write(chunks)

    async def _write(self, chunks: Iterable[bytes | memoryview]) -> None:
        if self._writer.is_closing():
            return
        self._writer.writelines(chunks)
        if self._transport.get_write_buffer_size() <= self._transport.get_write_buffer_limits()[1]:
            # Below the high-water mark the transport has not paused us: drain() returns at once
            # (or raises what the connection met), and needs no deadline of its own.
            await self._writer.drain()
        else:
            try:
                async with asyncio.timeout(self._write_timeout):
                    await self._writer.drain()
            except TimeoutError:
                raise WriteTimeout from None
        self.last_activity = self._loop.time()

    async def send_message(
        self, context_id: int, message: Message, dataset: bytes | FileSlice | None = None
    ) -> None:
        """Send one DIMSE message: its command, then its dataset, each in as many PDUs as needed.

        The PDUs go out pre-encoded (Connection.send_encoded_data): a C-FIND that streams
        thousands of responses, or a C-GET its sub-operations, pays for no PDU object and no
        state-machine dispatch per PDU.
        """
        max_pdu = self.connection.peer_max_pdu_length
        command = self._command_pdus(context_id, message, max_pdu)
        if dataset is None:
            await self._send_queued(command)
            return
        if not isinstance(dataset, FileSlice):
            await self._send_queued(
                [*command, *encoded_message(context_id, dataset, max_pdu, is_command=False)]
            )
            return
        async with self._send_lock:
            # The file is opened and its first chunk read before anything of the message is
            # queued: a file that is gone (or short) fails this message alone, with nothing sent.
            if dataset.data is not None:
                f, chunk = None, dataset.data  # read whole already, by whoever made the slice
            else:
                f, chunk = await asyncio.to_thread(_open_and_read, dataset, FILE_CHUNK)
            queued = False
            try:
                _check_chunk(dataset, chunk, dataset.length)
                self.connection.send_encoded_data(command)
                queued = True
                await self._send_file(context_id, dataset, max_pdu, f, chunk)
            except _ReadFailed as e:
                self.torn = True
                # Not awaited: the caller must learn of this (and log it) before the runner,
                # seeing the transport close, can cancel it.
                self._abort_now()
                raise IncompleteMessage(str(e.__cause__)) from e.__cause__
            except BaseException:
                # Cancelled (or the transport failed) part-way: whoever ends this association
                # must abort it, not release it after half a message.
                self.torn = queued
                raise
            finally:
                if f is not None and self.torn:
                    # Not awaited: what is raised must reach the caller as it is (see above).
                    self._loop.run_in_executor(None, f.close)
                elif f is not None:
                    await asyncio.to_thread(f.close)

    def framer(self, context_id: int) -> Callable[[bytes], bytes]:
        """fragments.data_set_framer for this association's peer: a data set in memory -> the wire
        bytes of its PDUs (pure; any thread may run it)."""
        return data_set_framer(context_id, self.connection.peer_max_pdu_length)

    async def send_framed(self, context_id: int, message: Message, framed: Sequence[bytes]) -> None:
        """send_message(message, dataset) for each data set, given as framer()'s wire bytes:
        queued as one run, in one piece (a page of C-FIND responses)."""
        command = self._command_pdus(context_id, message, self.connection.peer_max_pdu_length)
        pieces: list[bytes | memoryview] = []
        for data in framed:
            pieces += command
            pieces.append(data)
        if pieces:
            await self._send_queued([b"".join(pieces)])

    async def _send_queued(self, pieces: list[bytes | memoryview]) -> None:
        """Messages held in memory, whole."""
        if self._send_lock.locked():
            # A stored file is streaming on this association: its PDUs come first, whole.
            async with self._send_lock:
                if self._queue(pieces):
                    await self.flush()
        elif self._queue(pieces):
            # Queued before the first await: nothing came between these PDUs.
            await self.flush()

    def _command_pdus(
        self, context_id: int, message: Message, max_pdu: int
    ) -> list[bytes | memoryview]:
        """The command set's PDUs, encoded. The last message's are kept: a C-FIND sends the same
        (frozen) pending response for every match, so it is encoded once per operation."""
        cached = self._last_command
        if (
            cached is not None
            and cached[0] is message
            and cached[1] == context_id
            and cached[2] == max_pdu
        ):
            return cached[3]
        pieces = encoded_message(context_id, encode_command(message), max_pdu, is_command=True)
        self._last_command = (message, context_id, max_pdu, pieces)
        return pieces

    def _queue(self, pieces: list[bytes | memoryview]) -> bool:
        """Queue a message held in memory, to be written together with whatever else is sent
        before the loop next turns (a page of C-FIND responses leaves in one write, not one each).
        True when it must be written and drained now instead: past COALESCE bytes, or with the
        transport's buffer full (back-pressure, bounded by the write timeout)."""
        self.connection.send_encoded_data(pieces)
        self._unflushed += sum(map(len, pieces))
        if self._unflushed >= COALESCE or self._transport.get_write_buffer_size() >= COALESCE:
            return True
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_soon)
        return False

    def _flush_soon(self) -> None:
        self._flush_scheduled = False
        chunks = self.connection.data_to_send()
        self._unflushed = 0
        if chunks and not self._writer.is_closing():
            self._writer.writelines(chunks)

    async def _send_file(
        self,
        context_id: int,
        source: FileSlice,
        max_pdu: int,
        f: BinaryIO | None,
        chunk: bytes | memoryview,
    ) -> None:
        """Stream a stored file's dataset from its first chunk, read, and the file left open for
        the rest: the next chunk is read (in a thread) while this one is sent, so memory holds two
        chunks whatever the file's size, and the bytes go out as stored. A later read that fails
        or comes short raises _ReadFailed: the message is part-sent."""
        remaining = source.length
        while True:
            remaining -= len(chunk)
            pending = None
            if remaining:
                assert f is not None
                pending = asyncio.ensure_future(
                    asyncio.to_thread(f.read, min(FILE_CHUNK, remaining))
                )
            # Up to FILE_CHUNK (= FLUSH_EVERY) bytes queued, then written and drained.
            self.connection.send_encoded_data(
                encoded_fragments(
                    context_id, chunk, is_command=False, max_pdu_length=max_pdu, last=not remaining
                )
            )
            await self.flush()
            if pending is None:
                return
            try:
                chunk = await pending
                _check_chunk(source, chunk, remaining)
            except OSError as e:
                raise _ReadFailed from e

    async def abort(self) -> None:
        """A-ABORT (PS3.8 7.3.1, service-user source) written out, then the transport closed."""
        if self._writer.is_closing():
            return  # closed, or aborted by _abort_now() and leaving
        with contextlib.suppress(LocalProtocolError):  # aborted already: nothing more to say
            self.connection.abort()
            await self.flush_quietly()
        self.abort_transport()

    def _abort_now(self) -> None:
        """A-ABORT queued behind what is already buffered and the transport closed once that is
        written, without waiting: cut off after the write timeout if the peer does not read."""
        with contextlib.suppress(LocalProtocolError):
            self.connection.abort()
        chunks = self.connection.data_to_send()
        if not self._writer.is_closing():
            self._writer.writelines(chunks)
            self._writer.close()
            self._loop.call_later(self._write_timeout, self._transport.abort)

    async def close(self) -> None:
        await self.flush_quietly()
        if not self._writer.is_closing():
            self._writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError):
            pass

    async def flush_quietly(self) -> None:
        with contextlib.suppress(WriteTimeout, ConnectionError, OSError):
            await self.flush()

    def abort_transport(self) -> None:
        transport = self._writer.transport
        transport.abort()
