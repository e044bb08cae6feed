"""Starting a real Mosquitto: the one launcher of the tests, the scenario rig, the demo and the
benchmarks.

A broker here is a process on a loopback port (a free one unless a port is asked for), with
its own folder for ``mosquitto.conf``, its log, its password and ACL files and, when asked,
its persistence. It can be stopped and started again on the same port, the way a broker
outage looks to a gateway. What a user may need is an option: TLS (mutual or not), logins,
an ACL, the client certificate's CN as the user, persistence, extra configuration lines.

When clients must log in or speak TLS, the broker also gets a plain listener and a login of
its own (:attr:`Mosquitto.observer`) that may read and write everything: the test's or the
rig's own subscriber sees what arrives whatever the gateway's side demands.

Runtime code never starts a broker; this module is for ``hil/`` and ``tests/``.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "Mosquitto",
    "MosquittoError",
    "TlsListener",
    "find_mosquitto",
    "free_port",
    "mosquitto_binary",
    "password_line",
]

LOOPBACK: Final = "127.0.0.1"
#: How long a starting broker may take to listen (generous: a loaded 2-core machine).
READY_TIMEOUT: Final = 10.0
#: Debian's package installs the broker outside a normal user's PATH.
_FALLBACK_BINARY: Final = Path("/usr/sbin/mosquitto")
_OBSERVER_USER: Final = "test-collector"


class MosquittoError(Exception):
    """No Mosquitto binary, or the broker did not start (the message ends with its log)."""


def mosquitto_binary() -> str | None:
    """The mosquitto binary: $MOSQUITTO, then PATH, then Debian's location; None if none."""
    candidates = [os.environ.get("MOSQUITTO"), shutil.which("mosquitto")]
    if _FALLBACK_BINARY.is_file():
        candidates.append(str(_FALLBACK_BINARY))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def find_mosquitto() -> str:
    """:func:`mosquitto_binary`, or :class:`MosquittoError` saying how to install it."""
    binary = mosquitto_binary()
    if binary is None:
        raise MosquittoError(
            "no Mosquitto broker was found: install it (Debian/Ubuntu: `apt-get install "
            "mosquitto`) or point $MOSQUITTO at the binary"
        )
    return binary


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port on ``host`` that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsListener:
    """TLS for a broker: its CA, certificate and key; ``require_client_cert`` for mutual TLS
    (clients must present a certificate signed by ``ca_file``)."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_client_cert: bool = False


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def password_line(user: str, password: str) -> str:
    """A Mosquitto 2 password file line (PBKDF2-SHA512, as ``mosquitto_passwd`` writes it)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class Mosquitto:
    """One broker process on a fixed port of ``host``, restartable on that port.

    ``port`` None picks a free one. ``users`` (name -> password) turns anonymous access off;
    ``acl`` (lines of a Mosquitto ACL file; needs users or ``use_identity_as_username``)
    limits what each may read and write, the observer excepted; ``use_identity_as_username``
    makes a mutual-TLS client's certificate CN its user; ``persistence`` keeps sessions and
    queued messages over a stop and start; ``log_types`` are Mosquitto's ``log_type`` values
    written to :attr:`log_path` (empty: no log, for a broker that runs for hours);
    ``extra_config`` adds mosquitto.conf lines (``max_packet_size 4096``).
    """

    def __init__(
        self,
        binary: str,
        workdir: Path,
        port: int | None = None,
        *,
        host: str = LOOPBACK,
        persistence: bool = False,
        tls: TlsListener | None = None,
        users: dict[str, str] | None = None,
        acl: Sequence[str] | None = None,
        use_identity_as_username: bool = False,
        log_types: Sequence[str] = ("all",),
        extra_config: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        self.host = host
        self.port = free_port(host) if port is None else port
        self.persistence = persistence
        self.tls = tls
        #: The observer's login, when clients must log in: ``(user, password)``.
        self.observer: tuple[str, str] | None = None
        needs_login = users is not None or use_identity_as_username
        if needs_login:
            self.observer = (_OBSERVER_USER, secrets.token_urlsafe(12))
        # The observer always has a plain listener, whatever the gateway's side demands.
        self.plain_port = free_port(host) if tls is not None else self.port
        self.users = None if users is None else {**users, _OBSERVER_USER: self._observer_password}
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        lines = []
        if tls is not None:
            # Listener options (cafile ...) apply to the listener declared last.
            lines += [
                f"listener {self.plain_port} {host}",
                f"listener {self.port} {host}",
                f"cafile {tls.ca_file}",
                f"certfile {tls.cert_file}",
                f"keyfile {tls.key_file}",
                f"require_certificate {'true' if tls.require_client_cert else 'false'}",
            ]
            if use_identity_as_username:
                # Mutual TLS: the client certificate's CN is the user the ACL sees.
                lines.append("use_identity_as_username true")
        else:
            lines.append(f"listener {self.port} {host}")
        if self.users is not None:
            lines += ["allow_anonymous false", f"password_file {self._passwords(self.users)}"]
        elif use_identity_as_username:
            # Clients of the TLS listener are known by their certificate; the observer still
            # needs its login on the plain one.
            self.users = {_OBSERVER_USER: self._observer_password}
            lines += [
                "per_listener_settings false",
                "allow_anonymous false",
                f"password_file {self._passwords(self.users)}",
            ]
        else:
            lines.append("allow_anonymous true")
        if acl is not None:
            if self.users is None:
                raise ValueError("an ACL needs users (or use_identity_as_username)")
            acl_file = workdir / "acl"
            acl_file.write_text(
                "".join(f"{line}\n" for line in acl) + f"user {_OBSERVER_USER}\ntopic readwrite #\n"
            )
            acl_file.chmod(0o600)
            lines.append(f"acl_file {acl_file}")
        # Stay the user running this (as root, mosquitto would switch to 'mosquitto', which
        # may not write into this folder).
        lines.append(f"user {getpass.getuser()}")
        if log_types:
            lines.append(f"log_dest file {self.log_path}")
            lines += [f"log_type {kind}" for kind in log_types]
        else:
            lines.append("log_dest none")
        if persistence:
            lines += ["persistence true", f"persistence_location {workdir}/", "autosave_interval 0"]
        else:
            lines.append("persistence false")
        lines += extra_config
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def _observer_password(self) -> str:
        assert self.observer is not None
        return self.observer[1]

    def _passwords(self, users: dict[str, str]) -> Path:
        password_file = self.workdir / "passwords"
        password_file.write_text("".join(password_line(u, p) + "\n" for u, p in users.items()))
        password_file.chmod(0o600)
        return password_file

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT``, or ``mqtts://`` for a TLS listener."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the broker and wait until its ports accept connections;
        :class:`MosquittoError` (with the log's end) if it exits or does not listen."""
        if self.running:
            return
        # Something else listening there would pass for this broker being ready.
        for port in {self.port, self.plain_port}:
            if _listening(self.host, port):
                raise MosquittoError(f"port {self.host}:{port} is already in use")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the runner does not take the broker
                # down before the gateway has said goodbye; stop() ends it.
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise MosquittoError(
                    f"mosquitto exited with {self._proc.returncode} on port {self.port}:\n"
                    f"{self.log_tail()}"
                )
            try:
                with (
                    socket.create_connection((self.host, self.port), timeout=0.2),
                    socket.create_connection((self.host, self.plain_port), timeout=0.2),
                ):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise MosquittoError(
                        f"mosquitto did not listen on port {self.port} within "
                        f"{READY_TIMEOUT:.0f} s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Stop the broker the way an operator would (SIGTERM), SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def kill(self) -> None:
        """Kill the broker outright (SIGKILL): no goodbye to clients, nothing saved."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the broker's log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(the log is empty)"
