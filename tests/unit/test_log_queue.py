"""The log queue: a stalled or refusing stderr costs log lines (counted), never a blocked caller.

The outputs are real pipes: one filled to the brim that nobody reads, one whose reader has
gone. Whether a logging call returned is judged by a thread that must finish (a generous
deadline, so a hang fails the test rather than stalling the suite), not by a stopwatch.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.log import LogfmtFormatter, fields, parse_logfmt
from edge.log_queue import LogPipeline, LogQueue, LogWriter

ROOT = Path(__file__).resolve().parents[2]
#: A logging call that has not returned by then is blocked, not slow.
DEADLINE = 30.0


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("edge.test", level, __file__, 1, message, (), None)


def test_routine_lines_leave_a_reserve_for_warnings_and_every_drop_is_counted() -> None:
    queue = LogQueue(capacity=10, routine=6)
    taken = [queue.put(record(logging.INFO, f"info {n}")) for n in range(9)]
    assert taken == [True] * 6 + [False] * 3, "info lines stop at their share"
    urgent = [queue.put(record(logging.WARNING, f"alarm {n}")) for n in range(5)]
    assert urgent == [True] * 4 + [False], "warnings use the reserve, then are dropped too"
    assert (queue.dropped, queue.dropped_urgent) == (4, 1)
    assert [r.getMessage() for r in queue.take(100, 0)][-4:] == [f"alarm {n}" for n in range(4)]
    assert queue.unreported() == 4
    assert queue.unreported() == 0, "each drop is reported once"


def test_a_queue_needs_a_share_for_routine_lines() -> None:
    with pytest.raises(ValueError, match="routine"):
        LogQueue(capacity=10, routine=11)
    with pytest.raises(ValueError, match="routine"):
        LogQueue(capacity=10, routine=0)


def full_pipe() -> tuple[int, int]:
    """A pipe (read, write) whose buffer is full: the next blocking write waits for a reader."""
    read, write = os.pipe()
    flags = fcntl.fcntl(write, fcntl.F_GETFL)
    fcntl.fcntl(write, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write, b"x" * 4096)
    with pytest.raises(BlockingIOError):  # not even one byte fits
        os.write(write, b"x")
    fcntl.fcntl(write, fcntl.F_SETFL, flags)
    return read, write


def returns(call: Callable[[], None]) -> bool:
    """Whether ``call`` returns (on a thread of its own, within the generous deadline)."""
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    return not thread.is_alive()


def drain(fd: int, until: Callable[[str], bool]) -> str:
    """Read ``fd`` (the filler bytes first) until ``until(text)``; the text read."""
    data = b""
    while not until(data.decode(errors="replace")):
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


@pytest.fixture
def quiet_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("quiet_root")
def test_a_stalled_stderr_blocks_no_caller_and_keeps_the_alarm_lines() -> None:
    read, write = full_pipe()
    pipeline = LogPipeline(
        "info", formatter=LogfmtFormatter(), output=write, capture=False, capacity=60, routine=40
    )
    pipeline.start()
    log = logging.getLogger("edge.test")
    try:

        def flood() -> None:
            for n in range(500):
                log.info("poll", extra=fields(n=n))
                if n % 100 == 50:
                    log.warning("alarm-raised", extra=fields(n=n))

        assert returns(flood), "a logging call waited for the stalled stderr"
        assert pipeline.dropped > 0
        dropped = pipeline.dropped
        # The journal comes back: everything queued is written, then the count.
        text = drain(read, lambda t: "log lines dropped" in t)
    finally:
        pipeline.stop(timeout=DEADLINE)
        os.close(read)
    lines = [parse_logfmt(line) for line in text.lstrip("x").splitlines()]
    alarms = [line["n"] for line in lines if line["msg"] == "alarm-raised"]
    assert alarms == ["50", "150", "250", "350", "450"], "an alarm line was lost"
    report = next(line for line in lines if line["msg"].endswith("log lines dropped"))
    assert report["msg"] == f"{dropped} log lines dropped"
    assert report["level"] == "warning"
    polls = [line for line in lines if line["msg"] == "poll"]
    assert len(polls) + dropped == 500, "every line is either written or counted"


@pytest.mark.usefixtures("quiet_root")
def test_a_closed_stderr_costs_counted_lines_only() -> None:
    read, write = os.pipe()
    os.close(read)  # the reader is gone: every write is EPIPE
    pipeline = LogPipeline("info", formatter=LogfmtFormatter(), output=write, capture=False)
    pipeline.start()
    log = logging.getLogger("edge.test")
    try:

        def alarms() -> None:
            for _ in range(20):
                log.warning("buzzer on")

        assert returns(alarms)
        pipeline.stop(timeout=DEADLINE)
    finally:
        pipeline.stop(timeout=DEADLINE)
    assert pipeline.dropped == 20
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(write)  # the pipeline closed its own descriptor


CHILD = r"""
import faulthandler, logging, os, sys, warnings
from edge.log import start_log_queue

logs = start_log_queue("info", **({"output": int(sys.argv[1])} if len(sys.argv) > 1 else {}))
print("printed to stdout")
print("printed to stderr", file=sys.stderr)
os.write(2, b"written to descriptor 2\n")
warnings.warn("a library warning")
faulthandler.dump_traceback(all_threads=False)
logging.getLogger("edge.test").warning("buzzer on")
with open(os.environ["DONE"], "w") as done:
    done.write("returned")
logs.stop(timeout=float(os.environ.get("STOP", "5")))
"""


def test_print_stderr_descriptor_2_warnings_and_stack_dumps_all_become_log_lines(
    tmp_path: Path,
) -> None:
    read, write = os.pipe()
    done = tmp_path / "done"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(write)],
        cwd=ROOT,
        env={**os.environ, "DONE": str(done)},
        pass_fds=(write,),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=DEADLINE,
        check=False,
    )
    os.close(write)
    text = drain(read, lambda _: False)
    os.close(read)
    assert child.returncode == 0, child.stderr
    assert child.stdout == b"", "nothing may reach stdout past the queue"
    lines = [parse_logfmt(line) for line in text.splitlines()]
    assert all("ts" in line and "level" in line for line in lines), text
    by_message = {line["msg"]: line for line in lines}
    assert by_message["printed to stdout"]["logger"] == "stdout"
    assert by_message["printed to stderr"]["logger"] == "stderr"
    assert by_message["written to descriptor 2"]["logger"] == "stderr"
    assert by_message["buzzer on"]["logger"] == "edge.test"
    assert any("a library warning" in line["msg"] for line in lines), text
    assert any(line["msg"].startswith("Stack (most recent call first)") for line in lines), text


def test_with_stderr_a_full_pipe_every_kind_of_write_returns(tmp_path: Path) -> None:
    """The same writes with the process's own stderr a full pipe that nobody reads."""
    read, write = full_pipe()
    done = tmp_path / "done"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        env={**os.environ, "DONE": str(done), "STOP": "0.5"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=write,
    )
    os.close(write)
    try:
        code = child.wait(DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(read)
    assert done.read_text() == "returned", "a write blocked the main thread"
    assert code == 0


def test_an_idle_writer_sleeps_until_a_record_or_the_stop_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = LogQueue(capacity=10, routine=6)
    waits: list[float | None] = []
    take = queue.take

    def recorded(limit: int, timeout: float | None) -> list[logging.LogRecord]:
        waits.append(timeout)
        return take(limit, timeout)

    monkeypatch.setattr(queue, "take", recorded)
    read, write = os.pipe()
    writer = LogWriter(queue, write, LogfmtFormatter())
    writer.start()
    try:
        queue.put(record(logging.WARNING, "alarm-raised"))
        with os.fdopen(read, "rb", closefd=False) as output:
            assert b"alarm-raised" in output.readline()
    finally:
        writer.stop()
        writer.join(DEADLINE)
        os.close(read)
        os.close(write)
    assert not writer.is_alive(), "the stop wakes it"
    assert waits
    assert set(waits) == {None}, "no timeout: an idle writer does not wake to look"
