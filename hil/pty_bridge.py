"""Two pseudo-terminals joined back to back: a null-modem cable in software.

A program that opens a serial port by path cannot open the master side of a pseudo-terminal, so
one pty is not enough to connect two such programs. This module opens two pty pairs and copies
bytes between their master sides; each program then opens one of the slave paths as if it were
``/dev/ttyUSB0``. No socat needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tty

__all__ = ["PtyBridge"]

log = logging.getLogger(__name__)

_CHUNK = 4096


class PtyBridge:
    """Copies bytes both ways between two pseudo-terminals while the event loop runs.

    ``server_path`` and ``client_path`` are the slave devices to open. The bridge keeps its own
    descriptor on each slave: with no slave open, reading a master fails with EIO, and a
    program closing and reopening its port must not break the bridge.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._masters: tuple[int, int] | None = None
        self._slaves: tuple[int, int] | None = None
        self.server_path = ""
        self.client_path = ""
        #: Bytes dropped because the far side was not reading (its buffer was full).
        self.dropped = 0

    async def start(self) -> None:
        """Open both pty pairs and start copying."""
        if self._masters is not None:
            raise RuntimeError("the bridge is already running")
        self._loop = asyncio.get_running_loop()
        master_a, slave_a = os.openpty()
        master_b, slave_b = os.openpty()
        self._masters = (master_a, master_b)
        self._slaves = (slave_a, slave_b)
        for slave in self._slaves:
            # Raw at once, before anyone opens the port: the default cooked mode echoes bytes
            # back into the master, and the bridge would copy its own echo around forever.
            tty.setraw(slave)
        for master in self._masters:
            os.set_blocking(master, False)
        self.server_path = os.ttyname(slave_a)
        self.client_path = os.ttyname(slave_b)
        self._loop.add_reader(master_a, self._copy, master_a, master_b)
        self._loop.add_reader(master_b, self._copy, master_b, master_a)

    def close(self) -> None:
        """Stop copying and close all four descriptors (both ports then see a hangup)."""
        if self._masters is None or self._slaves is None or self._loop is None:
            return
        for master in self._masters:
            self._loop.remove_reader(master)
        for fd in (*self._masters, *self._slaves):
            os.close(fd)
        self._masters = self._slaves = None

    def _copy(self, source: int, target: int) -> None:
        try:
            data = os.read(source, _CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            # Not expected while the bridge holds both slaves; stop rather than spin.
            log.warning("pty bridge: read failed (%s); stopping this direction", exc)
            if self._loop is not None:
                self._loop.remove_reader(source)
            return
        try:
            written = os.write(target, data)
        except BlockingIOError:
            written = 0
        if written < len(data):
            # Nobody is reading the far side: like a line with no listener, the bytes are lost.
            self.dropped += len(data) - written
            log.debug("pty bridge: dropped %d bytes", len(data) - written)
