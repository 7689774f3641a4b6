"""The frames between the server and its mover processes (dicomd/net/mover_wire.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from dicomd.config import RemoteAE
from dicomd.net import mover_wire as wire


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


async def test_messages_come_back_as_sent_then_none_at_the_end() -> None:
    move = ("move", 1, RemoteAE("DEST", "127.0.0.1", 104), ("SCU", 7), 0.25, 2, {"assoc": 3})
    targets = (
        "targets",
        1,
        [("1.2.3", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", "ab/cd/x", 512)],
    )
    reader = _reader(wire.frame(move) + wire.frame(targets))
    assert await wire.read(reader) == move
    assert await wire.read(reader) == targets
    assert await wire.read(reader) is None


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x00\x00", "inside a frame header"),
        (wire.frame(("done", 1))[:-1], "inside a frame"),
        (wire.HEADER.pack(wire.MAX_FRAME + 1), f"frame of {wire.MAX_FRAME + 1} bytes"),
        (wire.frame(("done",))[:4] + b"", "inside a frame"),
        (wire.HEADER.pack(4) + b"\x80\x05N.", "not a message: NoneType"),
        (wire.frame(())[0:], "not a message: tuple"),
    ],
)
async def test_a_broken_link_is_a_wire_error(data: bytes, error: str) -> None:
    with pytest.raises(wire.WireError, match=error):
        await wire.read(_reader(data))


def test_a_mover_process_starts_without_loading_pydicom() -> None:
    # Each mover is a process of its own: what its modules import is paid in every one of them
    # (pydicom alone is about 11 MB of RSS). It loads pydicom only to convert a dataset.
    probe = (
        "import sys, dicomd.net.mover_process; "
        "print(sorted(m for m in sys.modules if m.startswith('pydicom')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
