"""The query/retrieve servers under test (dicomd, Orthanc, DCMTK dcmqrscp) and the DCMTK tools.

Each server is started fresh in a run's directory on a free 127.0.0.1 port with its own store,
knows the C-MOVE destinations it is given (AE title -> 127.0.0.1:port), and says how many
instances it holds. Used by `bench/run retrieve` and `bench/run find`.

- dicomd: `python -m dicomd.cli serve --config dicomd.toml`, durable defaults, [[remote]] per
  destination; `index` may point at a prepared index (the find benchmark's million instances).
- Orthanc: `Orthanc config.json` with a generated configuration (DICOM and HTTP on loopback only,
  storage and index in the run's directory, every DICOM service allowed without registration, the
  destinations as DicomModalities, no plugins); its other settings are its defaults.
- DCMTK dcmqrscp: `dcmqrscp -c dcmqrscp.cfg PORT` with one AE (RW storage area in the run's
  directory, any peer), the destinations in its HostTable; its default --fork (one child process
  per association). Its data are loaded with storescu into that storage area.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import common
from bench.common import HOST, BenchError

DICOMD_AET = "DICOMD"
ORTHANC_AET = "ORTHANC"
DCMQRSCP_AET = "DCMQRSCP"
CLIENT_AET = "BENCH"

INSTALL = {
    "dcmtk": "apt-get install dcmtk",
    "orthanc": "apt-get install orthanc (Debian; the package's service is not used)",
}


@dataclass(frozen=True, slots=True)
class Destination:
    """A C-MOVE destination: an AE title the server must resolve to 127.0.0.1:port."""

    ae_title: str
    port: int


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    http_port: int | None = None  # Orthanc's REST API, for counting what it stored


@dataclass(frozen=True, slots=True)
class QRServer:
    """One row: how to start a Q/R SCP in a directory, and how many instances it holds."""

    key: str  # dicomd | orthanc | dcmqrscp
    label: str
    ae_title: str
    binary: str | None = None  # Orthanc's or dcmqrscp's executable

    def prepare(
        self,
        workdir: Path,
        port: int,
        destinations: Sequence[Destination] = (),
        *,
        index: Path | None = None,
        dicomd_extra: str = "",
    ) -> Launch:
        """Write the server's configuration under `workdir`; return how to start it."""
        workdir.mkdir(parents=True, exist_ok=True)
        if self.key == "dicomd":
            config = workdir / "dicomd.toml"
            config.write_text(dicomd_config(workdir, port, destinations, index, dicomd_extra))
            return Launch([sys.executable, "-m", "dicomd.cli", "serve", "--config", str(config)])
        assert self.binary is not None
        if self.key == "orthanc":
            http_port = common.free_port()
            config = workdir / "orthanc.json"
            config.write_text(orthanc_config(workdir, port, http_port, destinations))
            return Launch([self.binary, str(config)], http_port=http_port)
        config = workdir / "dcmqrscp.cfg"
        config.write_text(dcmqrscp_config(workdir, port, destinations))
        return Launch([self.binary, "-c", str(config), str(port)])

    def stored(self, workdir: Path, launch: Launch) -> int:
        """How many instances the server holds now."""
        if self.key == "dicomd":
            return common.count_files(workdir / "store" / "objects")
        if self.key == "orthanc":
            assert launch.http_port is not None
            return orthanc_instances(launch.http_port)
        area = workdir / "dcmqrscp" / self.ae_title
        return sum(1 for p in area.iterdir() if p.is_file() and p.name != "index.dat")


def dicomd_config(
    workdir: Path,
    port: int,
    destinations: Sequence[Destination],
    index: Path | None,
    extra: str,
) -> str:
    index_path = index if index is not None else workdir / "index.sqlite"
    lines = [
        "[server]",
        f'ae_title = "{DICOMD_AET}"',
        f'host = "{HOST}"',
        f"port = {port}",
        "max_associations = 64",
        "",
        "[storage]",
        f'root = "{workdir / "store"}"',
        "",
        "[index]",
        f'path = "{index_path}"',
        "",
        "[log]",
        'format = "json"',
        "",
        extra,
    ]
    for dest in destinations:
        lines += [
            "[[remote]]",
            f'ae_title = "{dest.ae_title}"',
            f'host = "{HOST}"',
            f"port = {dest.port}",
            "",
        ]
    return "\n".join(lines)


def orthanc_config(
    workdir: Path, port: int, http_port: int, destinations: Sequence[Destination]
) -> str:
    storage, index = workdir / "orthanc-storage", workdir / "orthanc-index"
    storage.mkdir(parents=True, exist_ok=True)
    index.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "dicomd-bench",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(index),
        "DicomAet": ORTHANC_AET,
        "DicomPort": port,
        "HttpPort": http_port,
        # Loopback only, no users: the REST API is used only to count what was stored.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        # Unknown calling AEs may use every service (the client is not a registered modality).
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": {
            dest.ae_title.lower(): [dest.ae_title, HOST, dest.port] for dest in destinations
        },
        "Plugins": [],
        "LuaScripts": [],
    }
    return json.dumps(config, indent=2) + "\n"


def orthanc_instances(http_port: int) -> int:
    """How many instances an Orthanc holds: CountInstances of its REST /statistics (loopback)."""
    url = f"http://{HOST}:{http_port}/statistics"
    with urllib.request.urlopen(url, timeout=30) as response:
        return int(json.load(response)["CountInstances"])


def find_orthanc() -> str | None:
    """Orthanc's executable: on PATH, else Debian's /usr/sbin/Orthanc."""
    return shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")


def dcmqrscp_config(workdir: Path, port: int, destinations: Sequence[Destination]) -> str:
    area = workdir / "dcmqrscp" / DCMQRSCP_AET
    area.mkdir(parents=True, exist_ok=True)
    hosts = [f"{d.ae_title.lower()} = ({d.ae_title}, {HOST}, {d.port})" for d in destinations]
    # Quota (maxStudies, maxBytesPerStudy): past it dcmqrscp deletes the oldest studies, so both
    # are set above what a benchmark stores (500 studies is the most dcmqrscp allows).
    return "\n".join(
        [
            f"NetworkTCPPort  = {port}",
            "MaxPDUSize      = 16384",
            "MaxAssociations = 16",
            "HostTable BEGIN",
            *hosts,
            "HostTable END",
            "VendorTable BEGIN",
            "VendorTable END",
            "AETable BEGIN",
            f"{DCMQRSCP_AET}  {area}  RW  (500, 1024mb)  ANY",
            "AETable END",
            "",
        ]
    )


# -- peers ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Peers:
    """The DCMTK tools and servers found (None: missing)."""

    tools: dict[str, str | None] = field(default_factory=dict)
    orthanc: str | None = None
    dcmqrscp: str | None = None

    def tool(self, name: str) -> str:
        path = self.tools.get(name)
        if path is None:
            raise BenchError(f"DCMTK {name} is missing ({INSTALL['dcmtk']})")
        return path


def orthanc_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout
    return out.strip().splitlines()[0] if out.strip() else "unknown"


def find_peers(tool_names: Sequence[str]) -> Peers:
    """Look for the DCMTK tools, dcmqrscp and Orthanc, and print what was found."""
    peers = Peers()
    print("peers:")
    for name in tool_names:
        path = common.find_dcmtk(name)
        peers.tools[name] = path
        found = f"{path} ({common.dcmtk_version(path)})" if path else "MISSING"
        print(f"  DCMTK {name:9s} {found}")
    peers.dcmqrscp = common.find_dcmtk("dcmqrscp")
    found = f"{peers.dcmqrscp}" if peers.dcmqrscp else f"MISSING ({INSTALL['dcmtk']})"
    print(f"  DCMTK dcmqrscp  {found}")
    peers.orthanc = find_orthanc()
    if peers.orthanc:
        print(f"  Orthanc         {peers.orthanc} ({orthanc_version(peers.orthanc)})")
    else:
        print(f"  Orthanc         MISSING ({INSTALL['orthanc']})")
    print(f"  dicomd          {common.version_of('dicomd')} ({common.git_revision()})")
    return peers


def servers_for(peers: Peers, wanted: Sequence[str]) -> tuple[list[QRServer], list[str]]:
    """The rows to run, in `wanted` order, and the skipped ones with their reason."""
    servers: list[QRServer] = []
    skipped: list[str] = []
    for key in wanted:
        if key == "dicomd":
            servers.append(QRServer("dicomd", "dicomd", DICOMD_AET))
        elif key == "orthanc":
            if peers.orthanc:
                servers.append(QRServer("orthanc", "Orthanc", ORTHANC_AET, peers.orthanc))
            else:
                skipped.append(f"Orthanc: not installed ({INSTALL['orthanc']})")
        elif key == "dcmqrscp":
            if peers.dcmqrscp:
                servers.append(QRServer("dcmqrscp", "DCMTK dcmqrscp", DCMQRSCP_AET, peers.dcmqrscp))
            else:
                skipped.append(f"DCMTK dcmqrscp: not installed ({INSTALL['dcmtk']})")
        else:
            raise SystemExit(f"unknown server {key!r} (dicomd, orthanc, dcmqrscp)")
    return servers, skipped


def storescu_load(
    storescu: str, server: QRServer, port: int, paths: Sequence[Path], log: Path, timeout: float
) -> None:
    """Send files or directories (recursively) to the server over one association."""
    argv = [
        *(storescu, "-aet", CLIENT_AET, "-aec", server.ae_title, "-R", "+sd", "+r"),
        *(HOST, str(port), *map(str, paths)),
    ]
    with log.open("wb") as out:
        try:
            result = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=common.dcmtk_env(),
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"loading took more than {timeout:.0f} s") from e
    if result.returncode != 0:
        raise BenchError(f"storescu exit {result.returncode}: {common.tail(log, 2)}")
