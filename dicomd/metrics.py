"""Prometheus metrics and the optional HTTP endpoint that serves them (with /healthz).

Owns: the metric definitions and a tiny WSGI server on its own thread (prometheus-client renders;
the standard library's wsgiref serves). Instrumentation is cheap and always on; the endpoint is off
unless [metrics] enabled = true, and binds to loopback by default.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

ASSOCIATIONS_ACTIVE = Gauge(
    "dicomd_associations_active", "Associations established now", registry=REGISTRY
)
ASSOCIATIONS = Counter(
    "dicomd_associations", "Association requests by outcome", ["result"], registry=REGISTRY
)
DIMSE_OPERATIONS = Counter(
    "dicomd_dimse_operations", "DIMSE requests answered, by command and final status",
    ["command", "status"], registry=REGISTRY,
)  # fmt: skip
STORED_INSTANCES = Counter(
    "dicomd_stored_instances", "Instances stored (Success answered)", registry=REGISTRY
)
STORED_BYTES = Counter("dicomd_stored_bytes", "Dataset bytes stored", registry=REGISTRY)
LATENCY = Histogram(
    "dicomd_operation_seconds", "Time from request to final response, by operation",
    ["operation"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)  # fmt: skip
STORE_FREE_BYTES = Gauge(
    "dicomd_store_free_bytes", "Free space on the store's filesystem", registry=REGISTRY
)
ACCESS_REFUSED = Counter(
    "dicomd_access_refused", "Associations or requests refused by access control", ["reason"],
    registry=REGISTRY,
)  # fmt: skip

_OPERATIONS = {"CEchoRQ": "echo", "CStoreRQ": "store", "CFindRQ": "find", "CGetRQ": "get"}
_OPERATIONS["CMoveRQ"] = "move"


def observe_operation(command: str, status: int | None, seconds: float) -> None:
    DIMSE_OPERATIONS.labels(command, "none" if status is None else f"{status:04X}").inc()
    operation = _OPERATIONS.get(command)
    if operation is not None:
        LATENCY.labels(operation).observe(seconds)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """/metrics and /healthz on host:port, served from a daemon thread."""

    def __init__(self, host: str, port: int, healthy: Callable[[], bool]) -> None:
        self._healthy = healthy
        self._server: WSGIServer = make_server(host, port, self._app, handler_class=_QuietHandler)
        self.port: int = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dicomd-metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _app(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            start("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest(REGISTRY)]
        if path == "/healthz":
            ok = self._healthy()
            start("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"not serving\n"]
        start("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
