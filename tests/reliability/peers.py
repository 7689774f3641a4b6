"""Small raw-PDU SCU helpers for the reliability tests (built on tests/net/rawpeer.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from pathlib import Path

from dicomd.dimse.messages import CStoreRSP, decode_command
from dicomd.storage.files import FileStore
from dicomd.storage.index import Index
from dicomd.ul.items import PresentationContextRQ
from dicomd.ul.pdu import AssociateAC, PDataTF, encode
from tests.fuzz import corpus
from tests.net.rawpeer import IMPLICIT, RawPeer, associate_rq, store_pdus

CT = corpus.CT
UID_ROOT = "1.2.826.0.1.3680043.8.498.6."
BIG = 8 << 20  # pixel bytes of each instance a non-reader C-GETs
NON_READER_RQ = encode(corpus.associate_rq(calling="NONREADER"))


def instance(uid: str, size: int = 2048) -> bytes:
    """A CT data set (Implicit VR LE) of about `size` bytes, most of it pixel data."""
    return corpus.ct_dataset(uid, pixels=max(256, size // 256 * 256))


async def associate(
    port: int, *contexts: PresentationContextRQ, calling: str = "RELSCU", max_pdu: int = 65536
) -> RawPeer:
    peer = await RawPeer.connect(port)
    rq = associate_rq(
        contexts=contexts or (PresentationContextRQ(1, CT, (IMPLICIT,)),),
        calling=calling,
        max_length=max_pdu,
    )
    ac = await peer.associate(rq)
    assert isinstance(ac, AssociateAC), ac
    return peer


async def send_store(
    peer: RawPeer,
    uid: str,
    dataset: bytes,
    *,
    message_id: int = 1,
    context_id: int = 1,
    timeout: float = 30.0,
) -> CStoreRSP:
    pdus = store_pdus(
        sop_class=CT,
        sop_instance=uid,
        dataset=dataset,
        message_id=message_id,
        context_id=context_id,
        max_pdu=65536,
    )
    peer.writer.writelines(encode(p) for p in pdus)
    await peer.writer.drain()
    rsp = await peer.receive(timeout=timeout)
    assert isinstance(rsp, PDataTF), rsp
    message = decode_command(b"".join(p.data for p in rsp.pdvs))
    assert isinstance(message, CStoreRSP), message
    return message


async def assert_intact(index: Index, files: FileStore, acknowledged: dict[str, bytes]) -> None:
    """Every acknowledged instance is indexed, its file hashes to the row, and ends with its data set."""
    for uid, data in acknowledged.items():
        row = await index.get(uid)
        assert row is not None, f"acknowledged {uid} is not indexed"
        content = await asyncio.to_thread(files.path(row.relpath).read_bytes)
        assert hashlib.sha256(content).hexdigest() == row.sha256, f"{uid}: file differs from row"
        assert content.endswith(data), f"{uid}: stored data set differs from the one sent"


def spools(root: Path) -> list[Path]:
    """Spool files in tmp/: a dataset being received, or one half-written and left behind. (The
    empty spares kept ready beside them, `*.spare`, hold nothing a peer sent.)"""
    tmp = root / "tmp"
    return list(tmp.glob("*.part")) if tmp.exists() else []


async def non_reader(
    port: int,
    keep: list[asyncio.StreamWriter],
    *,
    drip: bool,
    accepted: asyncio.Event | None = None,
) -> None:
    """Associate with a 4 KiB receive buffer, C-GET two 8 MiB instances, and never read; with
    `drip`, keep sending a C-ECHO-RQ every 300 ms (until the server cuts the connection)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    keep.append(writer)  # left open and unread until the server cuts it off
    writer.write(NON_READER_RQ)
    header = await reader.readexactly(6)
    await reader.readexactly(int.from_bytes(header[2:], "big"))
    assert header[0] == 0x02, "not accepted"
    if accepted is not None:
        accepted.set()
    writer.write(b"".join(corpus.GET))
    with contextlib.suppress(ConnectionError):
        for _ in range(100) if drip else ():  # 30 s at most; the server cuts it off long before
            await asyncio.sleep(0.3)  # the pace of the drip, not a synchronisation
            if writer.is_closing():
                return
            writer.write(b"".join(corpus.ECHO))
