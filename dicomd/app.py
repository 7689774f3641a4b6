"""Composition root: build the policy and services from the configuration, run the server.

Owns: the event loop choice (uvloop by default), signal handling (first SIGTERM/SIGINT drains, a second
one forces the exit) and the order of start-up and shutdown.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from functools import partial

import structlog

from dicomd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, __version__, metrics
from dicomd.config import Config, ConfigError
from dicomd.dimse.messages import CEchoRQ, CFindRQ, CGetRQ, CMoveRQ, CStoreRQ, Message
from dicomd.metrics import MetricsServer
from dicomd.net.association import ServerState
from dicomd.net.mover_pool import MoverPool
from dicomd.net.outbound import open_outbound
from dicomd.net.server import DicomServer
from dicomd.services.base import Handler, SinkFactory
from dicomd.services.echo import VERIFICATION_SOP_CLASS, handle_echo
from dicomd.services.find import FindService
from dicomd.services.find import extended_negotiation as find_extended_negotiation
from dicomd.services.retrieve import GET_SOP_CLASSES, MOVE_SOP_CLASSES, RetrieveService
from dicomd.services.sop_classes import DEFAULT_STORAGE_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from dicomd.services.store import StoreService
from dicomd.services.suboperations import LocalMover, Mover
from dicomd.storage.files import FileStore
from dicomd.storage.index import Index
from dicomd.storage.reconcile import reconcile
from dicomd.systemd import Notifier, cancel_watchdog
from dicomd.systemd import watchdog as systemd_watchdog
from dicomd.tls import server_context
from dicomd.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
)
from dicomd.ul.negotiation import AcceptorPolicy

log = structlog.get_logger("dicomd.app")

UNCOMPRESSED = (EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE)


# Written at a clean shutdown, removed at start-up: its absence means the last run ended in a crash and
# the store must be reconciled with the index before serving.
CLEAN_SHUTDOWN_MARKER = ".clean-shutdown"
# Empty spool files kept ready (storage/spares.py): one per association storing at the same time
# takes its spool without waiting on the filesystem; beyond that, a store creates its own.
SPOOL_SPARES = 4


@dataclass
class Runtime:
    """The long-lived parts of a running server, in the order they must be closed."""

    config: Config
    files: FileStore
    index: Index
    store: StoreService
    state: ServerState
    retrieve: RetrieveService | None = None
    movers: MoverPool | None = None

    def reload(self, load: Callable[[], Config]) -> None:
        """SIGHUP: apply the remote AE table, the access lists and the retrieve settings of a
        freshly read configuration, without touching running associations (a retrieve under way
        keeps the pending interval it started with). An invalid file keeps the old configuration."""
        try:
            new = load()
        except ConfigError as e:
            log.error("config_reload_failed", error=str(e), kept="previous configuration")
            return
        old = self.config
        self.state.security = new.security
        self.state.remotes = {r.ae_title: r for r in new.remote}
        self.state.policy = replace(
            self.state.policy, allowed_calling_aets=frozenset(new.security.allowed_calling_aets)
        )
        if self.retrieve is not None:
            self.retrieve.set_remotes(self.state.remotes)
            self.retrieve.set_pending_interval(new.retrieve.pending_interval)
        applied = replace(old, remote=new.remote, security=new.security, retrieve=new.retrieve)
        self.config = applied
        ignored = [f.name for f in fields(new) if getattr(new, f.name) != getattr(applied, f.name)]
        log.info(
            "config_reloaded",
            remotes=len(new.remote),
            allowed_calling_aets=len(new.security.allowed_calling_aets),
            restart_needed_for=ignored or None,
        )

    async def close(self) -> None:
        if self.movers is not None:
            await self.movers.close()
        await self.store.close()
        await asyncio.to_thread(self.files.close)
        await self.index.close()
        marker = self.config.storage.root / CLEAN_SHUTDOWN_MARKER
        await asyncio.to_thread(marker.touch)


async def open_runtime(config: Config) -> Runtime:
    durable = config.storage.durability == "full"
    files = await asyncio.to_thread(
        partial(
            FileStore,
            config.storage.root,
            fsync=durable,
            spares=SPOOL_SPARES,
            min_free_bytes=config.storage.min_free_mb * 2**20,
        )
    )
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
    find = FindService(
        index,
        ae_title=config.server.ae_title,
        pn_case_insensitive=config.query.pn_case_insensitive,
        max_matches=config.query.max_matches,
    )
    movers: MoverPool | None = None
    mover: Mover
    if config.retrieve.move_processes > 0:
        mover = movers = MoverPool(config, config.retrieve.move_processes)
    else:
        mover = LocalMover(files.path, partial(open_outbound, config))
    retrieve = RetrieveService(
        files,
        index,
        ae_title=config.server.ae_title,
        remote_ae={r.ae_title: r for r in config.remote},
        mover=mover,
        pending_interval=config.retrieve.pending_interval,
    )
    state = build_state(config, store, find, retrieve)
    return Runtime(config, files, index, store, state, retrieve, movers)


def build_state(
    config: Config,
    store: StoreService | None = None,
    find: FindService | None = None,
    retrieve: RetrieveService | None = None,
) -> ServerState:
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
    extended: dict[str, Callable[[bytes], bytes | None]] = {}
    if find is not None:
        # Identifiers are small: the uncompressed syntaxes, and Deflated for those who ask.
        find_ts = (*UNCOMPRESSED, DEFLATED_EXPLICIT_VR_LE)
        for sop_class in find.sop_classes:
            abstract_syntaxes[sop_class] = find_ts
            handlers[(sop_class, CFindRQ)] = find.handle
            extended[sop_class] = find_extended_negotiation
    requestor_scp: frozenset[str] = frozenset()
    if retrieve is not None:
        for sop_class in GET_SOP_CLASSES:
            abstract_syntaxes[sop_class] = UNCOMPRESSED
            handlers[(sop_class, CGetRQ)] = retrieve.handle_get
        for sop_class in MOVE_SOP_CLASSES:
            abstract_syntaxes[sop_class] = UNCOMPRESSED
            handlers[(sop_class, CMoveRQ)] = retrieve.handle_move
        # C-GET sends its C-STOREs back on the requestor's association: it may take the SCP role
        # for any storage class (PS3.4 C.4.3.3, role selection PS3.7 D.3.3.4).
        requestor_scp = frozenset(STORAGE_SOP_CLASSES)
    policy = AcceptorPolicy(
        ae_title=s.ae_title,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        abstract_syntaxes=abstract_syntaxes,
        max_pdu_length=s.max_pdu_length,
        reject_wrong_called_ae=s.called_ae_check == "reject",
        allowed_calling_aets=frozenset(config.security.allowed_calling_aets),
        requestor_scp_allowed=requestor_scp,
        extended_negotiation=extended,
    )
    return ServerState(
        policy=policy,
        handlers=handlers,
        sinks=sinks,
        security=config.security,
        remotes={r.ae_title: r for r in config.remote},
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
    reload: Callable[[], Config] | None = None,
) -> None:
    """Run until `stop` is set, then shut down within the configured deadline. With `reload`,
    SIGHUP re-reads the configuration through it (remote AEs and access lists)."""
    runtime = await open_runtime(config)
    notifier = Notifier.from_environment()
    loop = asyncio.get_running_loop()
    if reload is not None:

        def on_hup() -> None:
            notifier.reloading()
            try:
                runtime.reload(reload)
            finally:
                notifier.ready()  # RELOADING=1 is always followed by READY=1 (sd_notify(3))

        loop.add_signal_handler(signal.SIGHUP, on_hup)
    servers: list[DicomServer] = []
    if config.tls.plain_listener:
        servers.append(DicomServer(runtime.state, config.server.host, config.server.port))
    if config.tls.enabled:
        tls_context = await asyncio.to_thread(server_context, config.tls)
        servers.append(DicomServer(runtime.state, config.server.host, config.tls.port, tls_context))
    try:
        for server in servers:
            await server.start()
    except BaseException:
        for server in servers:
            await server.shutdown(0)
        await runtime.close()
        raise
    metrics_server = None
    if config.metrics.enabled:
        metrics.STORE_FREE_BYTES.set_function(runtime.files.free_bytes)
        metrics_server = MetricsServer(
            config.metrics.host,
            config.metrics.port,
            healthy=lambda: not runtime.state.draining,
        )
        metrics_server.start()
        log.info("metrics_listening", host=config.metrics.host, port=metrics_server.port)
    ports = [s.port for s in servers]
    # Everything made so far (modules, pydicom's dictionaries, the configuration) lives as long as
    # the process: out of the collector's sight, every collection stops walking it again.
    gc.freeze()
    log.info("dicomd_ready", ae_title=config.server.ae_title, ports=ports, version=__version__)
    if on_ready is not None:
        on_ready(servers[0])
    # READY only now that associations are accepted; the watchdog is fed from this loop, so a
    # stalled loop stops feeding it and systemd restarts us (WatchdogSec in the unit).
    notifier.ready(f"serving {config.server.ae_title} on {ports}")
    watchdog_task = systemd_watchdog(loop, notifier)
    try:
        await stop.wait()
    finally:
        notifier.stopping()
        await cancel_watchdog(watchdog_task)
        # Both listeners share the associations' state: drain them together, one deadline.
        await asyncio.gather(*(s.shutdown(config.server.shutdown_timeout) for s in servers))
        await runtime.close()
        if metrics_server is not None:
            metrics_server.stop()


def run(config: Config, reload: Callable[[], Config] | None = None) -> int:
    """Run the server in a fresh event loop until SIGTERM/SIGINT; returns the exit status."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if config.server.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_main(config, reload))


async def _main(config: Config, reload: Callable[[], Config] | None) -> int:
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
        await serve(config, stop=stop, reload=reload)
    except asyncio.CancelledError:
        return 1
    except OSError as e:
        log.error("server_failed", error=str(e))
        return 1
    return 0
