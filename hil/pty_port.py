"""A pseudo-terminal standing in for a serial port, for the simulated devices of hil/.

The simulated device reads and writes :attr:`PtyPort.device_fd`; the gateway opens
:attr:`PtyPort.path` (``/dev/pts/N``) or ``link``, a stable name that points at it, like
``/dev/ttyUSB0``. The follower end is in raw mode before anyone opens it: a cooked line would
echo requests back as answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable
from pathlib import Path

__all__ = ["PtyPort"]


class PtyPort:
    """One pseudo-terminal, opened by :meth:`open` and closed by :meth:`close` (twice is safe)."""

    def __init__(self, link: str | os.PathLike[str] | None = None) -> None:
        self.link = Path(link) if link is not None else None
        self.path = ""
        #: The device's end (the pty's leader), non-blocking; -1 while closed.
        self.device_fd = -1
        #: The gateway's end as this process holds it open (its termios are the port's
        #: settings: speed, parity); -1 while closed.
        self.line_fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self.device_fd >= 0

    def open(self, on_readable: Callable[[], None]) -> None:
        """Open the pty, call ``on_readable`` on the running loop when the gateway wrote."""
        if self.is_open:
            raise RuntimeError("the port is already open")
        self._loop = asyncio.get_running_loop()
        self.device_fd, self.line_fd = os.openpty()
        tty.setraw(self.line_fd)
        os.set_blocking(self.device_fd, False)
        self.path = os.ttyname(self.line_fd)
        self._loop.add_reader(self.device_fd, on_readable)
        if self.link is not None:
            self.link.parent.mkdir(parents=True, exist_ok=True)
            if self.link.is_symlink():
                self.link.unlink()
            self.link.symlink_to(self.path)

    def stop_reading(self) -> None:
        """No more ``on_readable`` calls (the port stays open)."""
        if self.is_open and self._loop is not None:
            self._loop.remove_reader(self.device_fd)

    def close(self) -> None:
        """Close both ends and remove ``link`` if it still points here."""
        if self.is_open:
            self.stop_reading()
            os.close(self.device_fd)
            os.close(self.line_fd)
        self.device_fd = self.line_fd = -1
        if self.link is not None:
            with contextlib.suppress(OSError):
                if self.link.is_symlink() and os.readlink(self.link) == self.path:
                    self.link.unlink()
