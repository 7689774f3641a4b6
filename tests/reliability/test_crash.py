"""SIGKILL `dicomd serve` while several SCUs push, restart, and count: nothing acknowledged is lost.

Three kill cycles of 60 fresh instances each (CT slices of 128 KiB and small SR/KOS/GSPS/SC objects)
from three concurrent DCMTK storescu processes; the server (a real `python -m dicomd.cli serve`
subprocess with its durable defaults) is killed once a random share of the files has been started,
restarted (start-up reconcile runs: no clean-shutdown marker), and everything acknowledged in any
cycle so far is checked (tests/reliability/crashkit.py): no acknowledged instance missing from the
index, none whose file or data set differs from what was sent, no index row without its file, and
PRAGMA integrity_check ok. `bench/run crash` runs the same with many more cycles and prints a table.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.reliability.crashkit import CrashRun, generate

CYCLES = 3
PER_CYCLE = 60


@pytest.mark.timeout(180)
def test_sigkill_under_load_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    files = generate(tmp_path / "data", CYCLES * PER_CYCLE, seed=61)
    rng = random.Random(6)
    run = CrashRun(tmp_path / "server", storescu, scus=3)
    try:
        for n in range(CYCLES):
            cycle = run.cycle(files[n * PER_CYCLE : (n + 1) * PER_CYCLE], rng)
            c = cycle.check
            assert (c.missing, c.corrupt, c.dangling) == (0, 0, 0), c.problems[:10]
            assert c.integrity == "ok"
            assert "adopted" in cycle.reconciled, "start-up reconcile did not run after SIGKILL"
        final = run.finish()
    finally:
        run.close()
    assert (final.missing, final.corrupt, final.dangling) == (0, 0, 0), final.problems[:10]
    assert final.integrity == "ok"
    # The kills landed while instances were being acknowledged, not before or after the pushes.
    assert final.acknowledged > 0
    assert sum(c.acknowledged for c in run.cycles) < CYCLES * PER_CYCLE
