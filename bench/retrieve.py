"""C-GET and C-MOVE throughput: one CT study retrieved from dicomd, Orthanc and DCMTK dcmqrscp.

Data: a 400-instance CT study (512 x 512 x 16 bit, ~525 KB files) and two 200-instance CT studies,
generated with tests/dicomgen.py and loaded with DCMTK storescu into each server, started fresh;
all servers are up and loaded before the first run, and the runs go in rounds over the servers.
Scenarios: (get) getscu retrieves the 400-instance study to itself; (move) movescu moves it to a
DCMTK storescp; (move2) two movescu at once move the two 200-instance studies to two storescp.
Measured: the wall time of the getscu/movescu processes (after the data are loaded), then every
instance is counted at its destination and a sample compared byte for byte with what was sent.
The receivers (getscu, the storescp destinations) write to tmpfs when /dev/shm has room
(common.receiving_dir says why); what getscu received is deleted after its run, what a
destination received before that destination's next run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pydicom

from bench import common
from bench.common import HOST, MB, BenchError, Monitor, cpu_seconds
from bench.qrservers import (
    CLIENT_AET,
    Destination,
    Peers,
    QRServer,
    find_peers,
    orthanc_version,
    servers_for,
    storescu_load,
)
from tests import dicomgen

READY_TIMEOUT = 60.0
SAMPLE = 10  # instances per destination compared byte for byte with the originals
TOOLS = ("getscu", "movescu", "storescu", "storescp", "echoscu")


@dataclass(frozen=True, slots=True)
class Study:
    key: str  # "big" (the 400-instance study), "b", "c" (the 200-instance ones)
    directory: Path
    study_uid: str
    files: dict[str, Path]  # SOP Instance UID -> original file
    bytes: int


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    studies: tuple[str, ...]  # one retrieve per study, all at once
    get: bool  # C-GET (the client receives) rather than C-MOVE to storescp


SCENARIOS = (
    Scenario("get", "C-GET of one CT study (getscu receives)", ("big",), True),
    Scenario("move", "C-MOVE of one CT study to DCMTK storescp", ("big",), False),
    Scenario("move2", "2 concurrent C-MOVEs of two CT studies to two storescp", ("b", "c"), False),
)


@dataclass
class Run:
    server: str
    label: str
    status: str = "ok"  # ok | FAILED
    reason: str = ""
    wall_s: float = 0.0
    client_walls_s: list[float] = field(default_factory=list)
    instances: int = 0
    bytes: int = 0
    instances_per_s: float = 0.0
    mb_per_s: float = 0.0
    cpu_s: float = 0.0
    machine_busy: float = 0.0  # share of all cores busy during the run (server, clients, kernel)
    peak_rss_mb: float = 0.0
    received: int = 0
    identical: int = 0
    compared: int = 0


@dataclass
class ServerResult:
    server: str
    label: str
    status: str = "ok"
    reason: str = ""
    load_s: float = 0.0
    runs: dict[str, Run] = field(default_factory=dict)


# -- data -------------------------------------------------------------------------------------


def generate(root: Path, big: int, small: int) -> dict[str, Study]:
    started = time.monotonic()
    studies = {
        "big": _study("big", dicomgen.ct_series(root / "big", big, seed=0)),
        "b": _study("b", dicomgen.ct_series(root / "b", small, patient_name="Move^Bob", seed=1)),
        "c": _study("c", dicomgen.ct_series(root / "c", small, patient_name="Move^Cid", seed=2)),
    }
    for s in studies.values():
        print(f"data: study {s.key}: {len(s.files)} CT files, {s.bytes / MB:.1f} MB")
    print(f"data: generated in {time.monotonic() - started:.1f} s under {root}")
    return studies


def _study(key: str, paths: list[Path]) -> Study:
    files: dict[str, Path] = {}
    study_uid = ""
    for path in paths:
        ds = pydicom.dcmread(path, specific_tags=["SOPInstanceUID", "StudyInstanceUID"])
        files[str(ds.SOPInstanceUID)] = path
        study_uid = str(ds.StudyInstanceUID)
    return Study(key, paths[0].parent, study_uid, files, common.tree_bytes(paths))


# -- the clients ------------------------------------------------------------------------------


def retrieve_argv(
    peers: Peers, server: QRServer, port: int, study: Study, target: Path | str, pdu: int | None
) -> list[str]:
    """getscu (target: its output directory) or movescu (target: the destination AE title)."""
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study.study_uid}"]
    if isinstance(target, Path):
        argv = [peers.tool("getscu"), "-S", "-aet", CLIENT_AET, "-aec", server.ae_title]
        argv += [*keys, "-od", str(target)]
        if pdu is not None:
            argv += ["-pdu", str(pdu)]
    else:
        argv = [peers.tool("movescu"), "-S", "-aet", CLIENT_AET, "-aec", server.ae_title]
        argv += ["-aem", target, *keys]
    return [*argv, HOST, str(port)]


def run_clients(argvs: list[list[str]], logs: list[Path], timeout: float) -> list[float]:
    """Start every client at once; the wall time of each, or BenchError (exit code, timeout)."""
    procs: list[subprocess.Popen[bytes]] = []
    ends: list[float | None] = []
    started = time.monotonic()
    try:
        for argv, log in zip(argvs, logs, strict=True):
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=out,
                        env=common.dcmtk_env(),
                    )
                )
            ends.append(None)
        deadline = started + timeout
        while any(end is None for end in ends):
            if time.monotonic() > deadline:
                raise BenchError(f"retrieve still running after {timeout:.0f} s")
            for i, proc in enumerate(procs):
                if ends[i] is None and proc.poll() is not None:
                    ends[i] = time.monotonic()
            time.sleep(0.002)
    finally:
        for proc in procs:
            common.stop(proc, grace=2.0)
    for proc, argv, log in zip(procs, argvs, logs, strict=True):
        if proc.returncode != 0:
            name = Path(argv[0]).name
            raise BenchError(f"{name} exit {proc.returncode}: {common.tail(log, 2)}")
    return [end - started for end in ends if end is not None]


def verify(directory: Path, study: Study) -> tuple[int, int, int]:
    """(files received, sampled, byte-identical data sets) for one study's destination."""
    received: dict[str, Path] = {}
    for path in directory.iterdir():
        if not path.is_file():
            continue
        # DCMTK names what it receives "<modality>.<SOP Instance UID>".
        uid = path.name.split(".", 1)[1] if "." in path.name else ""
        if uid not in study.files:
            uid = str(pydicom.dcmread(path, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        received[uid] = path
    uids = sorted(study.files)
    step = max(1, len(uids) // SAMPLE)
    sample = uids[::step][:SAMPLE]
    identical = 0
    for uid in sample:
        got = received.get(uid)
        if got is not None and dicomgen.dataset_bytes(got) == dicomgen.dataset_bytes(
            study.files[uid]
        ):
            identical += 1
    return sum(1 for uid in received if uid in study.files), len(sample), identical


# -- one server -------------------------------------------------------------------------------


@dataclass
class Live:
    """A server started, with its destinations, and loaded: ready for its runs."""

    server: QRServer
    result: ServerResult
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    inbox: Path  # where getscu and the destinations write (common.receiving_dir)
    dests: list[Destination]


@contextmanager
def started(
    server: QRServer,
    peers: Peers,
    studies: dict[str, Study],
    workdir: Path,
    inbox: Path,
    args: argparse.Namespace,
) -> Iterator[Live]:
    """Start the destinations and the server, load the data; stop them all (by PID) on exit."""
    result = ServerResult(server.key, server.label)
    workdir.mkdir(parents=True)
    inbox.mkdir(parents=True)
    dests = [Destination(f"DEST{i}", common.free_port()) for i in (1, 2)]
    dest_dirs = [inbox / f"dest{i}" for i in (1, 2)]
    with destinations(peers, dests, dest_dirs, workdir, args.pdu):
        port = common.free_port()
        launch = server.prepare(workdir, port, dests)
        log = workdir / "server.log"
        with common.spawned(launch.argv, log=log, env=common.dcmtk_env(), cwd=workdir) as proc:
            common.wait_ready(
                proc, peers.tool("echoscu"), port, server.ae_title, log, READY_TIMEOUT
            )
            begun = time.monotonic()
            storescu_load(
                peers.tool("storescu"),
                server,
                port,
                [s.directory for s in studies.values()],
                workdir / "load.log",
                args.timeout,
            )
            result.load_s = time.monotonic() - begun
            expected = sum(len(s.files) for s in studies.values())
            stored = server.stored(workdir, launch)
            if stored != expected:
                raise BenchError(f"loaded {stored} of {expected} instances")
            print(f"  {server.label}: loaded {stored} instances in {result.load_s:.1f} s")
            yield Live(server, result, proc, port, workdir, inbox, dests)


@contextmanager
def destinations(
    peers: Peers, dests: list[Destination], dirs: list[Path], workdir: Path, pdu: int | None
) -> Iterator[None]:
    """The C-MOVE destinations: one DCMTK storescp each (single process; +xa: every transfer
    syntax it knows), writing to its directory; stopped by PID when the block ends."""
    with ExitStack() as stack:
        for dest, directory in zip(dests, dirs, strict=True):
            directory.mkdir()
            argv = [peers.tool("storescp"), "-aet", dest.ae_title, "+xa"]
            if pdu is not None:
                argv += ["-pdu", str(pdu)]
            argv += ["-od", str(directory), str(dest.port)]
            log = workdir / f"{dest.ae_title.lower()}.log"
            proc = stack.enter_context(common.spawned(argv, log=log, env=common.dcmtk_env()))
            common.wait_ready(
                proc, peers.tool("echoscu"), dest.port, dest.ae_title, log, READY_TIMEOUT
            )
        yield


def run_rounds(
    live: list[Live],
    peers: Peers,
    studies: dict[str, Study],
    scenarios: list[Scenario],
    args: argparse.Namespace,
) -> None:
    """Each server's fastest of --repeat runs of each scenario, into its result. The runs go in
    rounds over servers and scenarios together (dicomd get, move, move2, Orthanc get, ..., then
    dicomd again; common.fastest_in_rounds), so that a ratio, of two servers or of two moves to
    one, compares runs from the same minutes."""
    jobs = [
        (
            (one.server.key, scenario.key),
            partial(run_one, one, peers, studies, scenario, args),
        )
        for one in live
        for scenario in scenarios
    ]
    best = common.fastest_in_rounds(args.repeat, jobs)
    for one in live:
        for scenario in scenarios:
            one.result.runs[scenario.key] = best[(one.server.key, scenario.key)]


def run_one(
    one: Live,
    peers: Peers,
    studies: dict[str, Study],
    scenario: Scenario,
    args: argparse.Namespace,
    attempt: int,
) -> Run:
    chosen = [studies[key] for key in scenario.studies]
    run = Run(one.server.key, one.server.label)
    run.instances = sum(len(s.files) for s in chosen)
    run.bytes = sum(s.bytes for s in chosen)
    targets: list[Path] = []
    argvs: list[list[str]] = []
    for i, study in enumerate(chosen):
        if scenario.get:
            target = one.inbox / f"get-{attempt}-{i + 1}"
            target.mkdir()
            argvs.append(retrieve_argv(peers, one.server, one.port, study, target, args.pdu))
        else:
            target = one.inbox / f"dest{i + 1}"
            for old in target.iterdir():
                old.unlink()
            argvs.append(
                retrieve_argv(peers, one.server, one.port, study, one.dests[i].ae_title, args.pdu)
            )
        targets.append(target)
    logs = [one.workdir / f"{scenario.key}-{attempt}-{i + 1}.log" for i in range(len(chosen))]
    try:
        cpu_before = cpu_seconds(one.proc.pid)
        machine_before = common.machine_ticks()
        with Monitor(one.proc.pid) as monitor:
            try:
                run.client_walls_s = run_clients(argvs, logs, args.timeout)
            except BenchError as e:
                if one.proc.poll() is not None:
                    raise BenchError(f"server exited with {one.proc.returncode}; {e}") from e
                raise
            finally:
                run.cpu_s = cpu_seconds(one.proc.pid) - cpu_before
                run.machine_busy = common.busy_share(machine_before, common.machine_ticks())
        run.peak_rss_mb = monitor.peak_rss_bytes / MB
        run.wall_s = max(run.client_walls_s)
        for target, study in zip(targets, chosen, strict=True):
            received, compared, identical = verify(target, study)
            run.received += received
            run.compared += compared
            run.identical += identical
        if run.received != run.instances:
            raise BenchError(f"received {run.received} of {run.instances} instances")
        if one.server.key == "dicomd" and run.identical != run.compared:
            raise BenchError(
                f"only {run.identical} of {run.compared} sampled data sets byte-identical"
            )
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        run.status, run.reason = "FAILED", str(e) or type(e).__name__
        return run
    finally:
        if scenario.get and not args.keep:
            for target in targets:
                shutil.rmtree(target, ignore_errors=True)
    run.instances_per_s = run.instances / run.wall_s
    run.mb_per_s = run.bytes / MB / run.wall_s
    return run


# -- report -----------------------------------------------------------------------------------


def _ratio(run: Run, reference: Run | None) -> str:
    if run.status != "ok" or reference is None or reference.status != "ok":
        return "n/a"
    return f"{run.instances_per_s / reference.instances_per_s:.2f}x"


def print_scenario(
    scenario: Scenario,
    studies: dict[str, Study],
    results: list[ServerResult],
    skipped: list[str],
) -> None:
    chosen = [studies[key] for key in scenario.studies]
    total = sum(len(s.files) for s in chosen)
    size = sum(s.bytes for s in chosen) / MB
    print(f"\n({scenario.key}) {scenario.title}: {total} instances, {size:.1f} MB")
    runs = {r.server: r.runs.get(scenario.key) for r in results}
    headers = ["server", "wall s", "client s", "inst/s", "MB/s", "CPU s", "busy", "peak RSS MB"]
    headers += ["identical", "vs Orthanc", "vs dcmqrscp"]
    rows: list[list[str]] = []
    for result in results:
        run = runs[result.server]
        if run is None or run.status != "ok":
            reason = run.reason if run is not None else result.reason
            rows.append([result.label, f"FAILED: {reason[:200]}"])
            continue
        rows.append(
            [
                result.label,
                f"{run.wall_s:.2f}",
                "/".join(f"{w:.2f}" for w in run.client_walls_s),
                f"{run.instances_per_s:.1f}",
                f"{run.mb_per_s:.1f}",
                f"{run.cpu_s:.2f}",
                f"{run.machine_busy:.0%}",
                f"{run.peak_rss_mb:.1f}",
                f"{run.identical}/{run.compared}",
                _ratio(run, runs.get("orthanc")),
                _ratio(run, runs.get("dcmqrscp")),
            ]
        )
    rows += [[t.split(":", 1)[0], "skipped: " + t.split(":", 1)[1].strip()] for t in skipped]
    common.print_table(headers, rows)


MB_PER_S_TARGET = 200.0
OVERLAP_TARGET = 0.8
# Two concurrent moves against one, instances/s: 1.0x is what serialized moves would give. Above
# it, the moves share the machine; on 2 cores that also run both storescp destinations and both
# movescu clients, the machine itself is the limit well before 2x.
SCALING_TARGET = 1.1


def _scaling(runs: dict[str, Run]) -> float | None:
    """(move2) instances/s over (move)'s, when both ran and succeeded."""
    one, two = runs.get("move"), runs.get("move2")
    if one is None or two is None or one.status != "ok" or two.status != "ok":
        return None
    return two.instances_per_s / one.instances_per_s


def check_targets(results: list[ServerResult]) -> list[dict[str, Any]]:
    by_server = {r.server: r.runs for r in results}
    mine = by_server.get("dicomd", {})
    checks: list[dict[str, Any]] = []

    def add(scenario: str, check: str, value: float | None, minimum: float) -> None:
        passed = None if value is None else value >= minimum
        checks.append({"scenario": scenario, "check": check, "value": value, "passed": passed})

    def ok(run: Run | None) -> bool:
        return run is not None and run.status == "ok"

    if not mine:
        return checks
    for key in ("get", "move"):
        for reference, label in (("orthanc", "Orthanc"), ("dcmqrscp", "dcmqrscp")):
            if reference not in by_server:
                continue
            a, b = mine.get(key), by_server[reference].get(key)
            value = None
            if a is not None and b is not None and ok(a) and ok(b):
                value = a.instances_per_s / b.instances_per_s
            add(key, f"dicomd >= 1.0x {label} instances/s", value, 1.0)
    if "get" in mine:
        get = mine["get"]
        value = get.mb_per_s if ok(get) else None
        add("get", f"dicomd >= {MB_PER_S_TARGET:.0f} MB/s", value, MB_PER_S_TARGET)
    if "move2" in mine:
        both = mine["move2"]
        value = None
        if ok(both) and len(both.client_walls_s) == 2:
            value = min(both.client_walls_s) / max(both.client_walls_s)
        add(
            "move2",
            f"dicomd's 2 moves overlap (shorter/longer movescu wall >= {OVERLAP_TARGET})",
            value,
            OVERLAP_TARGET,
        )
        if "move" in mine:
            add(
                "move2",
                f"dicomd's 2 moves scale (instances/s vs one move >= {SCALING_TARGET}x)",
                _scaling(mine),
                SCALING_TARGET,
            )
    return checks


def print_targets(checks: list[dict[str, Any]], results: list[ServerResult]) -> None:
    common.print_checks(checks, "scenario")
    scaling = []
    for result in results:
        ratio = _scaling(result.runs)
        if ratio is not None:
            scaling.append(f"{result.label} {ratio:.2f}x")
    if scaling:
        print("  info: 2 concurrent moves vs one move, instances/s: " + ", ".join(scaling))


# -- command ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run retrieve", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--scenarios", default="get,move,move2", help="comma-separated (default: get,move,move2)"
    )
    parser.add_argument(
        "--servers",
        default="dicomd,orthanc,dcmqrscp",
        help="comma-separated rows (default: dicomd,orthanc,dcmqrscp)",
    )
    parser.add_argument("--ct", type=int, default=400, help="instances of the study (400)")
    parser.add_argument(
        "--ct2", type=int, default=200, help="instances of each concurrently moved study (200)"
    )
    parser.add_argument(
        "--pdu",
        type=int,
        default=None,
        help="max PDU the receivers (getscu, storescp) accept; default DCMTK's 16384",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per row, best kept (default 1)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per step (300)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    wanted = args.scenarios.split(",")
    scenarios = [s for s in SCENARIOS if s.key in wanted]
    if len(scenarios) != len(wanted):
        raise SystemExit(f"unknown scenario in {args.scenarios!r} (get, move, move2)")
    with common.scratch("retrieve", keep=args.keep) as tmp:
        return _bench(args, scenarios, tmp)


def _bench(args: argparse.Namespace, scenarios: list[Scenario], tmp: Path) -> int:
    peers = find_peers(TOOLS)
    missing = [name for name, path in peers.tools.items() if path is None]
    if missing:
        print(f"cannot run: DCMTK's {', '.join(missing)} are needed (apt-get install dcmtk)")
        return 2
    servers, skipped = servers_for(peers, args.servers.split(","))
    studies = generate(tmp / "data", args.ct, args.ct2)
    results: list[ServerResult] = []
    # The largest run's output, once per server (a destination keeps its files until its next
    # run) and once more for the run under way.
    largest = max(sum(studies[k].bytes for k in s.studies) for s in scenarios)
    with ExitStack() as stack:
        inboxes = stack.enter_context(
            common.receiving_dir(
                "retrieve", tmp / "received", largest * (len(servers) + 1), keep=args.keep
            )
        )
        live: list[Live] = []
        for server in servers:
            print(f"server {server.label}: starting")
            try:
                one = stack.enter_context(
                    started(
                        server,
                        peers,
                        studies,
                        tmp / "runs" / server.key,
                        inboxes / server.key,
                        args,
                    )
                )
            except (BenchError, OSError, subprocess.SubprocessError) as e:
                broken = ServerResult(
                    server.key, server.label, "FAILED", str(e) or type(e).__name__
                )
                print(f"  {server.label}: FAILED: {broken.reason}")
                results.append(broken)
                continue
            live.append(one)
            results.append(one.result)
        # All servers are up and loaded, then measured in rounds; they are stopped together.
        run_rounds(live, peers, studies, scenarios, args)
    for scenario in scenarios:
        print_scenario(scenario, studies, results, skipped)
    checks = check_targets(results)
    print_targets(checks, results)
    if not args.no_json:
        path = common.write_results("retrieve", _payload(args, peers, studies, results, checks))
        print(f"\nresults: {path.relative_to(common.ROOT)}")
    failed = [r for r in results if r.status != "ok"]
    failed += [r for r in results if any(run.status != "ok" for run in r.runs.values())]
    return 1 if failed else 0


def _payload(
    args: argparse.Namespace,
    peers: Peers,
    studies: dict[str, Study],
    results: list[ServerResult],
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "benchmark": "retrieve",
        "machine": common.machine(),
        "peers": {
            "dcmtk": common.dcmtk_version(peers.tool("getscu")),
            "orthanc": orthanc_version(peers.orthanc) if peers.orthanc else "not installed",
        },
        "options": {k: v for k, v in vars(args).items() if k != "no_json"},
        "studies": {
            key: {"instances": len(s.files), "bytes": s.bytes, "study_uid": s.study_uid}
            for key, s in studies.items()
        },
        "servers": [asdict(r) for r in results],
        "targets": checks,
    }
