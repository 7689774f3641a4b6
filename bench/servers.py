"""The storage servers under test: how to start each on a port in a fresh directory, and what it stored.

- dicomd: `python -m dicomd.cli serve --config dicomd.toml`, store and index in the run's directory;
  a second row with `[storage] durability = "relaxed"` when this dicomd's configuration has the key.
- DCMTK storescp: single process (its default; `--fork` would hand each association to a child
  process, which is not the one-process comparison we want), its default transfer syntaxes
  (uncompressed), writing to `-od out/`. It has no bind-address option: it listens on all
  interfaces, and only loopback clients talk to it.
- pynetdicom's storescp app: `python -m pynetdicom storescp PORT -ba 127.0.0.1 -od out/`.
- Orthanc: `Orthanc orthanc.json`, the configuration of the Q/R benchmarks (qrservers.py): DICOM
  and HTTP on loopback, storage and index in the run's directory, no plugins, its defaults
  otherwise (4 DICOM threads; each file fsynced, SQLite WAL with synchronous=NORMAL). What it
  stored is counted through its REST API.

Each keeps its own default maximum PDU length (dicomd 256 KiB, the others 16 KiB).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.common import HOST, count_files, free_port
from bench.qrservers import orthanc_config, orthanc_instances

DICOMD_AET = "DICOMD"
STORESCP_AET = "STORESCP"


@dataclass(frozen=True, slots=True)
class Server:
    """One row of a table: a way to start a storage SCP and to count what it stored."""

    key: str
    label: str
    ae_title: str
    binary: str | None = None  # DCMTK storescp's or Orthanc's executable
    durability: str | None = None  # dicomd's [storage] durability, None: the default

    def argv(self, workdir: Path, port: int) -> list[str]:
        """Prepare `workdir` and return the command line that serves from it on `port`."""
        if self.key.startswith("dicomd"):
            config = workdir / "dicomd.toml"
            config.write_text(dicomd_config(workdir, port, self.durability))
            return [sys.executable, "-m", "dicomd.cli", "serve", "--config", str(config)]
        if self.key == "orthanc":
            assert self.binary is not None
            config = workdir / "orthanc.json"
            config.write_text(orthanc_config(workdir, port, free_port(), ()))
            return [self.binary, str(config)]
        out = workdir / "out"
        out.mkdir(parents=True, exist_ok=True)
        if self.key == "storescp":
            assert self.binary is not None
            return [self.binary, "-aet", self.ae_title, "-od", str(out), str(port)]
        return [
            *(sys.executable, "-m", "pynetdicom", "storescp", str(port)),
            *("-aet", self.ae_title, "-ba", HOST, "-od", str(out)),
        ]

    def stored(self, workdir: Path) -> int:
        """How many instances the server holds after a run."""
        if self.key.startswith("dicomd"):
            objects = workdir / "store" / "objects"
            if objects.exists():
                return count_files(objects)
            return count_files(workdir / "store", "*.dcm")
        if self.key == "orthanc":  # asked while it runs, on the HTTP port its configuration names
            config = json.loads((workdir / "orthanc.json").read_text())
            return orthanc_instances(int(config["HttpPort"]))
        return count_files(workdir / "out")


def dicomd_config(workdir: Path, port: int, durability: str | None) -> str:
    lines = [
        "[server]",
        f'ae_title = "{DICOMD_AET}"',
        f'host = "{HOST}"',
        f"port = {port}",
        "max_associations = 64",
        "",
        "[storage]",
        f'root = "{workdir / "store"}"',
    ]
    if durability is not None:
        lines.append(f'durability = "{durability}"')
    lines += ["", "[index]", f'path = "{workdir / "index.sqlite"}"', ""]
    lines += ["[log]", 'format = "json"', ""]
    return "\n".join(lines)


def dicomd_accepts(workdir: Path, durability: str) -> tuple[bool, str]:
    """Whether this dicomd's `check-config` accepts [storage] durability = `durability`."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "probe.toml"
    config.write_text(dicomd_config(workdir, 11112, durability))
    result = subprocess.run(
        [sys.executable, "-m", "dicomd.cli", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    message = (result.stderr or result.stdout).strip().splitlines()
    return result.returncode == 0, message[-1] if message else f"exit {result.returncode}"
