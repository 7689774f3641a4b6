"""C-STORE throughput: the same files sent with DCMTK storescu to dicomd, DCMTK storescp, pynetdicom
and Orthanc.

Scenarios: (a) 400 CT instances of 512 KiB over one association, (b) the same over 4 concurrent
associations (4 storescu processes of 100 files each), (c) 3000 small instances of 5-10 KB over one
association, (d) the same over 4 associations. Each run starts its server fresh on 127.0.0.1 with an
empty store, and measures the wall time from the first storescu start to the last exit, the server's
CPU seconds over that time and its peak resident memory; then checks every storescu exit code and
the number of files the server stored. What the servers stored stays on disk until the benchmark
ends when the disk has room (common.keeps_runs says why).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bench import common, floor
from bench.common import HOST, MB, BenchError, Monitor, cpu_seconds
from bench.floor import Floor
from bench.qrservers import INSTALL, ORTHANC_AET, find_orthanc, orthanc_version
from bench.servers import DICOMD_AET, STORESCP_AET, Server, dicomd_accepts
from tests import dicomgen

FLOOR_FILES = 1000  # files timed by floor.measure(), at most
PARTS = 4  # the data are split into this many directories, one per concurrent association
READY_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    data: str  # "ct" or "small"
    associations: int


SCENARIOS = (
    Scenario("a", "CT 512 KiB, 1 association", "ct", 1),
    Scenario("b", "CT 512 KiB, 4 associations", "ct", 4),
    Scenario("c", "small 5-10 KB, 1 association", "small", 1),
    Scenario("d", "small 5-10 KB, 4 associations", "small", 4),
)


@dataclass(frozen=True, slots=True)
class Data:
    root: Path
    parts: tuple[Path, ...]
    files: int
    bytes: int


@dataclass
class Run:
    server: str
    label: str
    status: str = "ok"  # ok | FAILED
    reason: str = ""
    wall_s: float = 0.0
    instances_per_s: float = 0.0
    mb_per_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    stored: int = 0
    expected: int = 0
    client_exit_codes: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Tools:
    storescu: str
    echoscu: str


# -- peers and servers ------------------------------------------------------------------------


def check_peers(tmp: Path, wanted: list[str]) -> tuple[Tools | None, list[Server], list[str]]:
    """Print the peers found; return the client tools, the servers to run and the skipped rows."""
    storescu, echoscu = common.find_dcmtk("storescu"), common.find_dcmtk("echoscu")
    storescp = common.find_dcmtk("storescp")
    print("peers:")
    for name, path in (("storescu", storescu), ("echoscu", echoscu), ("storescp", storescp)):
        found = f"{path} ({common.dcmtk_version(path)})" if path else "MISSING"
        print(f"  DCMTK {name:9s} {found}")
    pynetdicom = common.has_module("pynetdicom")
    print(f"  pynetdicom      {common.version_of('pynetdicom') if pynetdicom else 'MISSING'}")
    orthanc = find_orthanc()
    found = f"{orthanc} ({orthanc_version(orthanc)})" if orthanc else "MISSING"
    print(f"  Orthanc         {found}")
    print(f"  dicomd          {common.version_of('dicomd')} ({common.git_revision()})")
    skipped: list[str] = []
    if not (storescp and storescu and echoscu):
        print("  -> DCMTK's binaries are missing: apt-get install dcmtk")
    if not pynetdicom:
        print("  -> pynetdicom is missing: pip install pynetdicom")
    servers: list[Server] = []
    if "storescp" in wanted:
        if storescp:
            servers.append(Server("storescp", "DCMTK storescp", STORESCP_AET, binary=storescp))
        else:
            skipped.append("DCMTK storescp: not installed (apt-get install dcmtk)")
    if "dicomd" in wanted:
        servers.append(Server("dicomd", "dicomd", DICOMD_AET))
    if "dicomd-relaxed" in wanted:
        ok, message = dicomd_accepts(tmp / "probe", "relaxed")
        if ok:
            servers.append(
                Server("dicomd-relaxed", "dicomd (relaxed)", DICOMD_AET, durability="relaxed")
            )
        else:
            skipped.append(
                f'dicomd (relaxed): check-config rejects durability = "relaxed": {message}'
            )
    if "pynetdicom" in wanted:
        if pynetdicom:
            servers.append(Server("pynetdicom", "pynetdicom storescp", STORESCP_AET))
        else:
            skipped.append("pynetdicom storescp: not installed (pip install pynetdicom)")
    if "orthanc" in wanted:
        if orthanc:
            servers.append(Server("orthanc", "Orthanc", ORTHANC_AET, binary=orthanc))
        else:
            skipped.append(f"Orthanc: not installed ({INSTALL['orthanc']})")
    tools = Tools(storescu, echoscu) if storescu and echoscu else None
    return tools, servers, skipped


# -- data -------------------------------------------------------------------------------------


def generate(tmp: Path, ct_count: int, small_count: int) -> dict[str, Data]:
    started = time.monotonic()
    data = {
        "ct": _split(dicomgen.ct_series(tmp / "ct", ct_count), tmp / "ct"),
        "small": _split(dicomgen.small_instances(tmp / "small", small_count), tmp / "small"),
    }
    for name, d in data.items():
        print(f"data: {d.files} {name} files, {d.bytes / MB:.1f} MB in {d.root}")
    print(f"data: generated in {time.monotonic() - started:.1f} s")
    return data


def _split(paths: list[Path], root: Path) -> Data:
    """Move the files into PARTS directories of consecutive files: one per association."""
    size = common.tree_bytes(paths)
    per_part = -(-len(paths) // PARTS)
    parts = []
    for j in range(PARTS):
        part = root / f"part-{j + 1}"
        part.mkdir()
        for path in paths[j * per_part : (j + 1) * per_part]:
            path.rename(part / path.name)
        parts.append(part)
    return Data(root, tuple(parts), len(paths), size)


# -- one run ----------------------------------------------------------------------------------


def storescu_argv(tools: Tools, aet: str, port: int, directory: Path) -> list[str]:
    # -R proposes one context per SOP class and transfer syntax found in the files (not DCMTK's
    # whole list); +sd +r scans the directory recursively.
    return [
        *(tools.storescu, "-aet", "BENCH", "-aec", aet, "-R", "+sd", "+r"),
        *(HOST, str(port), str(directory)),
    ]


def send(
    tools: Tools, aet: str, port: int, dirs: list[Path], logs: Path, timeout: float
) -> list[int]:
    """Run one storescu per directory at once; their exit codes, or BenchError on the timeout."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i, directory in enumerate(dirs):
            log = logs / f"storescu-{i + 1}.log"
            with log.open("wb") as out:
                argv = storescu_argv(tools, aet, port, directory)
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=common.dcmtk_env()
                )
            procs.append((proc, log))
        deadline = time.monotonic() + timeout
        for proc, _log in procs:
            proc.wait(max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"storescu still running after {timeout:.0f} s") from e
    finally:
        for proc, _log in procs:
            common.stop(proc, grace=2.0)
    failed = [(p.returncode, log) for p, log in procs if p.returncode != 0]
    if failed:
        rc, log = failed[0]
        raise BenchError(f"storescu exit {rc}: {common.tail(log, 2)}")
    return [p.returncode for p, _ in procs]


def run_one(
    server: Server, scenario: Scenario, data: Data, tools: Tools, workdir: Path, timeout: float
) -> Run:
    run = Run(server.key, server.label, expected=data.files)
    workdir.mkdir(parents=True)
    dirs = [data.root] if scenario.associations == 1 else list(data.parts)
    port = common.free_port()
    log = workdir / "server.log"
    try:
        argv = server.argv(workdir, port)
        with common.spawned(argv, log=log, env=common.dcmtk_env(), cwd=workdir) as proc:
            common.wait_ready(proc, tools.echoscu, port, server.ae_title, log, READY_TIMEOUT)
            cpu_before = cpu_seconds(proc.pid)
            with Monitor(proc.pid) as monitor:
                started = time.monotonic()
                try:
                    run.client_exit_codes = send(
                        tools, server.ae_title, port, dirs, workdir, timeout
                    )
                except BenchError as e:
                    if proc.poll() is not None:  # the server died under load: say so first
                        died = f"server exited with {proc.returncode}: {common.tail(log, 1)}"
                        raise BenchError(f"{died}; {e}") from e
                    raise
                finally:
                    run.wall_s = time.monotonic() - started
                    run.cpu_s = cpu_seconds(proc.pid) - cpu_before
            run.peak_rss_mb = monitor.peak_rss_bytes / MB
            run.stored = server.stored(workdir)  # while it runs: Orthanc is asked over HTTP
        if run.stored != data.files:
            raise BenchError(f"stored {run.stored} of {data.files} files")
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        run.status, run.reason = "FAILED", str(e) or type(e).__name__
        return run
    run.instances_per_s = data.files / run.wall_s
    run.mb_per_s = data.bytes / MB / run.wall_s
    return run


def run_rounds(
    servers: list[Server],
    scenario: Scenario,
    data: Data,
    tools: Tools,
    tmp: Path,
    args: argparse.Namespace,
    deadline: float,
    keep_runs: bool,
) -> list[Run]:
    """Each server's fastest of --repeat runs, in the order of `servers`; the runs go in rounds
    over the servers (common.fastest_in_rounds), so the ratios compare the same minutes. Each
    run's directory is removed after it unless `keep_runs` (or --keep)."""

    def attempt(server: Server, number: int) -> Run:
        workdir = tmp / "runs" / f"{scenario.key}-{server.key}-{number}"
        timeout = min(args.timeout, deadline - time.monotonic())
        if timeout <= 0:
            return Run(server.key, server.label, "FAILED", "scenario timeout", expected=data.files)
        try:
            return run_one(server, scenario, data, tools, workdir, timeout)
        finally:
            if not (args.keep or keep_runs):
                shutil.rmtree(workdir, ignore_errors=True)

    jobs = [(server.key, partial(attempt, server)) for server in servers]
    best = common.fastest_in_rounds(args.repeat, jobs)
    return [best[server.key] for server in servers]


# -- report -----------------------------------------------------------------------------------


def ratio(run: Run, reference: Run | None) -> str:
    if run.status != "ok" or reference is None or reference.status != "ok":
        return "n/a"
    return f"{run.instances_per_s / reference.instances_per_s:.2f}x"


def print_scenario(scenario: Scenario, data: Data, runs: list[Run], skipped: list[str]) -> None:
    print(f"\n({scenario.key}) {scenario.title}: {data.files} files, {data.bytes / MB:.1f} MB")
    reference = next((r for r in runs if r.server == "storescp"), None)
    headers = ["server", "wall s", "inst/s", "MB/s", "CPU s", "peak RSS MB", "vs storescp"]
    rows: list[list[str]] = []
    for run in runs:
        if run.status != "ok":
            reason = run.reason if len(run.reason) <= 200 else run.reason[:197] + "..."
            rows.append([run.label, f"FAILED: {reason}"])
            continue
        rows.append(
            [
                run.label,
                f"{run.wall_s:.2f}",
                f"{run.instances_per_s:.1f}",
                f"{run.mb_per_s:.1f}",
                f"{run.cpu_s:.2f}",
                f"{run.peak_rss_mb:.1f}",
                ratio(run, reference),
            ]
        )
    rows += [
        [text.split(":", 1)[0], "skipped: " + text.split(":", 1)[1].strip()] for text in skipped
    ]
    common.print_table(headers, rows)


# The targets of the issue: (server, reference, minimum ratio of instances/s, scenarios).
TARGETS = (
    ("dicomd", "storescp", 1.0, "bd"),
    ("dicomd", "storescp", 0.7, "ac"),
    ("dicomd", "pynetdicom", 4.0, "abcd"),
    ("dicomd", "orthanc", 2.0, "abcd"),
    ("dicomd-relaxed", "storescp", 1.0, "abcd"),
)
RSS_LIMIT_MB = 100.0


def check_targets(results: dict[str, list[Run]], floors: dict[str, Floor]) -> list[dict[str, Any]]:
    """The verdicts; a durable target that the scenario's I/O floor puts out of reach on this
    machine (see floor.py) says so, with the most that the floor allows."""
    checks: list[dict[str, Any]] = []
    for server, reference, minimum, keys in TARGETS:
        for key in keys:
            by_server = {r.server: r for r in results.get(key, [])}
            mine, theirs = by_server.get(server), by_server.get(reference)
            if mine is None or theirs is None:
                continue
            value = None
            if mine.status == "ok" and theirs.status == "ok":
                value = mine.instances_per_s / theirs.instances_per_s
            check: dict[str, Any] = {
                "scenario": key,
                "check": f"{server} >= {minimum}x {reference} instances/s",
                "value": value,
                "passed": None if value is None else value >= minimum,
            }
            allowed = _floor_allows(by_server, floors.get(key), server, theirs)
            if allowed is not None:
                check["floor_allows"] = allowed
                if allowed < minimum:
                    check["note"] = (
                        f"out of reach here: the I/O floor allows at most {allowed:.2f}x"
                    )
            checks.append(check)
    for key, runs in results.items():
        for run in runs:
            if run.server.startswith("dicomd") and run.status == "ok":
                passed = run.peak_rss_mb < RSS_LIMIT_MB
                text = f"{run.server} peak RSS < {RSS_LIMIT_MB:.0f} MB"
                checks.append(
                    {"scenario": key, "check": text, "value": run.peak_rss_mb, "passed": passed}
                )
    return checks


def _floor_allows(
    by_server: dict[str, Run], found: Floor | None, server: str, reference: Run
) -> float | None:
    """The highest ratio to `reference` that the I/O floor leaves a durable server, or None."""
    storescp = by_server.get("storescp")
    if found is None or server != "dicomd" or storescp is None:
        return None
    if storescp.status != "ok" or reference.status != "ok":
        return None
    return found.bound(storescp.instances_per_s) / reference.instances_per_s


def measure_floors(
    scenarios: list[Scenario], data: dict[str, Data], results: dict[str, list[Run]], tmp: Path
) -> dict[str, Floor]:
    """floor.measure() for each one-association scenario that has a storescp result, on the
    filesystem of the runs, with files of the scenario's mean size; printed as a table."""
    floors: dict[str, Floor] = {}
    rows: list[list[str]] = []
    for scenario in scenarios:
        by_server = {r.server: r for r in results.get(scenario.key, [])}
        storescp = by_server.get("storescp")
        if scenario.associations != 1 or storescp is None or storescp.status != "ok":
            continue
        d = data[scenario.data]
        count = min(d.files, FLOOR_FILES)
        directory = tmp / "floor" / scenario.key
        try:
            found = floor.measure(directory, d.bytes // d.files, count)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        floors[scenario.key] = found
        bound = found.bound(storescp.instances_per_s)
        dicomd = by_server.get("dicomd")
        rows.append(
            [
                f"({scenario.key})",
                f"{found.size / 1024:.1f}",
                f"{found.fsync_us:.0f}",
                f"{found.rename_us:.0f}",
                f"{found.dir_fsync_us:.0f}",
                f"{found.commit_us:.0f}",
                f"{found.extra_s * 1000:.2f}",
                f"{bound:.1f}",
                f"{bound / storescp.instances_per_s:.2f}x",
                ratio(dicomd, storescp) if dicomd else "n/a",
            ]
        )
    if rows:
        print(
            "\nI/O floor of the durable steps, one instance at a time (bench/floor.py): the bound"
            "\nfor a server as fast as storescp that also waits for them, in us per instance"
        )
        headers = ["scenario", "file KiB", "fsync", "rename", "dir fsync", "commit"]
        headers += ["added ms", "bound inst/s", "bound vs storescp", "dicomd vs storescp"]
        common.print_table(headers, rows)
    return floors


# -- command ----------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="abcd", help="which of a b c d (default: abcd)")
    parser.add_argument(
        "--servers",
        default="storescp,dicomd,dicomd-relaxed,pynetdicom,orthanc",
        help="comma-separated rows (default: all of "
        "storescp,dicomd,dicomd-relaxed,pynetdicom,orthanc)",
    )
    parser.add_argument("--ct", type=int, default=400, help="CT instances (default 400)")
    parser.add_argument("--small", type=int, default=3000, help="small instances (default 3000)")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per row, in rounds, best kept (default 1)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run (300)")
    parser.add_argument(
        "--scenario-timeout", type=float, default=1200.0, help="seconds per scenario (1200)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    scenarios = [s for s in SCENARIOS if s.key in args.scenarios]
    with common.scratch("store", keep=args.keep) as tmp:
        return _bench(args, scenarios, tmp)


def _bench(args: argparse.Namespace, scenarios: list[Scenario], tmp: Path) -> int:
    tools, servers, skipped = check_peers(tmp, args.servers.split(","))
    if tools is None:
        print("cannot run: DCMTK's storescu and echoscu are needed (apt-get install dcmtk)")
        return 2
    data = generate(tmp / "data", args.ct, args.small)
    need = sum(data[s.data].bytes for s in scenarios) * len(servers) * args.repeat
    keep_runs = common.keeps_runs(tmp, need)
    results: dict[str, list[Run]] = {}
    for scenario in scenarios:
        deadline = time.monotonic() + args.scenario_timeout
        runs = run_rounds(
            servers, scenario, data[scenario.data], tools, tmp, args, deadline, keep_runs
        )
        results[scenario.key] = runs
        print_scenario(scenario, data[scenario.data], runs, skipped)
    floors = measure_floors(scenarios, data, results, tmp)
    checks = check_targets(results, floors)
    common.print_checks(checks, "scenario")
    if not args.no_json:
        path = common.write_results(
            "store",
            _payload(args, tools, scenarios, data, results, skipped, checks, keep_runs, floors),
        )
        print(f"\nresults: {path.relative_to(common.ROOT)}")
    failed = [r for runs in results.values() for r in runs if r.status != "ok"]
    return 1 if failed else 0


def _payload(
    args: argparse.Namespace,
    tools: Tools,
    scenarios: list[Scenario],
    data: dict[str, Data],
    results: dict[str, list[Run]],
    skipped: list[str],
    checks: list[dict[str, Any]],
    keep_runs: bool,
    floors: dict[str, Floor],
) -> dict[str, Any]:
    return {
        "benchmark": "store",
        "machine": common.machine(),
        "peers": {
            "dcmtk": common.dcmtk_version(tools.storescu),
            "pynetdicom": common.version_of("pynetdicom"),
            "orthanc": orthanc_version(orthanc) if (orthanc := find_orthanc()) else None,
            "pydicom": common.version_of("pydicom"),
        },
        "options": {k: v for k, v in vars(args).items() if k != "no_json"},
        "runs_kept_until_the_end": keep_runs,
        "skipped": skipped,
        "scenarios": [
            {
                **asdict(s),
                "files": data[s.data].files,
                "bytes": data[s.data].bytes,
                "runs": [asdict(r) for r in results[s.key]],
            }
            for s in scenarios
        ],
        "io_floor": {key: {**asdict(f), "added_s": f.extra_s} for key, f in floors.items()},
        "targets": checks,
    }
