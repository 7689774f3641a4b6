"""C-FIND latency: study-level queries on a million-instance dicomd index, and dicomd vs Orthanc vs
DCMTK dcmqrscp on the same small archive.

(a) An index of 1,000,000 instances (10,000 patients) is generated straight into dicomd's SQLite
schema (bench/findgen.py; cached under bench/results/), dicomd is started on it, and Study Root
queries are timed one after another on one association: by PatientID, by a PatientName prefix
("WANG*"), by a one-month StudyDate range, and the universal query (time to the first and to the
last response), with dicomd's resident memory sampled while the universal query streams.
(b) The same kind of archive, 2,000 small instances, is stored with storescu into each server
(started fresh) and the same query shapes are timed against each with the same client, the
servers taking turns query by query.
The client runs in this process: raw PDUs on one association, negotiated with dicomd's pure
Upper Layer codec (bench/findclient.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import shutil
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset

from bench import common, findgen
from bench.common import HOST, MB, BenchError
from bench.findclient import FindClient, FindFailed, FindResult
from bench.qrservers import (
    DICOMD_AET,
    Launch,
    Peers,
    QRServer,
    find_peers,
    orthanc_version,
    servers_for,
    storescu_load,
)
from dicomd.app import CLEAN_SHUTDOWN_MARKER

READY_TIMEOUT = 120.0
WARMUP = 3  # queries of each shape before the timed ones (universal: 1)
TOOLS = ("storescu", "echoscu")
_T = TypeVar("_T")

# -- query shapes -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shape:
    key: str
    title: str


SHAPES = (
    Shape("patient_id", "PatientID = <one patient>"),
    Shape("name_prefix", 'PatientName = "WANG*"'),
    Shape("month", "StudyDate = <one month>"),
    Shape("universal", "universal (every study)"),
)
NAME_PREFIX = "WANG*"


def identifier(**match: str) -> Dataset:
    """A study-level Study Root identifier with a viewer's usual return keys."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "StudyDescription",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ):
        setattr(ds, keyword, match.get(keyword, ""))
    return ds


@dataclass(frozen=True, slots=True)
class Query:
    identifier: Dataset
    expected: int  # matching studies, counted in the archive


def queries(archive: findgen.Archive, n: int, seed: int) -> dict[str, list[Query]]:
    """The identifiers of each shape, drawn deterministically from the archive."""
    rng = random.Random(f"find-queries {seed}")
    patients = [rng.choice(archive.patients) for _ in range(n)]
    months = [rng.choice(findgen.months()) for _ in range(n)]
    prefix = NAME_PREFIX.rstrip("*")
    named = sum(len(p.studies) for p in archive.patients if p.name.upper().startswith(prefix))
    return {
        "patient_id": [Query(identifier(PatientID=p.patient_id), len(p.studies)) for p in patients],
        "name_prefix": [Query(identifier(PatientName=NAME_PREFIX), named)],
        "month": [
            Query(
                identifier(StudyDate=f"{first}-{last}"),
                findgen.study_date_range_count(archive, first, last),
            )
            for first, last in months
        ],
        "universal": [Query(identifier(), archive.studies)],
    }


# -- measuring ----------------------------------------------------------------------------------


@dataclass
class ShapeResult:
    shape: str
    queries: int = 0
    matches_median: float = 0.0
    matches_total: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    first_p50_ms: float = 0.0
    first_p99_ms: float = 0.0
    max_ms: float = 0.0
    wrong: int = 0  # queries whose number of matches differs from the archive's count


@dataclass
class Memory:
    """dicomd's resident memory around the universal queries."""

    before_mb: float = 0.0
    peak_mb: float = 0.0
    after_mb: float = 0.0
    samples: int = 0

    @property
    def growth_mb(self) -> float:
        return self.peak_mb - self.before_mb


@dataclass
class ServerRun:
    server: str
    label: str
    status: str = "ok"
    reason: str = ""
    load_s: float = 0.0
    instances: int = 0
    shapes: dict[str, ShapeResult] = field(default_factory=dict)
    memory: Memory | None = None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(common.status_kib(self.pid, "VmRSS") * 1024)
            self._stop.wait(self.interval)


def summarize(shape: str, results: list[FindResult], expected: list[int]) -> ShapeResult:
    last = [r.last_s * 1000 for r in results]
    first = [r.first_s * 1000 for r in results]
    matches = [r.matches for r in results]
    return ShapeResult(
        shape=shape,
        queries=len(results),
        matches_median=statistics.median(matches),
        matches_total=sum(matches),
        p50_ms=statistics.median(last),
        p99_ms=percentile(last, 0.99),
        first_p50_ms=statistics.median(first),
        first_p99_ms=percentile(first, 0.99),
        max_ms=max(last),
        wrong=sum(1 for i, r in enumerate(results) if r.matches != expected[i % len(expected)]),
    )


def run_async(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run on uvloop when it is installed (dicomd's own default), else asyncio's loop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


@dataclass(eq=False)
class _Live:
    """A server of part (b), loaded and answering."""

    server: QRServer
    run: ServerRun
    port: int
    proc: subprocess.Popen[bytes]
    client: FindClient | None = None


def time_queries(
    live: list[_Live], shapes: dict[str, list[Query]], args: argparse.Namespace
) -> None:
    """measure() with the run's query counts, bounded by its timeout."""
    counts = {key: args.queries for key in shapes}
    counts["universal"] = args.universal
    try:
        run_async(asyncio.wait_for(measure(live, shapes, counts), args.timeout))
    except TimeoutError:
        for one in live:
            if one.run.status == "ok":
                one.run.status, one.run.reason = "FAILED", "timed out"


def _client(one: _Live) -> FindClient:
    assert one.client is not None
    return one.client


async def measure(
    live: list[_Live], shapes: dict[str, list[Query]], counts: dict[str, int]
) -> None:
    """Time every shape's queries, universal last, on one association per server: the servers
    take turns query by query (the one that goes first rotates), and each one's resident memory
    is sampled around the universal queries. A server that fails is marked so and left out."""

    def fail(one: _Live, e: BaseException) -> None:
        exited = one.proc.poll()
        reason = str(e) or type(e).__name__
        if exited is not None:
            reason = f"server exited with {exited}: {reason}"
        one.run.status, one.run.reason = "FAILED", reason

    for one in live:
        try:
            one.client = await FindClient.open(HOST, one.port, one.server.ae_title)
        except (FindFailed, TimeoutError, OSError) as e:
            fail(one, e)
    try:
        for shape, shape_queries in shapes.items():
            active = [one for one in live if one.run.status == "ok" and one.client is not None]
            encoded = {
                id(one): [_client(one).encode(q.identifier) for q in shape_queries]
                for one in active
            }
            results: dict[int, list[FindResult]] = {id(one): [] for one in active}
            samplers: dict[int, tuple[Memory, RssSampler]] = {}
            n = counts[shape]
            warmup = 1 if shape == "universal" else WARMUP
            for i in range(-warmup, n):
                for k in range(len(active)):
                    one = active[(i + k) % len(active)]
                    if one.run.status != "ok":
                        continue
                    if i == 0 and shape == "universal" and id(one) not in samplers:
                        memory = Memory(before_mb=_rss_mb(one.proc.pid))
                        sampler = RssSampler(one.proc.pid).__enter__()
                        samplers[id(one)] = (memory, sampler)
                    query = encoded[id(one)][i % len(shape_queries)]
                    try:
                        result = await _client(one).find(query)
                    except (FindFailed, TimeoutError, OSError) as e:
                        fail(one, e)
                        continue
                    if i >= 0:
                        results[id(one)].append(result)
            for one in active:
                if id(one) in samplers:
                    memory, sampler = samplers[id(one)]
                    sampler.__exit__(None, None, None)
                    memory.peak_mb = max(sampler.samples, default=0) / MB
                    memory.samples = len(sampler.samples)
                    memory.after_mb = _rss_mb(one.proc.pid)
                    one.run.memory = memory
                if one.run.status == "ok":
                    expected = [q.expected for q in shape_queries]
                    one.run.shapes[shape] = summarize(shape, results[id(one)], expected)
    finally:
        for one in live:
            if one.client is not None:
                await one.client.close()


# -- (a) a million instances ----------------------------------------------------------------------


def cached_index(args: argparse.Namespace, archive: findgen.Archive) -> Path:
    name = (
        f"find-index-v{findgen.GENERATOR_VERSION}-{findgen.schema_key()}"
        f"-{args.instances}i-{args.patients}p-s{args.seed}.sqlite"
    )
    path = common.RESULTS / name
    if path.exists() and not args.rebuild:
        print(f"index: cached {path.relative_to(common.ROOT)} ({path.stat().st_size / MB:.0f} MB)")
        return path
    common.RESULTS.mkdir(parents=True, exist_ok=True)
    for old in common.RESULTS.glob("find-index-*.sqlite*"):
        old.unlink()  # an index of another version or size: one cached index at a time
    print(f"index: generating {args.instances} instances into {path.relative_to(common.ROOT)} ...")
    started = time.monotonic()
    findgen.build_index(path, archive)
    print(
        f"index: generated in {time.monotonic() - started:.1f} s ({path.stat().st_size / MB:.0f} MB)"
    )
    return path


def index_counts(path: Path) -> tuple[int, int]:
    """(studies, instances) in the index, read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        studies = int(conn.execute("SELECT count(*) FROM study").fetchone()[0])
        instances = int(conn.execute("SELECT count(*) FROM instance").fetchone()[0])
        return studies, instances
    finally:
        conn.close()


def part_a(args: argparse.Namespace, peers: Peers, tmp: Path) -> ServerRun:
    run = ServerRun("dicomd", "dicomd")
    started = time.monotonic()
    archive = findgen.plan_archive(args.patients, args.instances, args.seed)
    print(
        f"archive: {len(archive.patients)} patients, {archive.studies} studies, "
        f"{archive.series} series, {archive.instances} instances (planned in "
        f"{time.monotonic() - started:.1f} s)"
    )
    index = cached_index(args, archive)
    studies, instances = index_counts(index)
    if (studies, instances) != (archive.studies, archive.instances):
        index.unlink()
        run.status, run.reason = "FAILED", f"cached index holds {instances} instances; removed"
        return run
    run.instances = instances
    workdir = tmp / "a"
    store = workdir / "store"
    store.mkdir(parents=True)
    # The rows name files that do not exist: without the clean-shutdown marker dicomd would
    # reconcile the index with the (empty) store at start-up and delete every row.
    (store / CLEAN_SHUTDOWN_MARKER).touch()
    server = QRServer("dicomd", "dicomd", DICOMD_AET)
    port = common.free_port()
    # No match limit: the universal query streams every study (the default stops at 10000, A700).
    launch = server.prepare(workdir, port, index=index, dicomd_extra="[query]\nmax_matches = 0\n")
    log = workdir / "server.log"
    try:
        with common.spawned(launch.argv, log=log, env=common.dcmtk_env(), cwd=workdir) as proc:
            common.wait_ready(proc, peers.tool("echoscu"), port, DICOMD_AET, log, READY_TIMEOUT)
            print(f"dicomd: serving the index, RSS {_rss_mb(proc.pid):.1f} MB; querying ...")
            shapes = queries(archive, args.queries, args.seed)
            time_queries([_Live(server, run, port, proc)], shapes, args)
    except (BenchError, FindFailed, TimeoutError, OSError, subprocess.SubprocessError) as e:
        run.status, run.reason = "FAILED", str(e) or type(e).__name__
    after = index_counts(index)
    if after != (studies, instances):
        index.unlink()
        run.status = "FAILED"
        run.reason = (run.reason + "; " if run.reason else "") + "the run changed the index"
    return run


def _rss_mb(pid: int) -> float:
    return common.status_kib(pid, "VmRSS") * 1024 / MB


# (shape, statistic, limit in ms) from the issue.
TARGETS_A = (
    ("patient_id", "p50_ms", 5.0),
    ("patient_id", "p99_ms", 20.0),
    ("name_prefix", "p50_ms", 20.0),
    ("month", "p50_ms", 50.0),
    ("universal", "first_p50_ms", 50.0),
)
RSS_GROWTH_LIMIT_MB = 20.0


def print_a(run: ServerRun) -> list[dict[str, Any]]:
    print(f"\n(a) dicomd, Study Root C-FIND, STUDY level, {run.instances} instances in the index")
    if run.status != "ok" and not run.shapes:
        print(f"  FAILED: {run.reason}")
        return [{"part": "a", "check": "ran", "value": None, "passed": False}]
    headers = ["query", "n", "matches", "wrong", "p50 ms", "p99 ms", "first p50 ms", "max ms"]
    rows: list[list[str]] = []
    for shape in SHAPES:
        r = run.shapes.get(shape.key)
        if r is None:
            rows.append([shape.title, "FAILED: " + (run.reason or "not run")])
            continue
        rows.append(
            [
                shape.title,
                str(r.queries),
                f"{r.matches_median:g}",
                str(r.wrong),
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                f"{r.first_p50_ms:.2f}",
                f"{r.max_ms:.2f}",
            ]
        )
    common.print_table(headers, rows)
    if run.memory is not None:
        m = run.memory
        print(
            f"dicomd RSS during the universal queries: {m.before_mb:.1f} MB before, "
            f"peak {m.peak_mb:.1f} MB ({m.samples} samples every 20 ms), {m.after_mb:.1f} MB after"
        )
    checks: list[dict[str, Any]] = []
    for key, stat, limit in TARGETS_A:
        result = run.shapes.get(key)
        value = getattr(result, stat) if result is not None else None
        label = {"p50_ms": "p50", "p99_ms": "p99", "first_p50_ms": "first response p50"}[stat]
        checks.append(
            {
                "part": "a",
                "check": f"{key} {label} < {limit:g} ms",
                "value": value,
                "passed": None if value is None else value < limit,
            }
        )
    wrong = sum(r.wrong for r in run.shapes.values()) if run.shapes else None
    checks.append(
        {
            "part": "a",
            "check": "queries whose number of matches differs from the archive's (must be 0)",
            "value": wrong,
            "passed": None if wrong is None else wrong == 0,
        }
    )
    growth = run.memory.growth_mb if run.memory is not None else None
    checks.append(
        {
            "part": "a",
            "check": f"RSS growth while the universal query streams < {RSS_GROWTH_LIMIT_MB:g} MB",
            "value": growth,
            "passed": None if growth is None else growth < RSS_GROWTH_LIMIT_MB,
        }
    )
    return checks


# -- (b) the same small archive in every server ---------------------------------------------------


def part_b(
    args: argparse.Namespace, peers: Peers, servers: list[QRServer], tmp: Path
) -> tuple[findgen.Archive, list[ServerRun]]:
    """Every server started and loaded, then the same queries timed against them in turns: query i
    of a shape goes to each server before query i + 1 goes to any, so that a slow spell of the
    machine (its speed drifts by a third and more within minutes) falls on all of them alike
    rather than on whichever server's block it happened to hit."""
    archive = findgen.plan_archive(args.small_patients, args.small, args.seed + 1)
    started = time.monotonic()
    data = tmp / "b" / "data"
    findgen.write_files(data, archive)
    print(
        f"\nsmall archive: {len(archive.patients)} patients, {archive.studies} studies, "
        f"{archive.instances} files written in {time.monotonic() - started:.1f} s"
    )
    shapes = queries(archive, args.queries, args.seed + 1)
    runs = [ServerRun(server.key, server.label) for server in servers]
    with contextlib.ExitStack() as stack:
        live: list[_Live] = []
        for server, run in zip(servers, runs, strict=True):
            try:
                live.append(_start_small(server, peers, archive, data, tmp / "b", args, run, stack))
            except (BenchError, TimeoutError, OSError, subprocess.SubprocessError) as e:
                run.status, run.reason = "FAILED", str(e) or type(e).__name__
        if live:
            time_queries(live, shapes, args)
    for server, run in zip(servers, runs, strict=True):
        print(f"  {server.label}: {run.status} {run.reason}".rstrip())
        if not args.keep:
            shutil.rmtree(tmp / "b" / server.key, ignore_errors=True)
    return archive, runs


def _start_small(
    server: QRServer,
    peers: Peers,
    archive: findgen.Archive,
    data: Path,
    base: Path,
    args: argparse.Namespace,
    run: ServerRun,
    stack: contextlib.ExitStack,
) -> _Live:
    workdir = base / server.key
    port = common.free_port()
    extra = "[query]\nmax_matches = 0\n" if server.key == "dicomd" else ""
    launch: Launch = server.prepare(workdir, port, dicomd_extra=extra)
    log = workdir / "server.log"
    proc = stack.enter_context(
        common.spawned(launch.argv, log=log, env=common.dcmtk_env(), cwd=workdir)
    )
    common.wait_ready(proc, peers.tool("echoscu"), port, server.ae_title, log, READY_TIMEOUT)
    started = time.monotonic()
    storescu_load(peers.tool("storescu"), server, port, [data], workdir / "load.log", args.timeout)
    run.load_s = time.monotonic() - started
    run.instances = server.stored(workdir, launch)
    if run.instances != archive.instances:
        raise BenchError(f"loaded {run.instances} of {archive.instances} instances")
    return _Live(server, run, port, proc)


def print_b(
    archive: findgen.Archive, runs: list[ServerRun], skipped: list[str]
) -> list[dict[str, Any]]:
    print(
        f"\n(b) the same {archive.instances} instances ({archive.studies} studies) in every "
        "server, Study Root C-FIND, STUDY level"
    )
    dicomd = next((r for r in runs if r.server == "dicomd"), None)
    checks: list[dict[str, Any]] = []
    for shape in SHAPES:
        print(f"\n{shape.title}")
        headers = ["server", "n", "matches", "wrong", "p50 ms", "p99 ms", "first p50 ms"]
        headers.append("p50 vs dicomd")
        rows: list[list[str]] = []
        mine = dicomd.shapes.get(shape.key) if dicomd is not None else None
        for run in runs:
            r = run.shapes.get(shape.key)
            if r is None:
                rows.append([run.label, "FAILED: " + (run.reason[:200] or "not run")])
                continue
            ratio = f"{r.p50_ms / mine.p50_ms:.2f}x" if mine is not None else "n/a"
            rows.append(
                [
                    run.label,
                    str(r.queries),
                    f"{r.matches_median:g}",
                    str(r.wrong),
                    f"{r.p50_ms:.2f}",
                    f"{r.p99_ms:.2f}",
                    f"{r.first_p50_ms:.2f}",
                    ratio,
                ]
            )
        rows += [[t.split(":", 1)[0], "skipped: " + t.split(":", 1)[1].strip()] for t in skipped]
        common.print_table(headers, rows)
        for run in runs:
            if run.server == "dicomd":
                continue
            theirs = run.shapes.get(shape.key)
            value = theirs.p50_ms / mine.p50_ms if mine is not None and theirs else None
            checks.append(
                {
                    "part": "b",
                    "check": f"{shape.key}: dicomd p50 <= {run.label} p50 (their p50 / ours)",
                    "value": value,
                    "passed": None if value is None else value >= 1.0,
                }
            )
    return checks


# -- command ------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run find", description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="a,b", help="a (1M index), b (3 servers); default a,b")
    parser.add_argument(
        "--servers",
        default="dicomd,orthanc,dcmqrscp",
        help="rows of part b (default: dicomd,orthanc,dcmqrscp)",
    )
    parser.add_argument("--instances", type=int, default=1_000_000, help="(a) 1000000")
    parser.add_argument("--patients", type=int, default=10_000, help="(a) 10000")
    parser.add_argument("--small", type=int, default=2000, help="(b) instances, 2000")
    parser.add_argument("--small-patients", type=int, default=100, help="(b) patients, 100")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per shape (200)")
    parser.add_argument("--universal", type=int, default=5, help="timed universal queries (5)")
    parser.add_argument("--seed", type=int, default=0, help="of the archives and queries (0)")
    parser.add_argument("--rebuild", action="store_true", help="(a) regenerate the cached index")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per step (600)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= {"a", "b"}:
        raise SystemExit(f"unknown part in {args.parts!r} (a, b)")
    with common.scratch("find", keep=args.keep) as tmp:
        return _bench(args, parts, tmp)


def _bench(args: argparse.Namespace, parts: set[str], tmp: Path) -> int:
    peers = find_peers(TOOLS)
    missing = [name for name, path in peers.tools.items() if path is None]
    if missing:
        print(f"cannot run: DCMTK's {', '.join(missing)} are needed (apt-get install dcmtk)")
        return 2
    checks: list[dict[str, Any]] = []
    payload: dict[str, Any] = {
        "benchmark": "find",
        "machine": common.machine(),
        "peers": {
            "dcmtk": common.dcmtk_version(peers.tool("storescu")),
            "orthanc": orthanc_version(peers.orthanc) if peers.orthanc else "not installed",
        },
        "options": {k: v for k, v in vars(args).items() if k != "no_json"},
        "client": "dicomd.net.requestor in-process, one association, sequential queries",
    }
    failed = False
    if "a" in parts:
        run_a = part_a(args, peers, tmp)
        checks += print_a(run_a)
        payload["a"] = asdict(run_a)
        failed = failed or run_a.status != "ok"
    if "b" in parts:
        servers, skipped = servers_for(peers, args.servers.split(","))
        archive, runs = part_b(args, peers, servers, tmp)
        checks += print_b(archive, runs, skipped)
        payload["b"] = {
            "archive": {"instances": archive.instances, "studies": archive.studies},
            "skipped": skipped,
            "runs": [asdict(r) for r in runs],
        }
        failed = failed or any(r.status != "ok" for r in runs)
    common.print_checks(checks, "part")
    payload["targets"] = checks
    if not args.no_json:
        path = common.write_results("find", payload)
        print(f"\nresults: {path.relative_to(common.ROOT)}")
    return 1 if failed else 0
