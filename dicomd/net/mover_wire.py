"""The wire between the server and its mover processes (mover_pool.py, mover_process.py).

Frames are a 4-byte big-endian length and a pickled tuple whose first item names the message.
Pickle is safe here: both ends are dicomd processes, over a socketpair no one else holds. A frame
longer than MAX_FRAME ends the link (the other end is broken, not hostile).

Server to mover:
    ("config", Config)                                   first, once
    ("move", job, RemoteAE, originator, pending_interval, total, log_context)
    ("targets", job, [Target fields, ...])               until `total` have come; then it runs
    ("cancel", job)                                      C-CANCEL-RQ: stop before the next one
    ("abort", job)                                       the move's caller is gone: stop now
Mover to server:
    ("counts", job, remaining, completed, failed, warning, failed_uids)
    ("done", job, remaining, completed, failed, warning, failed_uids, comment)
failed_uids holds the SOP Instance UIDs that failed since the job's previous frame.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
TARGETS_PER_FRAME = 4096


class WireError(Exception):
    """A frame that cannot be one of ours."""


def frame(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(data)) + data


async def read(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message; None when the other end closed the link between two frames."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise WireError("link closed inside a frame header") from e
    (length,) = HEADER.unpack(head)
    if length > MAX_FRAME:
        raise WireError(f"frame of {length} bytes")
    try:
        message = pickle.loads(await reader.readexactly(length))
    except asyncio.IncompleteReadError as e:
        raise WireError("link closed inside a frame") from e
    if not isinstance(message, tuple) or not message or not isinstance(message[0], str):
        raise WireError(f"not a message: {type(message).__name__}")
    return message
