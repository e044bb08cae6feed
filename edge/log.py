"""Structured log lines on stderr, one event per line, fit for journald.

Format is logfmt: ``ts=... level=warning logger=drivers.modbus msg="device timeout" device=efm-1``.
It stays greppable on a phone over SSH and parses with any logfmt tool. Extra fields are
passed as ``log.info("msg", extra=fields(device="efm-1"))``.

``edge run`` logs through :func:`start_log_queue`: records wait in a bounded queue and a thread
writes them, so a stalled journal never blocks the event loop (edge/log_queue.py). The one-shot
commands write directly with :func:`setup_logging`.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from edge.log_queue import LogPipeline

_FIELDS = "edge_fields"
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def fields(**values: Any) -> dict[str, Any]:
    """Wrap key/value pairs for ``extra=`` so the formatter prints them after the message."""
    return {_FIELDS: values}


def _quote(value: Any) -> str:
    text = (
        value if isinstance(value, str) else repr(value) if isinstance(value, float) else str(value)
    )
    if text == "" or not text.isprintable() or any(c in text for c in ' "=\\'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        parts = [
            f"ts={stamp}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        for key, value in getattr(record, _FIELDS, {}).items():
            parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "info") -> None:
    """Send every logger's records to stderr as logfmt lines, written by the caller (for the
    one-shot commands; ``edge run`` uses :func:`start_log_queue`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _quiet_libraries()


def _quiet_libraries() -> None:
    # The gateway never loads pymodbus; a process that also hosts the simulators (tests, the
    # scenario rig) would get a pymodbus line per frame, and the drivers log what matters.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


#: The running log queue, for :func:`lines_dropped` (empty while logging is not queued).
_running: list[LogPipeline] = []


def start_log_queue(
    level: str = "info", *, output: int | None = None, capture: bool = True, **sizes: int
) -> LogPipeline:
    """Log through a bounded queue and a writer thread (see edge/log_queue.py); returns the
    running pipeline, which :func:`lines_dropped` reports on until its ``stop()``.

    ``output``: the descriptor to write to (default stderr); ``capture``: take over stdout,
    stderr and descriptor 2 as well (``edge run``); ``sizes``: ``capacity``, ``routine``."""
    pipeline = LogPipeline(
        level, formatter=LogfmtFormatter(), output=output, capture=capture, **sizes
    )
    _quiet_libraries()
    _running[:] = [pipeline.start()]
    return pipeline


def lines_dropped() -> int:
    """Log lines the running log queue could not hand to stderr since it started (0 when
    logging is not queued)."""
    return sum(pipeline.dropped for pipeline in _running)


def parse_logfmt(line: str) -> dict[str, str]:
    """The key/value pairs of one log line written by :class:`LogfmtFormatter`."""
    pairs = {}
    for key, raw in _PAIR.findall(line):
        value = raw
        if len(raw) >= 2 and raw.startswith('"') and raw.endswith('"'):
            value = _ESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), raw[1:-1])
        pairs[key] = value
    return pairs
