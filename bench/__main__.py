"""`bench/run [NAME [OPTIONS]]`: one benchmark with its options, or with no arguments all of them."""

from __future__ import annotations

import sys
from collections.abc import Callable

from bench import crash, find, retrieve, soak, store

# name -> (entry point taking its own argv, one-line description).
BENCHMARKS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "store": (store.main, "C-STORE throughput vs DCMTK storescp and pynetdicom storescp"),
    "retrieve": (retrieve.main, "C-GET/C-MOVE of a CT study vs Orthanc and DCMTK dcmqrscp"),
    "find": (find.main, "C-FIND latency on a 1M-instance index; vs Orthanc and dcmqrscp"),
    "crash": (crash.main, "SIGKILL dicomd under C-STORE load, restart: count lost instances"),
    "soak": (soak.main, "100k association cycles: RSS, fds, threads flat; echo latency under load"),
}


def usage() -> str:
    lines = ["usage: bench/run [NAME [OPTIONS]]   (no NAME: run all; NAME --help: its options)", ""]
    lines += [f"  {name:10s} {text}" for name, (_, text) in BENCHMARKS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        codes = []
        for name, (entry, _) in BENCHMARKS.items():
            print(f"=== bench {name}")
            codes.append(entry([]))
        return max(codes, default=0)
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help", "help", "list"):
        print(usage())
        return 0
    if name not in BENCHMARKS:
        print(f"bench/run: unknown benchmark {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return BENCHMARKS[name][0](rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
