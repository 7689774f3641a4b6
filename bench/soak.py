"""Soak: 100,000 open/echo/release and 100,000 open/abort associations against `dicomd serve`.

While the cycles run, the server process is sampled every `--sample-every` cycles from /proc: resident
memory (VmRSS), open file descriptors (/proc/PID/fd) and threads (/proc/PID/task). dicomd has no
metrics endpoint to count asyncio tasks, and nothing is added to it for this: what leaks in tasks
leaks in memory and, for connections, in descriptors. The figures must be flat after warm-up.

Then event-loop lag, measured from outside as C-ECHO round-trip times on one open association (one
echo every 10 ms), at rest, during a heavy C-STORE push (DCMTK storescu processes sending 512 KiB CT
slices) and during large C-FINDs (DCMTK findscu processes repeating an IMAGE-level query that
matches every pushed slice). Target: max < 100 ms.

The client of the cycles (documented, because it is what the figures depend on): one Python
process, asyncio (uvloop when installed), `--clients` concurrent tasks, each running cycles back to
back on fresh TCP connections with TCP_NODELAY. Every PDU it sends is encoded once at start with
dicomd's own PS3.8/PS3.7 codec (dicomd.ul.pdu, dicomd.dimse.messages): an A-ASSOCIATE-RQ proposing
Verification (Implicit VR LE), a C-ECHO-RQ in one P-DATA-TF, A-RELEASE-RQ, A-ABORT. A cycle is plain
socket writes and length-prefixed reads (6-byte PDU header, then the body): echo cycle = RQ -> AC,
ECHO -> P-DATA (C-ECHO-RSP status checked), RELEASE-RQ -> RELEASE-RP, close; abort cycle = RQ -> AC,
A-ABORT, close. No state machine, no per-cycle encoding: the client costs little beside the server.
The lag probe uses dicomd's RequestorAssociation (one association, echo() in a loop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from dicomd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomd.dimse import status
from dicomd.dimse.messages import CEchoRQ, decode_command, encode_command
from dicomd.net.requestor import RequestorAssociation
from dicomd.ul.codes import AbortReason, AbortSource
from dicomd.ul.items import (
    ImplementationClassUID,
    MaximumLength,
    PresentationContextRQ,
    UserInformation,
)
from dicomd.ul.negotiation import ProposedContext
from dicomd.ul.pdu import PDV, Abort, AssociateRQ, PDataTF, ReleaseRQ, encode
from tests import dicomgen
from tests.reliability.crashkit import AE_TITLE, HOST, Server, write_config

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_RQ = encode(
    AssociateRQ(
        called_ae_title=AE_TITLE,
        calling_ae_title="SOAK",
        application_context="1.2.840.10008.3.1.1.1",
        presentation_contexts=(PresentationContextRQ(1, VERIFICATION, (IMPLICIT,)),),
        user_information=UserInformation(
            (MaximumLength(16384), ImplementationClassUID(IMPLEMENTATION_CLASS_UID))
        ),
    )
)
_ECHO = encode(PDataTF((PDV(1, 0x03, encode_command(CEchoRQ(1, VERIFICATION))),)))
_RELEASE = encode(ReleaseRQ())
_ABORT = encode(Abort(AbortSource.SERVICE_USER, AbortReason.NOT_SPECIFIED))
ASSOCIATE_AC, P_DATA, RELEASE_RP = 0x02, 0x04, 0x06


class CycleError(Exception):
    pass


# --- the cycles --------------------------------------------------------------------------------


async def _read_pdu(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = await reader.readexactly(6)
    return header[0], await reader.readexactly(int.from_bytes(header[2:6], "big"))


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    writer.write(_RQ)
    kind, _ = await _read_pdu(reader)
    if kind != ASSOCIATE_AC:
        writer.close()
        raise CycleError(f"association answered with PDU type {kind:#04x}")
    return reader, writer


async def echo_cycle(port: int) -> None:
    reader, writer = await _open(port)
    try:
        writer.write(_ECHO)
        kind, body = await _read_pdu(reader)
        # body: PDV item length (4), context id, message control header, then the command set.
        if kind != P_DATA or getattr(decode_command(body[6:]), "status", None) != status.SUCCESS:
            raise CycleError("no C-ECHO Success")
        writer.write(_RELEASE)
        kind, _ = await _read_pdu(reader)
        if kind != RELEASE_RP:
            raise CycleError(f"release answered with PDU type {kind:#04x}")
    finally:
        writer.close()


async def abort_cycle(port: int) -> None:
    _reader, writer = await _open(port)
    writer.write(_ABORT)
    writer.close()


@dataclass
class Sample:
    phase: str
    cycles: int
    elapsed_s: float
    rss_mb: float
    fds: int
    threads: int


def sample(pid: int, phase: str, cycles: int, elapsed: float) -> Sample:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        fds = threads = -1
    rss = common.status_kib(pid, "VmRSS") / 1024
    return Sample(phase, cycles, round(elapsed, 2), round(rss, 1), fds, threads)


@dataclass
class Phase:
    name: str
    cycles: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    samples: list[Sample] = field(default_factory=list)


async def run_phase(
    name: str,
    cycle: Callable[[int], Awaitable[None]],
    *,
    port: int,
    pid: int,
    total: int,
    clients: int,
    every: int,
) -> Phase:
    phase = Phase(name)
    started = time.monotonic()
    phase.samples.append(sample(pid, name, 0, 0.0))
    issued = 0

    async def client() -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            try:
                await cycle(port)
            except (CycleError, OSError, asyncio.IncompleteReadError) as e:
                key = type(e).__name__ + (f": {e}" if isinstance(e, CycleError) else "")
                phase.errors[key] = phase.errors.get(key, 0) + 1
                if sum(phase.errors.values()) > max(100, total // 100):
                    raise
            phase.cycles += 1
            if phase.cycles % every == 0:
                elapsed = time.monotonic() - started
                phase.samples.append(sample(pid, name, phase.cycles, elapsed))
                print(
                    f"  {name}: {phase.cycles:>7} cycles, {phase.cycles / elapsed:6.0f}/s,"
                    f" RSS {phase.samples[-1].rss_mb:.1f} MB, fds {phase.samples[-1].fds},"
                    f" threads {phase.samples[-1].threads}",
                    flush=True,
                )

    await asyncio.gather(*(client() for _ in range(clients)))
    phase.elapsed_s = time.monotonic() - started
    return phase


# --- event-loop lag ----------------------------------------------------------------------------


@dataclass
class Lag:
    label: str
    probes: int = 0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    note: str = ""


def summarize(label: str, rtts: list[float], note: str = "") -> Lag:
    if not rtts:
        return Lag(label, note=note or "no probes")
    ms = sorted(r * 1000 for r in rtts)

    def pct(p: float) -> float:
        return round(ms[min(len(ms) - 1, int(p * len(ms)))], 2)

    return Lag(label, len(ms), pct(0.5), pct(0.9), pct(0.99), round(ms[-1], 2), note)


async def probe_while(port: int, busy: Callable[[], bool], interval: float = 0.01) -> list[float]:
    """C-ECHO round trips on one association, every `interval` s, while busy() holds."""
    assoc = await RequestorAssociation.open(
        HOST,
        port,
        calling_ae_title="LAGPROBE",
        called_ae_title=AE_TITLE,
        contexts=[ProposedContext(VERIFICATION, (IMPLICIT,))],
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        timeout=30,
    )
    rtts: list[float] = []
    async with assoc:
        while busy():
            t = time.perf_counter()
            if await assoc.echo() != status.SUCCESS:
                raise CycleError("probe echo failed")
            rtts.append(time.perf_counter() - t)
            await asyncio.sleep(interval)
    return rtts


async def lag_phase(port: int, tmp: Path, ct: int, find_seconds: float) -> list[Lag]:
    results: list[Lag] = []
    count = 0

    def first_100() -> bool:
        nonlocal count
        count += 1
        return count <= 100

    results.append(summarize("at rest", await probe_while(port, first_100)))
    storescu, findscu = common.find_dcmtk("storescu"), common.find_dcmtk("findscu")
    if storescu is None:
        return [*results, Lag("C-STORE push", note="skipped: DCMTK storescu missing")]
    print(f"lag: generating {ct} CT slices of 512 KiB", flush=True)
    paths = dicomgen.ct_series(tmp / "ct", ct, seed=7)
    parts = [paths[i::2] for i in range(2)]
    procs = [
        await _spawn(
            storescu, "-aet", f"PUSH{i}", "-aec", AE_TITLE, HOST, str(port), *map(str, part)
        )
        for i, part in enumerate(parts)
    ]
    started = time.monotonic()
    try:
        rtts = await probe_while(port, lambda: any(p.returncode is None for p in procs))
    finally:
        codes = [await _end(p) for p in procs]
    note = f"2 storescu, {ct} x 512 KiB in {time.monotonic() - started:.1f} s"
    if any(codes):
        note += f"; storescu exit codes {codes}"
    results.append(summarize("C-STORE push", rtts, note))
    if findscu is None:
        return [*results, Lag("C-FIND", note="skipped: DCMTK findscu missing")]
    import pydicom

    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    keys = ["QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={first.StudyInstanceUID}"]
    keys += [f"SeriesInstanceUID={first.SeriesInstanceUID}", "SOPInstanceUID", "InstanceNumber"]

    def findscu_argv(repeat: int) -> list[str]:
        argv = [findscu, "-S", "-aet", "FINDLOAD", "-aec", AE_TITLE, "--repeat", str(repeat)]
        for key in keys:
            argv += ["-k", key]
        return [*argv, HOST, str(port)]

    once = await _spawn(*findscu_argv(1), output=True)
    out, _ = await once.communicate()
    if once.returncode != 0:
        detail = out.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
        return [*results, Lag("C-FIND", note=f"skipped: findscu failed: {detail[0]}")]
    finders = [await _spawn(*findscu_argv(100_000)) for _ in range(2)]
    deadline = time.monotonic() + find_seconds
    try:
        rtts = await probe_while(port, lambda: time.monotonic() < deadline)
    finally:
        for p in finders:
            await _end(p)
    results.append(
        summarize(
            "C-FIND",
            rtts,
            f"2 findscu repeating an IMAGE-level query matching {ct} instances",
        )
    )
    return results


async def _spawn(*argv: str, output: bool = False) -> asyncio.subprocess.Process:
    pipe = asyncio.subprocess.PIPE if output else asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=pipe,
        stderr=asyncio.subprocess.STDOUT if output else asyncio.subprocess.DEVNULL,
        env=common.dcmtk_env(),
    )


async def _end(proc: asyncio.subprocess.Process, grace: float = 5.0) -> int:
    """End a process we started, by its PID: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(grace):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode


# --- the command -------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run soak", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cycles", type=int, default=100_000, help="cycles of each kind (default 100000)"
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent client tasks (8)")
    parser.add_argument(
        "--sample-every", type=int, default=0, help="cycles between samples (default cycles/20)"
    )
    parser.add_argument("--ct", type=int, default=200, help="CT slices pushed in the lag phase")
    parser.add_argument("--find-seconds", type=float, default=10.0, help="C-FIND load duration")
    parser.add_argument("--no-lag", action="store_true", help="skip the event-loop lag phase")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    with common.scratch("soak", keep=args.keep) as tmp:
        loop_factory = None
        with contextlib.suppress(ImportError):
            import uvloop

            loop_factory = uvloop.new_event_loop
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_bench(args, tmp))


async def _bench(args: argparse.Namespace, tmp: Path) -> int:
    port = common.free_port()
    server = Server(write_config(tmp, port), tmp / "server.log")
    await asyncio.to_thread(server.start)
    assert server.proc is not None
    pid = server.proc.pid
    every = args.sample_every or max(1, args.cycles // 20)
    print(
        f"dicomd serve pid {pid} on {HOST}:{port}; {args.clients} clients; {args.cycles} cycles each"
    )
    phases: list[Phase] = []
    lags: list[Lag] = []
    try:
        for name, cycle in (("open/echo/release", echo_cycle), ("open/abort", abort_cycle)):
            phases.append(
                await run_phase(
                    name,
                    cycle,
                    port=port,
                    pid=pid,
                    total=args.cycles,
                    clients=args.clients,
                    every=every,
                )
            )
        # The server closes its side of each aborted association on its own; let the last go.
        await asyncio.sleep(1.0)
        settled = sample(pid, "settled", phases[-1].cycles, phases[-1].elapsed_s)
        if not args.no_lag:
            lags = await lag_phase(port, tmp, args.ct, args.find_seconds)
        after_lag = sample(pid, "after lag", 0, 0.0)
    finally:
        code = await asyncio.to_thread(server.stop)
    errors = [e for e in server.events if e.get("level") in ("error", "critical")]
    return _report(args, phases, settled, after_lag, lags, errors, code)


def _report(
    args: argparse.Namespace,
    phases: list[Phase],
    settled: Sample,
    after_lag: Sample,
    lags: list[Lag],
    errors: list[dict[str, Any]],
    exit_code: int,
) -> int:
    print("\nresources of the server process (sampled during the cycles):")
    headers = ["phase", "cycles", "elapsed s", "cycles/s", "RSS MB", "fds", "threads"]
    rows = []
    for phase in phases:
        for s in phase.samples:
            rate = f"{s.cycles / s.elapsed_s:.0f}" if s.elapsed_s else "-"
            rows.append(
                [
                    s.phase,
                    str(s.cycles),
                    f"{s.elapsed_s:.1f}",
                    rate,
                    f"{s.rss_mb:.1f}",
                    str(s.fds),
                    str(s.threads),
                ]
            )
    rows.append(
        [
            "settled (1 s later)",
            "",
            "",
            "",
            f"{settled.rss_mb:.1f}",
            str(settled.fds),
            str(settled.threads),
        ]
    )
    common.print_table(headers, rows)
    # Warm-up: the first 25% of the first phase; flat means the rest stays within a small band.
    first = phases[0].samples
    warm = first[max(1, len(first) // 4)]
    later = [
        s for p in phases for s in p.samples if (p is not phases[0] or s.cycles >= warm.cycles)
    ]
    rss_growth = max(s.rss_mb for s in later) - warm.rss_mb
    checks = {
        f"RSS after warm-up stays within 5 MB (grew {rss_growth:.1f} MB)": rss_growth < 5.0,
        f"open fds back to the warm-up count ({settled.fds} vs {warm.fds})": settled.fds
        <= warm.fds,
        f"threads do not grow ({max(s.threads for s in later)} vs {warm.threads})": max(
            s.threads for s in later
        )
        <= warm.threads + 2,
        f"no cycle failed ({sum(sum(p.errors.values()) for p in phases)} errors)": not any(
            p.errors for p in phases
        ),
        f"no error logged by the server ({len(errors)})": not errors,
        f"clean shutdown (exit {exit_code})": exit_code == 0,
    }
    for phase in phases:
        print(
            f"{phase.name}: {phase.cycles} cycles in {phase.elapsed_s:.1f} s"
            f" ({phase.cycles / phase.elapsed_s:.0f}/s); errors: {phase.errors or 'none'}"
        )
    if lags:
        print("\nevent-loop lag, as C-ECHO round-trip time on one association (ms):")
        common.print_table(
            ["load", "probes", "p50", "p90", "p99", "max", ""],
            [
                [
                    lag.label,
                    str(lag.probes),
                    f"{lag.p50_ms:.2f}",
                    f"{lag.p90_ms:.2f}",
                    f"{lag.p99_ms:.2f}",
                    f"{lag.max_ms:.2f}",
                    lag.note,
                ]
                if lag.probes
                else [lag.label, lag.note]
                for lag in lags
            ],
        )
        measured = [lag for lag in lags if lag.probes]
        worst = max((lag.max_ms for lag in measured), default=0.0)
        checks[f"max echo round trip < 100 ms under load ({worst:.1f} ms)"] = worst < 100.0
        print(
            f"after the lag phase: RSS {after_lag.rss_mb:.1f} MB, fds {after_lag.fds}, threads {after_lag.threads}"
        )
    print("\nchecks:")
    for text, ok in checks.items():
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    if errors:
        for e in errors[:5]:
            print(f"  server error: {e}")
    if not args.no_json:
        path = common.write_results(
            "soak",
            {
                "benchmark": "soak",
                "machine": common.machine(),
                "options": {k: v for k, v in vars(args).items() if k != "no_json"},
                "phases": [asdict(p) for p in phases],
                "settled": asdict(settled),
                "lag": [asdict(lag) for lag in lags],
                "checks": checks,
                "server_errors": errors[:20],
            },
        )
        print(f"results: {path.relative_to(common.ROOT)}")
    return 0 if all(checks.values()) else 1
