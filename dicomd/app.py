"""Composition root: build the policy and services from the configuration, run the server.

Owns: the event loop choice (uvloop by default), signal handling (first SIGTERM/SIGINT drains, a second
one forces the exit) and the order of start-up and shutdown.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass

import structlog
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicomd import __version__
from dicomd.config import Config
from dicomd.dimse.messages import CEchoRQ, CStoreRQ, Message
from dicomd.net.association import ServerState
from dicomd.net.server import DicomServer
from dicomd.services.base import Handler, SinkFactory
from dicomd.services.echo import VERIFICATION_SOP_CLASS, handle_echo
from dicomd.services.sop_classes import DEFAULT_STORAGE_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from dicomd.services.store import StoreService
from dicomd.storage.files import FileStore
from dicomd.storage.index import Index
from dicomd.storage.reconcile import reconcile
from dicomd.ul.negotiation import AcceptorPolicy

log = structlog.get_logger("dicomd.app")

# Derived once with pydicom.uid.generate_uid(entropy_srcs=["dicomd implementation class"]): a UID
# under pydicom's root that no other implementation uses, stable across releases (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.76545713116216655370592048924003624229"
IMPLEMENTATION_VERSION_NAME = "DICOMD_" + __version__.replace(".", "")[:9]

UNCOMPRESSED = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian))


# Written at a clean shutdown, removed at start-up: its absence means the last run ended in a crash and
# the store must be reconciled with the index before serving.
CLEAN_SHUTDOWN_MARKER = ".clean-shutdown"


@dataclass
class Runtime:
    """The long-lived parts of a running server, in the order they must be closed."""

    config: Config
    files: FileStore
    index: Index
    store: StoreService
    state: ServerState

    async def close(self) -> None:
        await self.store.drain()
        await self.index.close()
        marker = self.config.storage.root / CLEAN_SHUTDOWN_MARKER
        await asyncio.to_thread(marker.touch)


async def open_runtime(config: Config) -> Runtime:
    durable = config.storage.durability == "full"
    files = await asyncio.to_thread(FileStore, config.storage.root, fsync=durable)
    await asyncio.to_thread(config.index.path.parent.mkdir, parents=True, exist_ok=True)
    index = await Index.open(
        config.index.path,
        synchronous="FULL" if durable else "NORMAL",
        busy_timeout=config.index.busy_timeout,
    )
    marker = config.storage.root / CLEAN_SHUTDOWN_MARKER
    if await asyncio.to_thread(marker.exists):
        await asyncio.to_thread(marker.unlink)
        removed = await asyncio.to_thread(files.clean_tmp)
        if removed:
            log.warning("startup_removed_spools", count=removed)
    else:
        log.warning("startup_reconcile", reason="no clean shutdown marker")
        report = await reconcile(files, index)
        log.info("startup_reconciled", **asdict(report))
    store = StoreService(
        files,
        index,
        duplicate_policy=config.storage.duplicate_policy,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
    )
    return Runtime(config, files, index, store, build_state(config, store))


def build_state(config: Config, store: StoreService | None = None) -> ServerState:
    """The acceptor policy and services; without a store, a Verification-only server."""
    s = config.server
    handlers: dict[tuple[str, type[Message]], Handler] = {
        (VERIFICATION_SOP_CLASS, CEchoRQ): handle_echo
    }
    sinks: dict[tuple[str, type[Message]], SinkFactory] = {}
    abstract_syntaxes: dict[str, tuple[str, ...]] = {VERIFICATION_SOP_CLASS: UNCOMPRESSED}
    if store is not None:
        storage_ts = config.storage.transfer_syntaxes or DEFAULT_STORAGE_TRANSFER_SYNTAXES
        for sop_class in STORAGE_SOP_CLASSES:
            abstract_syntaxes[sop_class] = storage_ts
            handlers[(sop_class, CStoreRQ)] = store.handle
            sinks[(sop_class, CStoreRQ)] = store.open_sink
    policy = AcceptorPolicy(
        ae_title=s.ae_title,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        abstract_syntaxes=abstract_syntaxes,
        max_pdu_length=s.max_pdu_length,
        reject_wrong_called_ae=s.called_ae_check == "reject",
        allowed_calling_aets=frozenset(config.security.allowed_calling_aets),
    )
    return ServerState(
        policy=policy,
        handlers=handlers,
        sinks=sinks,
        max_associations=s.max_associations,
        artim_timeout=s.artim_timeout,
        idle_timeout=s.idle_timeout,
        dimse_timeout=s.dimse_timeout,
        max_pdu_length=s.max_pdu_length,
    )


async def serve(
    config: Config,
    *,
    stop: asyncio.Event,
    on_ready: Callable[[DicomServer], None] | None = None,
) -> None:
    """Run until `stop` is set, then shut down within the configured deadline."""
    runtime = await open_runtime(config)
    server = DicomServer(runtime.state, config.server.host, config.server.port)
    try:
        await server.start()
    except BaseException:
        await runtime.close()
        raise
    log.info(
        "dicomd_ready",
        ae_title=config.server.ae_title,
        port=server.port,
        version=__version__,
    )
    if on_ready is not None:
        on_ready(server)
    try:
        await stop.wait()
    finally:
        await server.shutdown(config.server.shutdown_timeout)
        await runtime.close()


def run(config: Config) -> int:
    """Run the server in a fresh event loop until SIGTERM/SIGINT; returns the exit status."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if config.server.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_main(config))


async def _main(config: Config) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            stop.set()
        elif main_task is not None:
            log.warning("shutdown_forced", signal=signal.Signals(signum).name)
            main_task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await serve(config, stop=stop)
    except asyncio.CancelledError:
        return 1
    except OSError as e:
        log.error("server_failed", error=str(e))
        return 1
    return 0
