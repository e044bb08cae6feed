"""Tell systemd how the gateway is doing: READY, WATCHDOG and STOPPING (``sd_notify``).

The unit is ``Type=notify`` with ``WatchdogSec=``: systemd considers the gateway started only
when it says ``READY=1`` (its services are running, not merely its process), and restarts it
when the ``WATCHDOG=1`` pings stop. The pings are sent by a task on the gateway's own event
loop, so a loop that hangs (a blocking call, a deadlock) stops them and gets the process
restarted, which a separate thread could not notice.

The protocol is one datagram per message on the unix socket named by ``$NOTIFY_SOCKET``
(see sd_notify(3)); a plain socket does it, no libsystemd binding is needed. Outside systemd
(``NOTIFY_SOCKET`` unset: a terminal, a test, the demo) every call is a no-op.

A send never waits: a service manager that stops reading (its queue of datagrams is short,
``net.unix.max_dgram_qlen``, 10 by default) would otherwise block the event loop that sounds
the alarms. A message that does not fit is dropped and said once; a dropped ping costs at
worst a restart by the watchdog, a blocked loop costs the alarms.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Mapping

from edge.log import fields

__all__ = ["Notifier"]

log = logging.getLogger("edge.systemd")


class Notifier:
    """Sends state changes to the service manager named by ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        # A leading '@' names a socket in the abstract namespace (sd_notify(3)).
        self.address: str | None = ("\0" + path[1:] if path.startswith("@") else path) or None
        self.watchdog_interval = _watchdog_interval(env)
        self._failing = False  # said once per run of failed sends, not once per ping

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; ``False`` when nobody listens."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        try:
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.sendto(message, self.address)
        except OSError as exc:
            # Losing a notification must never take the gateway down: the worst outcome is a
            # restart by systemd's watchdog, which is what it is for.
            if not self._failing:
                reason = "not reading" if isinstance(exc, BlockingIOError) else str(exc)
                log.warning("cannot notify systemd", extra=fields(error=reason))
            self._failing = True
            return False
        self._failing = False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    async def watchdog(self) -> None:
        """Ping ``WATCHDOG=1`` at half the watchdog period until cancelled.

        Runs on the event loop it guards. Returns at once when no watchdog is configured.
        """
        if self.watchdog_interval is None or not self.enabled:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """Start :meth:`watchdog` as a task on the running loop (``None`` when not needed)."""
        if self.watchdog_interval is None or not self.enabled:
            return None
        return asyncio.create_task(self.watchdog(), name="systemd-watchdog")


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    # WATCHDOG_PID names the process the watchdog is for; a child that inherited the
    # environment must not ping on its parent's behalf.
    if pid and pid != str(os.getpid()):
        return None
    with contextlib.suppress(ValueError):
        value = int(usec)
        if value > 0:
            return value / 2 / 1_000_000
    log.warning("ignoring a bad WATCHDOG_USEC", extra=fields(value=usec))
    return None
