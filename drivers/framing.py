"""What every sans-IO codec shares: one error type and a capped, resynchronising byte buffer.

A codec module offers ``decode(buffer) -> (consumed, frame | None)``: ``(0, None)`` means "not
enough bytes yet", ``(n, frame)`` a frame of ``n`` bytes, ``(n, None)`` ``n`` bytes of noise
before anything that could start a frame, and :class:`FrameError` says the bytes
at the start of the buffer are not a frame, with how many to drop. :class:`Deframer` turns that
into a stream: feed it whatever the line delivered, take the frames out, and it drops garbage a
byte at a time until a frame starts again. No asyncio here: the transports only move bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Deframer", "FrameError"]

F = TypeVar("F")


class FrameError(ValueError):
    """The bytes at the start of a buffer are not a valid frame.

    ``skip`` is how many bytes the caller should drop before trying again (at least 1, so a
    decoder fed garbage always makes progress).
    """

    def __init__(self, message: str, skip: int = 1) -> None:
        super().__init__(message)
        self.skip = max(1, skip)


class Deframer(Generic[F]):
    """Buffers received bytes and yields decoded frames; garbage is dropped and counted.

    ``limit`` caps the buffer: a line that delivers bytes faster than they can be framed (a
    flood, or a wrong baud rate producing endless noise) loses its oldest bytes rather than the
    gateway's memory.
    """

    def __init__(
        self,
        decode: Callable[[bytes], tuple[int, F | None]],
        *,
        limit: int = 4096,
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be positive")
        self._decode = decode
        self._limit = limit
        self._buffer = bytearray()
        #: Frames that failed their checks (checksum, length, unknown type).
        self.errors = 0
        #: Bytes dropped while looking for the start of a frame, or by the cap.
        self.dropped = 0
        #: The last error, for logs.
        self.last_error = ""

    @property
    def pending(self) -> int:
        """Bytes waiting for the rest of their frame."""
        return len(self._buffer)

    def clear(self) -> None:
        """Forget buffered bytes (e.g. after reopening the port)."""
        self._buffer.clear()

    def feed(self, data: bytes) -> list[F]:
        """Add ``data`` and return every complete frame now in the buffer, oldest first."""
        self._buffer += data
        overflow = len(self._buffer) - self._limit
        if overflow > 0:
            del self._buffer[:overflow]
            self.dropped += overflow
        frames: list[F] = []
        while self._buffer:
            try:
                consumed, frame = self._decode(bytes(self._buffer))
            except FrameError as exc:
                skip = min(exc.skip, len(self._buffer))
                del self._buffer[:skip]
                self.errors += 1
                self.dropped += skip
                self.last_error = str(exc)
                continue
            if consumed == 0:
                break
            del self._buffer[:consumed]
            if frame is None:
                self.dropped += consumed
            else:
                frames.append(frame)
        return frames
