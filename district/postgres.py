"""A throwaway PostgreSQL server from the distribution's packages, for tests and benchmarks.

    with ThrowawayPostgres() as pg:
        url = pg.url            # postgresql://district@127.0.0.1:PORT/district

It runs ``initdb`` into a fresh folder, starts ``postgres`` on a free loopback port (trust
authentication, loopback only) and removes everything at exit. ``stop()`` and ``start()``
restart it on the same port and data, which is how a database outage looks to a receiver.
Debian installs the programs in ``/usr/lib/postgresql/NN/bin`` (``apt-get install
postgresql``); ``$PG_BIN`` points elsewhere. As root the server runs as the ``postgres`` user
(or ``nobody``), which owns the data folder: PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["PostgresMissing", "ThrowawayPostgres", "postgres_bin"]

_READY_TIMEOUT = 60.0


class PostgresMissing(RuntimeError):
    """PostgreSQL's server programs are not installed; the text says how to install them."""


def postgres_bin() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``; None when not installed."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).parent)
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = [p for p in root.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
    for folder in candidates:
        if all((folder / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """The user to run the server as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise PostgresMissing("running as root and neither a postgres nor a nobody user exists")


class ThrowawayPostgres:
    """One PostgreSQL server on a free loopback port with a temporary data folder."""

    def __init__(self, *, database: str = "district", user: str = "district") -> None:
        folder = postgres_bin()
        if folder is None:
            raise PostgresMissing(
                "PostgreSQL is not installed (Debian/Ubuntu: apt-get install postgresql; "
                "or point $PG_BIN at the folder holding initdb and pg_ctl)"
            )
        self.bin = folder
        self.database = database
        self.user = user
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._run_as = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="district-pg-"))
        # The server user must reach its data folder inside ours.
        self.root.chmod(0o755)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._initialised = False

    @property
    def url(self) -> str:
        """A libpq connection URL (what ``psycopg.connect`` and the receiver take)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"

    def _as_server(self, args: list[str]) -> list[str]:
        if self._run_as is None:
            return args
        return [
            "setpriv",
            f"--reuid={self._run_as}",
            f"--regid={self._run_as}",
            "--init-groups",
            "--",
            *args,
        ]

    def _own(self, path: Path) -> None:
        if self._run_as is not None:
            entry = pwd.getpwnam(self._run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.data.mkdir(mode=0o700)
        self._own(self.data)
        self.log.touch()
        self._own(self.log)
        subprocess.run(
            self._as_server(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-instructions",
                ]
            ),
            check=True,
            capture_output=True,
            cwd=self.root,
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            # Loopback only, no Unix socket folder of the system's, modest memory.
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                f"unix_socket_directories = '{self.data}'\nshared_buffers = 128MB\n"
                "max_connections = 50\n"
            )
        self._initialised = True

    def start(self) -> None:
        """Start the server (initialising the data folder the first time) and wait for it."""
        if not self._initialised:
            self._initdb()
        subprocess.run(
            self._as_server(
                [
                    str(self.bin / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-w",
                    "-t",
                    str(int(_READY_TIMEOUT)),
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            cwd=self.root,
        )
        self._create_database()

    def _create_database(self) -> None:
        import psycopg  # noqa: PLC0415 -- the optional platform extra

        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            try:
                with psycopg.connect(
                    f"postgresql://{self.user}@{self.host}:{self.port}/postgres", autocommit=True
                ) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                    ).fetchone()
                    if exists is None:
                        conn.execute(f'CREATE DATABASE "{self.database}"')
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def new_database(self, name: str) -> str:
        """Create another empty database on this server; its URL."""
        import psycopg  # noqa: PLC0415

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server at once (``-m fast``: clients are disconnected)."""
        subprocess.run(
            self._as_server(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
            ),
            check=False,
            capture_output=True,
            cwd=self.root,
        )

    def close(self) -> None:
        if self._initialised:
            # Its data is about to be deleted: no checkpoint to wait for.
            subprocess.run(
                self._as_server(
                    [
                        str(self.bin / "pg_ctl"),
                        "-D",
                        str(self.data),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]
                ),
                check=False,
                capture_output=True,
                cwd=self.root,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
