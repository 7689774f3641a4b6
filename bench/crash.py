"""Crash consistency: SIGKILL `dicomd serve` again and again under load; count what was lost.

Each cycle pushes fresh instances from several concurrent DCMTK `storescu -v` processes to a real
`python -m dicomd.cli serve` (durable defaults, JSON logs), kills the server with SIGKILL once a random
share of the files has been started, restarts it (start-up reconcile runs, as the clean-shutdown
marker is missing), and checks everything acknowledged in any cycle so far against the index and
the files. The machinery is tests/reliability/crashkit.py (also behind tests/reliability/test_crash.py).

Printed per cycle: files sent, files started when the kill came, acknowledged (storescu printed
"Received Store Response (Success)"), what start-up reconcile did (orphan files adopted, spool files
removed), restart time to `dicomd_ready`, and the three counts that must stay 0:
acknowledged-but-missing, acknowledged-but-corrupt (file sha256 vs the row, stored data set vs the
sent file's), indexed-but-file-missing.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import common
from tests.reliability.crashkit import CrashRun, find_storescu, generate


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run crash", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=30, help="kill cycles (default 30)")
    parser.add_argument("--per-cycle", type=int, default=90, help="instances per cycle (90)")
    parser.add_argument("--scus", type=int, default=3, help="concurrent storescu (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the kill points")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    storescu = find_storescu()
    if storescu is None:
        print("cannot run: DCMTK's storescu is needed (apt-get install dcmtk)")
        return 2
    print(f"peers: DCMTK storescu {storescu} ({common.dcmtk_version(storescu)})")
    with common.scratch("crash", keep=args.keep) as tmp:
        return _bench(args, storescu, tmp)


def _bench(args: argparse.Namespace, storescu: str, tmp: Path) -> int:
    started = time.monotonic()
    files = generate(tmp / "data", args.cycles * args.per_cycle, seed=args.seed)
    size = sum(f.path.stat().st_size for f in files)
    print(
        f"data: {len(files)} files, {size / common.MB:.1f} MB in {time.monotonic() - started:.1f} s"
    )
    rng = random.Random(args.seed)
    run = CrashRun(tmp / "server", storescu, scus=args.scus)
    headers = ["cycle", "sent", "started", "acked", "adopted", "spools", "restart s"]
    headers += ["acked total", "indexed", "missing", "corrupt", "dangling"]
    rows: list[list[str]] = []
    try:
        for n in range(args.cycles):
            batch = files[n * args.per_cycle : (n + 1) * args.per_cycle]
            cycle = run.cycle(batch, rng)
            c = cycle.check
            rows.append(
                [
                    str(cycle.number),
                    str(cycle.sent),
                    str(cycle.started_at_kill),
                    str(cycle.acknowledged),
                    str(cycle.reconciled.get("adopted", "?")),
                    str(cycle.reconciled.get("removed_spools", "?")),
                    f"{cycle.restart_s:.2f}",
                    str(c.acknowledged),
                    str(c.indexed),
                    str(c.missing),
                    str(c.corrupt),
                    str(c.dangling),
                ]
            )
            print(
                f"cycle {cycle.number}: "
                + ", ".join(f"{h}={v}" for h, v in zip(headers[1:], rows[-1][1:], strict=True)),
                flush=True,
            )
            for problem in c.problems[:5]:
                print(f"  !! {problem}")
        final = run.finish()
    finally:
        run.close()
    print()
    common.print_table(headers, rows)
    cycles = run.cycles
    totals = {
        "cycles": len(cycles),
        "sent": sum(c.sent for c in cycles),
        "acknowledged": final.acknowledged,
        "indexed": final.indexed,
        "orphans_adopted": sum(int(c.reconciled.get("adopted", 0)) for c in cycles),
        "spools_removed": sum(int(c.reconciled.get("removed_spools", 0)) for c in cycles),
        "max_missing": max((c.check.missing for c in cycles), default=0),
        "max_corrupt": max((c.check.corrupt for c in cycles), default=0),
        "max_dangling": max((c.check.dangling for c in cycles), default=0),
        "final_missing": final.missing,
        "final_corrupt": final.corrupt,
        "final_dangling": final.dangling,
        "integrity": final.integrity,
        "restart_s_max": max((c.restart_s for c in cycles), default=0.0),
    }
    passed = (
        totals["max_missing"] == totals["max_corrupt"] == totals["max_dangling"] == 0
        and final.missing == final.corrupt == final.dangling == 0
        and final.integrity == "ok"
        and all(c.check.integrity == "ok" for c in cycles)
    )
    print(
        f"\n{totals['cycles']} SIGKILLs, {totals['sent']} instances sent, "
        f"{totals['acknowledged']} acknowledged, {totals['indexed']} indexed "
        f"({totals['orphans_adopted']} orphan files adopted at start-up, "
        f"{totals['spools_removed']} spool files removed); restart to ready <= "
        f"{totals['restart_s_max']:.2f} s"
    )
    print(
        f"[{'PASS' if passed else 'FAIL'}] acknowledged-but-missing, acknowledged-but-corrupt, "
        f"indexed-but-file-missing all 0 after every restart; integrity_check {final.integrity}"
    )
    if not args.no_json:
        payload: dict[str, Any] = {
            "benchmark": "crash",
            "machine": common.machine(),
            "options": {k: v for k, v in vars(args).items() if k != "no_json"},
            "totals": totals,
            "passed": passed,
            "cycles": [
                {**asdict(c), "check": {**asdict(c.check), "problems": c.check.problems[:20]}}
                for c in cycles
            ],
        }
        path = common.write_results("crash", payload)
        print(f"results: {path.relative_to(common.ROOT)}")
    return 0 if passed else 1
