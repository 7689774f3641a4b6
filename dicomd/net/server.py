"""The TCP listener: accept connections, run one `AcceptorAssociation` task each, shut down cleanly.

Owns: the listening sockets, the set of live association tasks, and graceful shutdown — stop accepting,
let running operations finish until the deadline, then abort what is left.
"""

from __future__ import annotations

import asyncio
import ssl

import structlog

from dicomd.net.association import AcceptorAssociation, ServerState

log = structlog.get_logger("dicomd.server")


class DicomServer:
    def __init__(
        self, state: ServerState, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.state = state
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._tasks: dict[asyncio.Task[None], AcceptorAssociation] = {}
        self._bound_port = port

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return self._bound_port

    @property
    def associations(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connect,
            self._host,
            self._port,
            reuse_address=True,
            backlog=512,
            ssl=self._ssl,
            # A peer that stalls the handshake is cut off like one that stalls its A-ASSOCIATE-RQ.
            ssl_handshake_timeout=self.state.artim_timeout if self._ssl else None,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
        log.info("server_listening", host=self._host, port=self.port, tls=self._ssl is not None)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        association = AcceptorAssociation(reader, writer, self.state)
        task = asyncio.current_task()
        assert task is not None
        self._tasks[task] = association
        try:
            await association.run()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("association_crashed", assoc=association.id)
        finally:
            self._tasks.pop(task, None)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting; let running operations finish for up to `timeout` s; abort the rest."""
        if self._server is None:
            return
        self._server.close()
        self.state.draining = True
        log.info("server_draining", associations=len(self._tasks), timeout=timeout)
        for association in list(self._tasks.values()):
            await association.drain()
        tasks = list(self._tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("server_aborting", associations=len(pending))
                await asyncio.wait(pending, timeout=5.0)
        await self._server.wait_closed()
        log.info("server_stopped")
