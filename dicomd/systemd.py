"""systemd integration without dependencies: sd_notify(3) and the service watchdog.

Owns: the notification protocol of sd_notify(3) (one datagram of newline-separated KEY=VALUE lines
to the AF_UNIX socket named by $NOTIFY_SOCKET; a name starting with "@" is in the abstract
namespace) and the watchdog contract of sd_watchdog_enabled(3) ($WATCHDOG_USEC, and $WATCHDOG_PID
when set must be our own PID). Must not know: the server, configuration, logging. Stdlib only.

Everything is a no-op when $NOTIFY_SOCKET is unset (not started by systemd with Type=notify, or
under Docker): callers never need to ask whether they run under systemd.

Sending never blocks and never raises: the socket is non-blocking (a manager that does not read its
queue must not stall our event loop) and a lost notification is reported by returning False. A
service must not fail because its supervisor went away; systemd tells the operator if it missed
READY=1 or a watchdog ping.

The watchdog ping is sent from a task of the event loop, not from a thread: a thread would keep
pinging while the loop is stuck (a blocking call in a coroutine, a livelock), and stuck is exactly
what the watchdog is there to catch. systemd restarts the service (Restart=on-failure treats a
watchdog timeout as a failure) when no ping arrives within WatchdogSec.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "cancel_watchdog", "run_watchdog", "watchdog", "watchdog_interval"]


def _address(value: str | None) -> str | bytes | None:
    """The socket address $NOTIFY_SOCKET names, or None when it names nothing we can send to."""
    if not value:
        return None
    if value.startswith("@"):
        # Abstract namespace: the leading NUL replaces the "@"; the name is not NUL-terminated.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # sd_notify(3) also knows "vsock:CID:PORT" (systemd 253, for VMs); we run on the host's manager.
    return None


class Notifier:
    """Sends sd_notify(3) messages to the service manager, or nothing when there is none."""

    def __init__(self, notify_socket: str | None) -> None:
        self._address = _address(notify_socket)
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        """The notifier for $NOTIFY_SOCKET. With `unset`, the variable is removed from os.environ
        so that child processes do not notify in our name (sd_notify's unset_environment)."""
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET"))
        if unset:
            os.environ.pop("NOTIFY_SOCKET", None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *lines: str) -> bool:
        """Send one datagram of `lines` ("KEY=VALUE"); True when the manager got it."""
        if self._address is None:
            return False
        message = "\n".join(lines).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(message, self._address)
        except OSError:
            # Gone, full (BlockingIOError), or refused: nothing to do but try again next time.
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: systemd now considers the service started (Type=notify)."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A configuration reload begins; send ready() when it is done."""
        # MONOTONIC_USEC lets systemd (253+) tell this reload from an earlier one; older ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        """Shutdown begins: systemd stops expecting watchdog pings and waits for us to exit."""
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """A one-line status that `systemctl status` shows."""
        return self.notify(*_status(text))

    def watchdog_ping(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more of TimeoutStartSec/TimeoutStopSec from now (a long start-up
        reconcile, a long drain); to be repeated before it runs out."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    # A newline would end the STATUS= line and start a field of its own.
    return ("STATUS=" + " ".join(text.splitlines()),)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds within which systemd expects a WATCHDOG=1 ping (WatchdogSec=), or None when no
    watchdog is armed for this process (sd_watchdog_enabled(3))."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        # Set by the manager for the main process; a child that inherited it is not watched.
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000


async def run_watchdog(notifier: Notifier, interval: float) -> None:
    """Ping every interval/2 (sd_watchdog_enabled(3) recommends half) until cancelled. The pings
    come from this loop's own timer: if the loop stalls, they stop and systemd steps in."""
    period = interval / 2
    while True:
        notifier.watchdog_ping()
        await asyncio.sleep(period)


def watchdog(
    loop: asyncio.AbstractEventLoop,
    notifier: Notifier | None = None,
    environ: Mapping[str, str] | None = None,
) -> asyncio.Task[None] | None:
    """A task on `loop` that keeps systemd's watchdog fed, or None when no watchdog is armed (or
    there is no manager to notify). Cancel it when shutdown begins, after stopping()."""
    notifier = notifier if notifier is not None else Notifier.from_environment(environ)
    interval = watchdog_interval(environ)
    if interval is None or not notifier.enabled:
        return None
    return loop.create_task(run_watchdog(notifier, interval), name="systemd-watchdog")


async def cancel_watchdog(task: asyncio.Task[None] | None) -> None:
    """Stop a task made by watchdog() and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    # asyncio.wait does not raise the task's CancelledError, and lets our own cancellation through.
    await asyncio.wait([task])
