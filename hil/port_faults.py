"""A serial port whose open hangs, as a USB adapter's kernel driver can make it hang.

A real hung adapter cannot be had on a CI machine, so the hang is made at the lowest layer:
pyserial's ``Serial.open`` for one device first opens a FIFO for reading, which the kernel
holds until somebody opens the FIFO for writing (:meth:`HeldOpen.release`). The thread that
opens the port is really blocked in a system call, as it would be in the adapter's driver;
everything above it (the port checks, the thread, the bound, the late close) is the
gateway's own code. Other devices open as usual.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import serial

__all__ = ["HeldOpen"]


class HeldOpen:
    """Within ``with``: the first open of ``device`` (a resolved path such as ``/dev/pts/3``)
    waits in the kernel until :meth:`release`; :attr:`held` is set once it waits,
    :attr:`passed` once it went on. ``valve`` seconds after entering it is released anyway,
    so a frozen event loop fails a test instead of hanging it."""

    def __init__(self, device: str, *, valve: float = 60.0) -> None:
        self.device = device
        self.held = threading.Event()
        self.passed = threading.Event()
        self._folder = tempfile.TemporaryDirectory(prefix="held-open-")
        self._gate = Path(self._folder.name) / "gate"
        os.mkfifo(self._gate)
        self._original: Any = None
        self._valve = threading.Timer(valve, self.release)

    def __enter__(self) -> Self:
        original = serial.Serial.open
        gate, held, passed, device = self._gate, self.held, self.passed, self.device

        def open_behind_the_gate(port: serial.Serial) -> None:
            if port.port == device and not passed.is_set():
                held.set()
                os.close(os.open(gate, os.O_RDONLY))  # blocks until a writer opens the FIFO
                passed.set()
            original(port)

        self._original = original
        serial.Serial.open = open_behind_the_gate
        self._valve.start()
        return self

    def release(self) -> None:
        """Let the held open go on (nothing happens when none is held)."""
        deadline = time.monotonic() + 5.0
        while self.held.is_set() and not self.passed.is_set() and time.monotonic() < deadline:
            # ENXIO: the opener has not reached the FIFO yet; a writer that opens and closes
            # again is enough to wake a reader waiting in open.
            with contextlib.suppress(OSError):
                os.close(os.open(self._gate, os.O_WRONLY | os.O_NONBLOCK))
            self.passed.wait(0.01)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._valve.cancel()
        self.release()
        serial.Serial.open = self._original
        self._folder.cleanup()
