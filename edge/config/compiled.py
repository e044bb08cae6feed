"""The running gateway's site config, validated in a child process, built without pydantic.

The same entry points as edge/config/loader.py (``load_site``, ``load_site_checked``,
``parse_site``), with the same :class:`ConfigError` issues and warnings, but the validation
runs in ``python -m edge.config.compile`` (edge/config/compile.py) and the config comes back
as the plain objects of edge/config/plain.py. Why: docs/architecture.md, "The site file's
model stays out of the running gateway".

The child is started with ``sys.executable`` (never a fork of a process with threads), fed
its request on stdin and read on stdout within :data:`TIMEOUT` and :data:`MAX_ANSWER` bytes;
a child that dies, hangs, says too much or says nonsense is a :class:`ConfigError` naming
what happened, never a hang of the caller.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from drivers.modbus.model import hand_over, model_from_data
from edge.config.issues import ConfigError, ConfigIssue, ConfigWarning
from edge.config.plain import build_classes, from_tree
from edge.log import fields

if TYPE_CHECKING:
    from edge.config.model import SiteConfig

__all__ = [
    "CHILD",
    "MAX_ANSWER",
    "TIMEOUT",
    "ask",
    "load_site",
    "load_site_checked",
    "parse_site",
    "parse_site_object",
    "salvage_sections",
]

log = logging.getLogger("edge.config")

#: The validating process. ``-P``: not the working directory first on the import path, which
#: ``-m`` alone would put there (the service's working directory is the outbox's folder, which
#: it can write), so a stray ``edge`` folder there is never imported in its place.
CHILD: Final = (sys.executable, "-P", "-m", "edge.config.compile")
#: Longest wait for its answer: loading pydantic and checking a large site takes seconds on a
#: Pi Zero 2 W (about 1 s on a desktop); a minute means it is stuck.
TIMEOUT: Final = 60.0
#: Largest answer taken: the reference site's is about 0.1 MiB.
MAX_ANSWER: Final = 64 * 2**20
#: How much of the child's stderr a failure quotes.
_STDERR_QUOTED: Final = 2000

#: Where ``edge`` is imported from, so the child imports the same code.
_ROOT: Final = str(Path(__file__).resolve().parents[2])


def ask(
    request: dict[str, Any],
    *,
    filename: str,
    command: Sequence[str] = CHILD,
    timeout: float = TIMEOUT,
    max_answer: int = MAX_ANSWER,
) -> dict[str, Any]:
    """The child's answer to ``request``; :class:`ConfigError` (one issue at ``filename``)
    when there is none."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
    started = time.monotonic()
    try:
        child = subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
    except OSError as exc:
        raise _failed(filename, f"could not be started: {exc}") from None
    try:
        out, err, why = _exchange(child, json.dumps(request).encode(), timeout, max_answer)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    if why is not None:
        raise _failed(filename, f"{why} after {time.monotonic() - started:.1f}s{_tail(err)}")
    if child.returncode != 0:
        ended = (
            f"was killed by signal {-child.returncode}"
            if child.returncode < 0
            else f"exited with status {child.returncode}"
        )
        raise _failed(filename, f"{ended}{_tail(err)}")
    try:
        answer = json.loads(out)
    except ValueError as exc:
        raise _failed(filename, f"answered with no JSON ({exc}){_tail(err)}") from None
    if not isinstance(answer, dict) or "refused" in answer:
        raise _failed(filename, f"refused the request: {answer!r:.200}")
    return answer


def _exchange(
    child: subprocess.Popen[bytes], request: bytes, timeout: float, limit: int
) -> tuple[bytes, bytes, str | None]:
    """Write ``request``, read stdout and stderr to their ends; the reason it stopped early."""
    if child.stdin is None or child.stdout is None or child.stderr is None:
        raise RuntimeError("the validating process was started without its three pipes")
    deadline = time.monotonic() + timeout
    chunks: dict[int, list[bytes]] = {child.stdout.fileno(): [], child.stderr.fileno(): []}
    size = 0
    pending = memoryview(request)
    with selectors.DefaultSelector() as selector:
        os.set_blocking(child.stdin.fileno(), False)
        selector.register(child.stdin, selectors.EVENT_WRITE)
        selector.register(child.stdout, selectors.EVENT_READ)
        selector.register(child.stderr, selectors.EVENT_READ)
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return b"", b"".join(chunks[child.stderr.fileno()]), "gave no answer"
            for key, _ in selector.select(left):
                if key.fileobj is child.stdin:
                    try:
                        written = os.write(child.stdin.fileno(), pending[:65536])
                    except BrokenPipeError:
                        written = len(pending)
                    pending = pending[written:]
                    if not pending:
                        selector.unregister(child.stdin)
                        child.stdin.close()
                    continue
                fd = key.fd
                data = os.read(fd, 65536)
                if not data:
                    selector.unregister(key.fileobj)
                    continue
                chunks[fd].append(data)
                if fd == child.stdout.fileno():
                    size += len(data)
                    if size > limit:
                        return b"", b"", f"answered with more than {limit} bytes"
    return b"".join(chunks[child.stdout.fileno()]), b"".join(chunks[child.stderr.fileno()]), None


def _tail(err: bytes) -> str:
    text = err.decode("utf-8", "replace").strip()
    if not text:
        return ""
    return f": {text[-_STDERR_QUOTED:]}"


def _failed(filename: str, what: str) -> ConfigError:
    return ConfigError(
        [
            ConfigIssue(
                filename,
                1,
                1,
                "",
                f"not validated: the validating process ({' '.join(CHILD[2:])}) {what}",
            )
        ]
    )


def _config(answer: dict[str, Any], filename: str) -> tuple[SiteConfig, list[ConfigWarning]]:
    if "issues" in answer:
        raise ConfigError(ConfigIssue(*issue) for issue in answer["issues"])
    if "os_error" in answer:
        errno, strerror, name, text = answer["os_error"]
        if errno is None:
            raise OSError(text)
        raise OSError(errno, strerror, name)
    try:
        classes = build_classes(answer["classes"])
        config = from_tree(answer["config"], classes)
        warnings = [ConfigWarning(*warning) for warning in answer["warnings"]]
        # The models the site was validated against: what load_model gives from now on.
        hand_over([model_from_data(data) for data in answer["models"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise _failed(filename, f"answered in a form not understood ({exc!r:.200})") from None
    return config, warnings


def load_site_checked(
    path: str | os.PathLike[str], *, known_models: Collection[str] | None = None
) -> tuple[SiteConfig, list[ConfigWarning]]:
    """As edge/config/loader.py's, validated by the child."""
    filename = os.fspath(path)
    request = {"op": "load", "path": filename, "known_models": _listed(known_models)}
    return _config(ask(request, filename=filename), filename)


def load_site(
    path: str | os.PathLike[str], *, known_models: Collection[str] | None = None
) -> SiteConfig:
    """As edge/config/loader.py's, validated by the child."""
    return load_site_checked(path, known_models=known_models)[0]


def parse_site(
    text: str, filename: str, *, known_models: Collection[str] | None = None
) -> SiteConfig:
    """As edge/config/loader.py's, validated by the child."""
    request = {
        "op": "parse",
        "text": text,
        "filename": filename,
        "known_models": _listed(known_models),
    }
    return _config(ask(request, filename=filename), filename)[0]


def parse_site_object(
    site: dict[str, Any], filename: str, *, known_models: Collection[str] | None = None
) -> tuple[SiteConfig, str]:
    """As :func:`parse_site`, of the site as an object; with the YAML text the child wrote for
    it (the running gateway has no YAML writer)."""
    request = {
        "op": "parse",
        "site": site,
        "filename": filename,
        "known_models": _listed(known_models),
    }
    answer = ask(request, filename=filename)
    config = _config(answer, filename)[0]
    text = answer.get("text")
    if not isinstance(text, str):
        raise _failed(filename, "answered without the text of the site")
    return config, text


def salvage_sections(text: str) -> dict[str, Any]:
    """Fault mode's sections of the site file ``text`` that are valid on their own (None for
    the others); all None when the child fails."""
    try:
        answer = ask({"op": "salvage", "text": text}, filename="site")
        classes = build_classes(answer["classes"])
        return {name: from_tree(tree, classes) for name, tree in answer["sections"].items()}
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        # Fault mode then runs on its defaults (the default buzzer pin, no uplink): say why.
        log.error("no section of the site file salvaged", extra=fields(error=str(exc)))
        return {}


def _listed(known_models: Collection[str] | None) -> list[str] | None:
    return None if known_models is None else sorted(known_models)
