"""Log lines leave the event loop through a bounded queue; one thread writes them to stderr.

Under systemd stderr is a stream to journald. When journald stalls (a slow SD card, a journald
restart) a write to it blocks, and a write made on the event loop would freeze the loop: no
buzzer pattern, no uplink, until the watchdog restarts the gateway into the same block. So in
``edge run`` nothing on the loop writes to stderr:

- every logger's records go to :class:`QueueingHandler`, which puts them in a :class:`LogQueue`
  and returns at once; a :class:`LogWriter` thread formats and writes them;
- ``sys.stdout`` and ``sys.stderr`` are replaced by :class:`QueueStream` objects, so ``print``,
  tracebacks printed by threads and warnings take the same queue;
- file descriptor 2 itself (what C code and faulthandler write to) becomes a non-blocking pipe
  that a relay thread reads into the queue: a full pipe loses bytes, never blocks a writer.

The queue holds at most :data:`QUEUE_LINES` records, of which at most :data:`ROUTINE_LINES` may
be below WARNING: the rest is kept for alarms, buzzer changes and faults, so a flood of info
lines during a stall cannot crowd out the alarm lines. A record that does not fit is dropped
and counted; so is a line the output refused (stderr closed, a full disk). When the writer has
caught up it writes ``N log lines dropped``; the total is in the gateway's health message.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import io
import logging
import os
import select
import sys
import threading
import time
from typing import Final, TextIO

__all__ = [
    "QUEUE_LINES",
    "ROUTINE_LINES",
    "LogPipeline",
    "LogQueue",
    "LogWriter",
    "QueueStream",
    "QueueingHandler",
]

#: Records the queue holds while stderr does not take them: a minute of a very chatty
#: gateway, a few MiB of memory.
QUEUE_LINES: Final = 10_000
#: Of which at most this many below WARNING; the other 2,000 are kept for WARNING and above.
ROUTINE_LINES: Final = 8_000
#: How long the writer waits for a stalled stderr before looking again whether it must stop.
_POLL_MS: Final = 200
#: Records formatted and written per round, so a drop count can be written in between.
_BATCH: Final = 256

_writer_log = logging.getLogger("edge.log")


class LogQueue:
    """A bounded FIFO of log records that never blocks the producer.

    :meth:`put` is called on the thread that logs (the event loop); it takes a lock that the
    writer only holds to pop records, never while writing.
    """

    def __init__(self, capacity: int = QUEUE_LINES, routine: int = ROUTINE_LINES) -> None:
        if not 0 < routine <= capacity:
            raise ValueError("need 0 < routine <= capacity")
        self.capacity = capacity
        self.routine = routine
        self._records: collections.deque[logging.LogRecord] = collections.deque()
        self._ready = threading.Condition(threading.Lock())
        #: Records that never reached the output, by any cause, since the start.
        self.dropped = 0
        #: Of those, WARNING and above (the reserve was full too).
        self.dropped_urgent = 0
        self._unreported = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._records)

    def put(self, record: logging.LogRecord) -> bool:
        """Queue ``record``; False (and counted) when its share of the queue is full."""
        limit = self.capacity if record.levelno >= logging.WARNING else self.routine
        with self._ready:
            if len(self._records) >= limit or self._closed:
                self._count_lost(record.levelno)
                return False
            self._records.append(record)
            self._ready.notify()
        return True

    def lost(self, levelno: int) -> None:
        """Count a record that was taken but could not be written."""
        with self._ready:
            self._count_lost(levelno)

    def _count_lost(self, levelno: int) -> None:
        self.dropped += 1
        self._unreported += 1
        if levelno >= logging.WARNING:
            self.dropped_urgent += 1

    def take(self, limit: int, timeout: float | None) -> list[logging.LogRecord]:
        """Up to ``limit`` records, oldest first; waits up to ``timeout`` for the first."""
        with self._ready:
            if not self._records and not self._closed:
                self._ready.wait(timeout)
            return [self._records.popleft() for _ in range(min(limit, len(self._records)))]

    def unreported(self) -> int:
        """Drops since the last call (the writer reports them once it has caught up)."""
        with self._ready:
            count, self._unreported = self._unreported, 0
            return count

    def unreport(self, count: int) -> None:
        """Put back drops whose report could not be written (reported with the next one)."""
        with self._ready:
            self._unreported += count

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class QueueingHandler(logging.Handler):
    """The root logger's only handler: hands records to the queue, never writes.

    Like the standard library's ``QueueHandler``, but with a queue that drops and counts
    instead of raising ``queue.Full``, and without formatting on the caller's thread (the
    writer formats). The message is fixed now, so later changes to its arguments do not show.
    """

    def __init__(self, queue: LogQueue) -> None:
        super().__init__()
        self.queue = queue

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg = record.getMessage()
            record.args = None
        except Exception:
            self.handleError(record)
            return
        self.queue.put(record)


def write_all(fd: int, data: bytes, stop: threading.Event) -> None:
    """Write ``data`` to ``fd``, waiting for a non-blocking one to take it; raise OSError when
    it refuses (closed, full disk) or when ``stop`` is set while it waits."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            written = 0
        if written:
            view = view[written:]
            continue
        if stop.is_set():
            raise OSError(errno.EAGAIN, "stopped while the output was stalled")
        select.select([], [fd], [], _POLL_MS / 1000)


class LogWriter(threading.Thread):
    """Formats queued records as logfmt lines and writes them to ``fd``."""

    def __init__(self, queue: LogQueue, fd: int | None, formatter: logging.Formatter) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.queue = queue
        self.fd = fd
        self.formatter = formatter
        self._stopping = threading.Event()
        #: Lines written since the start (what reached the journal).
        self.written = 0
        self._output_ok = fd is not None

    def run(self) -> None:
        while True:
            # No timeout: a record or the stop (which closes the queue) wakes it, so an idle
            # writer costs nothing.
            batch = self.queue.take(_BATCH, None)
            for record in batch:
                self._write(record)
            if len(self.queue) == 0:
                self._report_drops()
                if not batch and (self.queue.closed or self._stopping.is_set()):
                    return

    def _report_drops(self) -> None:
        """Once caught up, say how many lines were lost since the last report. Not while the
        output refuses lines: the report would only be lost (and counted) again."""
        if not self._output_ok:
            return
        dropped = self.queue.unreported()
        if dropped and not self._write(self._dropped_record(dropped), counted=False):
            self.queue.unreport(dropped)

    def _dropped_record(self, count: int) -> logging.LogRecord:
        return _writer_log.makeRecord(
            _writer_log.name,
            logging.WARNING,
            __file__,
            0,
            f"{count} log lines dropped",
            (),
            None,
            extra={
                "edge_fields": {
                    "dropped": count,
                    "dropped_total": self.queue.dropped,
                    "dropped_warning_or_worse": self.queue.dropped_urgent,
                }
            },
        )

    def _write(self, record: logging.LogRecord, *, counted: bool = True) -> bool:
        """Write one record; False (and, if ``counted``, counted as dropped) when refused."""
        try:
            line = self.formatter.format(record)
        except Exception:  # a record that cannot be formatted must not stop the writer
            line = f'level=error logger=edge.log msg="unformattable record" of={record.name}'
        try:
            if self.fd is None:
                raise OSError(errno.EBADF, "stderr is closed")
            write_all(self.fd, (line + "\n").encode("utf-8", "backslashreplace"), self._stopping)
        except OSError:
            self._output_ok = False
            if counted:
                self.queue.lost(record.levelno)
            return False
        self._output_ok = True
        self.written += 1
        return True

    def stop(self) -> None:
        self._stopping.set()
        self.queue.close()


class QueueStream(io.TextIOBase):
    """A stand-in for ``sys.stdout``/``sys.stderr``: each line written becomes a log record.

    ``print`` on the event loop then costs a queue append, whatever the journal is doing.
    ``fileno()`` is file descriptor 2, which the pipeline has made a non-blocking pipe.
    """

    def __init__(self, queue: LogQueue, name: str, level: int) -> None:
        super().__init__()
        self._queue = queue
        self._logger = logging.getLogger(name)
        self._level = level
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self._queue.put(
                    self._logger.makeRecord(self._logger.name, self._level, "", 0, line, (), None)
                )
        return len(text)

    def flush(self) -> None:
        with self._lock:
            rest, self._partial = self._partial, ""
        if rest.strip():
            self.write(rest + "\n")

    def fileno(self) -> int:
        return 2

    def isatty(self) -> bool:
        return False


class LogPipeline:
    """The whole arrangement for ``edge run``: queue, handler, writer and the captured
    stdout, stderr and file descriptor 2. :meth:`stop` puts everything back."""

    def __init__(
        self,
        level: str = "info",
        *,
        formatter: logging.Formatter,
        capacity: int = QUEUE_LINES,
        routine: int = ROUTINE_LINES,
        output: int | None = None,
        capture: bool = True,
    ) -> None:
        """``output``: the file descriptor lines are written to (default: a duplicate of 2).
        ``capture``: also take over ``sys.stdout``, ``sys.stderr`` and descriptor 2 (the
        process's own output: only ``edge run`` does this; tests and benchmarks pass False)."""
        self.queue = LogQueue(capacity, routine)
        self.level = level
        self._saved_fd2: int | None = None
        self._saved_streams: tuple[TextIO, TextIO] | None = None
        self._relay: threading.Thread | None = None
        self._relay_fd: int | None = None
        if output is None:
            output = _duplicate_stderr()
        self.writer = LogWriter(self.queue, output, formatter)
        self.handler = QueueingHandler(self.queue)
        self._capture = capture
        self._saved_handlers: list[logging.Handler] = []
        self._stopped = False

    @property
    def dropped(self) -> int:
        return self.queue.dropped

    def start(self) -> LogPipeline:
        root = logging.getLogger()
        self._saved_handlers = root.handlers[:]
        root.handlers[:] = [self.handler]
        root.setLevel(self.level.upper())
        self.writer.start()
        if self._capture:
            self._capture_output()
        return self

    def _capture_output(self) -> None:
        logging.captureWarnings(True)
        self._saved_streams = (sys.stdout, sys.stderr)
        sys.stdout = QueueStream(self.queue, "stdout", logging.INFO)
        sys.stderr = QueueStream(self.queue, "stderr", logging.WARNING)
        read, write = os.pipe()
        flags = fcntl.fcntl(write, fcntl.F_GETFL)
        fcntl.fcntl(write, fcntl.F_SETFL, flags | os.O_NONBLOCK)
        with contextlib.suppress(OSError):
            self._saved_fd2 = os.dup(2)
        os.dup2(write, 2)
        os.close(write)
        self._relay_fd = read
        self._relay = threading.Thread(
            target=_relay, args=(read, self.queue), name="log-fd2-relay", daemon=True
        )
        self._relay.start()

    def stop(self, timeout: float = 1.0, *, release: bool = True) -> None:
        """Write what is queued (for at most ``timeout`` seconds: a stalled journal must not
        hold up a stop), then restore the handlers and streams. The output descriptor is
        the pipeline's own: it is closed once the writer has ended.

        ``release=False`` (a process about to exit) keeps the queue's streams and handler in
        place, so that nothing said at exit can block on the real stderr: it is dropped."""
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        if not release:
            while len(self.queue) and time.monotonic() < deadline:
                time.sleep(0.01)
            self.writer.stop()
            self.writer.join(max(0.0, deadline - time.monotonic()))
            return
        if self._saved_streams is not None:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            sys.stdout, sys.stderr = self._saved_streams
            self._saved_streams = None
            logging.captureWarnings(False)
            # Descriptor 2 back as it was; the relay reads what is left, then sees the end.
            if self._saved_fd2 is not None:
                os.dup2(self._saved_fd2, 2)
                os.close(self._saved_fd2)
                self._saved_fd2 = None
            else:
                os.close(2)
            if self._relay is not None:
                self._relay.join(max(0.0, deadline - time.monotonic()))
        while len(self.queue) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.writer.stop()
        self.writer.join(max(0.0, deadline - time.monotonic()))
        root = logging.getLogger()
        if self.handler in root.handlers:
            root.handlers[:] = self._saved_handlers
        if self.writer.fd is not None and not self.writer.is_alive():
            with contextlib.suppress(OSError):
                os.close(self.writer.fd)


def _duplicate_stderr() -> int | None:
    """A private duplicate of descriptor 2 for the writer, or None when 2 is closed.

    A closed 2 is also filled with /dev/null, so that the next file or socket the gateway
    opens does not become descriptor 2 and receive whatever C code prints.
    """
    try:
        return os.dup(2)
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        if null != 2:
            os.dup2(null, 2)
            os.close(null)
        return None


def _relay(fd: int, queue: LogQueue) -> None:
    """Turn what is written to descriptor 2 (faulthandler's stack dumps, C libraries) into
    log records, one per line."""
    relay_log = logging.getLogger("stderr")

    def put(raw: bytes) -> None:
        text = raw.decode("utf-8", "replace")
        if text.strip():
            record = relay_log.makeRecord("stderr", logging.WARNING, "", 0, text, (), None)
            queue.put(record)

    pending = b""
    with contextlib.suppress(OSError):
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                put(line)
    put(pending)
    os.close(fd)
