"""Shared fixtures: a dicomd server on 127.0.0.1 port 0 inside the test's event loop, and the peers."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from dicomd.app import build_state
from dicomd.config import Config, ServerConfig
from dicomd.net.server import DicomServer

IN_CI = os.environ.get("CI") == "true"


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


def make_config(**server: Any) -> Config:
    server.setdefault("host", "127.0.0.1")
    server.setdefault("port", 0)
    server.setdefault("uvloop", False)
    return replace(Config(), server=replace(ServerConfig(), **server))


@asynccontextmanager
async def run_server(
    config: Config | None = None, **state_overrides: Any
) -> AsyncIterator[DicomServer]:
    """A started server on a free loopback port; shut down (10 s bound) when the block ends."""
    config = config or make_config()
    state = build_state(config)
    for key, value in state_overrides.items():
        setattr(state, key, value)
    server = DicomServer(state, config.server.host, config.server.port)
    await server.start()
    try:
        yield server
    finally:
        async with asyncio.timeout(10):
            await server.shutdown(timeout=2.0)
