"""Data sets built to exhaust the parser, sent by C-STORE through the network: bounded work, a
C000-class failure status, nothing stored, no crash, and the association keeps working.

- Sequences nested 250 deep (pydicom itself dies of RecursionError near 199), with undefined and
  with explicit lengths, in Implicit and Explicit VR.
- A deflate bomb on a Deflated Explicit VR Little Endian context: 1 MB of compressed zeros that
  would inflate to 1 GiB. The scanner stops inflating at its bound (dicomd/storage/scan.py).
"""

from __future__ import annotations

import resource
import struct
import time
import zlib

import pytest

from dicomd.dimse import status
from dicomd.storage.scan import MAX_DEPTH, MAX_INFLATE_RATIO, MAX_INFLATED
from dicomd.ul.items import PresentationContextRQ
from tests.conftest import make_config, run_runtime
from tests.fuzz import corpus
from tests.reliability.peers import CT, UID_ROOT, associate, send_store, spools

IMPLICIT, EXPLICIT, DEFLATED = corpus.IMPLICIT, corpus.EXPLICIT, corpus.DEFLATED
UNDEFINED = 0xFFFFFFFF


def _ui(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\x00" * (len(raw) % 2)


def _uids(explicit: bool, *elements: tuple[int, int, str]) -> bytes:
    out = b""
    for group, element, uid in elements:
        value = _ui(uid)
        if explicit:
            out += struct.pack("<HH2sH", group, element, b"UI", len(value)) + value
        else:
            out += struct.pack("<HHI", group, element, len(value)) + value
    return out


def _header(uid: str, explicit: bool) -> bytes:
    """SOP Class and Instance UID, the first elements of the data set."""
    return _uids(explicit, (0x0008, 0x0016, CT), (0x0008, 0x0018, uid))


def _trailer(explicit: bool) -> bytes:
    """Study and Series Instance UID, which the index needs (after (0008,xxxx) in tag order)."""
    return _uids(explicit, (0x0020, 0x000D, "1.2.3.4"), (0x0020, 0x000E, "1.2.3.4.5"))


def _sequence_open(explicit: bool, length: int = UNDEFINED) -> bytes:
    # (0008,1140) Referenced Image Sequence, then one item.
    if explicit:
        head = struct.pack("<HH2sxxI", 0x0008, 0x1140, b"SQ", length)
    else:
        head = struct.pack("<HHI", 0x0008, 0x1140, length)
    return head


def nested(uid: str, depth: int, *, explicit: bool, defined: bool) -> bytes:
    """A data set whose (0008,1140) nests `depth` sequences, each in an item of the previous one."""
    if not defined:
        item_open = struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
        closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        body = (_sequence_open(explicit) + item_open) * depth + closing * depth
    else:
        body = b""
        for _ in range(depth):  # from the inside out: every length is exact
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body
            body = _sequence_open(explicit, len(item)) + item
    return _header(uid, explicit) + body + _trailer(explicit)


def deflate_bomb(uid: str, inflated: int = 1 << 30) -> bytes:
    """Raw deflate of a valid header and a (7FE0,0010) OB of `inflated` zero bytes.

    Made in ~0.1 s: after a full flush a deflate block refers to nothing before it, so the
    compressed form of 4 MiB of zeros is computed once and repeated (a valid stream, PS3.5 A.5).
    """
    head = _header(uid, explicit=True) + struct.pack("<HH2sxxI", 0x7FE0, 0x0010, b"OB", inflated)

    def deflated(data: bytes, mode: int) -> bytes:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return compressor.compress(data) + compressor.flush(mode)

    block = 4 << 20
    zeros = deflated(bytes(block), zlib.Z_FULL_FLUSH)
    return (
        deflated(head, zlib.Z_FULL_FLUSH)
        + zeros * (inflated // block)
        + deflated(b"", zlib.Z_FINISH)
    )


@pytest.mark.parametrize(
    ("explicit", "defined"),
    [
        (False, False),
        (True, False),
        (False, True),
        (True, True),
    ],
    ids=["implicit-undefined", "explicit-undefined", "implicit-defined", "explicit-defined"],
)
async def test_deeply_nested_sequences_are_refused(explicit: bool, defined: bool) -> None:
    config = make_config()
    ts = EXPLICIT if explicit else IMPLICIT
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port, PresentationContextRQ(1, CT, (ts,)))
        uid = f"{UID_ROOT}4.1{int(explicit)}{int(defined)}"
        # Just inside the bound it is a valid (if silly) data set; 250 deep it is refused.
        ok = nested(uid, MAX_DEPTH - 1, explicit=explicit, defined=defined)
        started = time.monotonic()
        rsp = await send_store(peer, uid, nested(uid, 250, explicit=explicit, defined=defined))
        assert time.monotonic() - started < 5
        assert 0xC000 <= rsp.status <= 0xCFFF, hex(rsp.status)
        assert rsp.error_comment and "nested" in rsp.error_comment
        assert await runtime.index.get(uid) is None
        assert spools(config.storage.root) == []
        # The association is still usable, and the bound is where it says it is.
        assert (await send_store(peer, uid, ok, message_id=2)).status == status.SUCCESS
        peer.close()


async def test_deflate_bomb_is_refused_with_bounded_work() -> None:
    uid = f"{UID_ROOT}5.1"
    bomb = deflate_bomb(uid)
    assert len(bomb) < 2 << 20  # ~1 MB on the wire for 1 GiB inflated
    config = make_config()
    async with run_runtime(config) as (server, runtime):
        peer = await associate(server.port, PresentationContextRQ(1, CT, (DEFLATED,)))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, process peak
        started = time.monotonic()
        rsp = await send_store(peer, uid, bomb)
        elapsed = time.monotonic() - started
        peak_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        assert 0xC000 <= rsp.status <= 0xCFFF, hex(rsp.status)
        assert rsp.error_comment and "inflate" in rsp.error_comment
        assert elapsed < 10, f"{elapsed:.1f} s to refuse a deflate bomb"
        # The scanner inflates at most its bound, not the 1 GiB the stream holds; it holds the
        # inflated bytes twice at the end (bytearray, then bytes), hence 2x.
        limit_mib = min(MAX_INFLATED, max(64 << 20, MAX_INFLATE_RATIO * len(bomb))) / (1 << 20)
        assert peak_growth_mib < 2 * limit_mib + 64, f"peak RSS grew {peak_growth_mib:.0f} MiB"
        assert await runtime.index.get(uid) is None
        assert spools(config.storage.root) == []
        # A well-formed deflated instance on the same association is stored.
        good = f"{UID_ROOT}5.2"
        explicit_ds = _header(good, explicit=True) + _trailer(explicit=True)
        rsp = await send_store(peer, good, corpus.deflate(explicit_ds), message_id=2)
        assert rsp.status == status.SUCCESS, (hex(rsp.status), rsp.error_comment)
        peer.close()
