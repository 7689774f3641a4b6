"""Shared fixtures: a dicomd server on 127.0.0.1 port 0 inside the test's event loop, and the peers."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import settings

from dicomd.app import Runtime, open_runtime
from dicomd.config import Config, IndexConfig, ServerConfig, StorageConfig
from dicomd.net.server import DicomServer

# Hypothesis' per-example deadline is a timing assertion, and this machine's speed varies by
# several times from run to run: speed is measured in bench/, never asserted in a test.
settings.register_profile("dicomd", deadline=None)
settings.load_profile("dicomd")

IN_CI = os.environ.get("CI") == "true"

# The running test's tmp_path: make_config() puts its data there, so pytest removes it with the
# test (tmp_path_retention_policy = "failed" keeps only the failures' for a look).
_test_dir: Path | None = None


@pytest.fixture(autouse=True)
def _data_under_tmp_path(tmp_path: Path) -> Iterator[None]:
    global _test_dir
    _test_dir = tmp_path
    try:
        yield
    finally:
        _test_dir = None


# structlog as the tests found it. Taken here, not in a fixture: a module-scoped fixture that sets
# structlog up runs before any function-scoped one could take it.
_STRUCTLOG_AT_START = structlog.get_config()


@pytest.fixture(autouse=True)
def _structlog_config_restored() -> Iterator[None]:
    """A test that sets structlog up (as the CLI and scripts/gen-conformance do, at level "error")
    must not leave it so: a later test's capture_logs would see no warnings at all."""
    try:
        yield
    finally:
        structlog.configure(**_STRUCTLOG_AT_START)


def find_dcmtk(name: str) -> str | None:
    """The DCMTK executable `name` on PATH, passing over pynetdicom's same-named Python apps."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        path = shutil.which(name, path=directory)
        if path is None:
            continue
        with open(path, "rb") as f:
            if f.read(2) == b"#!":  # a script (pynetdicom's echoscu, storescp, ...), not DCMTK
                continue
        return path
    return None


def require_tool(name: str) -> str:
    """The path of a DCMTK peer's executable; a missing peer fails in CI, skips elsewhere."""
    path = find_dcmtk(name)
    if path is None:
        message = f"DCMTK's {name} not found: install DCMTK (apt-get install dcmtk)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def dcmtk_env() -> dict[str, str]:
    # Without TCP_NODELAY=1 DCMTK's small PDUs wait on delayed ACKs (~40 ms each).
    return {**os.environ, "TCP_NODELAY": "1"}


def make_config(
    root: Path | None = None, storage: dict[str, Any] | None = None, **server: Any
) -> Config:
    """A test configuration: loopback, port 0, data under `root` (by default a fresh directory in
    the test's tmp_path; a fixture wider than a test must give its own, from tmp_path_factory)."""
    server.setdefault("host", "127.0.0.1")
    server.setdefault("port", 0)
    server.setdefault("uvloop", False)
    if root is None:
        # Outside a test this would be the system's temp directory, which nobody cleans.
        assert _test_dir is not None, "make_config() outside a test needs a root"
        root = Path(tempfile.mkdtemp(prefix="dicomd-test-", dir=_test_dir))
    return replace(
        Config(),
        server=replace(ServerConfig(), **server),
        storage=replace(StorageConfig(root=root / "store"), **(storage or {})),
        index=IndexConfig(path=root / "index.sqlite"),
    )


@asynccontextmanager
async def run_runtime(
    config: Config | None = None, **state_overrides: Any
) -> AsyncIterator[tuple[DicomServer, Runtime]]:
    """A started server with its store and index; shut down (bounded) when the block ends."""
    config = config or make_config()
    runtime = await open_runtime(config)
    for key, value in state_overrides.items():
        setattr(runtime.state, key, value)
    server = DicomServer(runtime.state, config.server.host, config.server.port)
    await server.start()
    try:
        yield server, runtime
    finally:
        async with asyncio.timeout(15):
            await server.shutdown(timeout=2.0)
            await runtime.close()


@asynccontextmanager
async def run_server(
    config: Config | None = None, **state_overrides: Any
) -> AsyncIterator[DicomServer]:
    """A started server on a free loopback port; shut down (bounded) when the block ends."""
    async with run_runtime(config, **state_overrides) as (server, _runtime):
        yield server
