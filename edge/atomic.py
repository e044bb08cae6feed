"""Files that a power cut leaves whole: the site file, its previous copy, its last good copy."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "digest_of"]


def digest_of(data: bytes) -> str:
    """A site file's ``config_hash``: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(data).hexdigest()[:16]


def atomic_write(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Replace ``path`` with ``data``: a temporary file in the same folder, fsync, rename, fsync
    of the folder. A crash at any point leaves the old file or the new one, whole. The file
    keeps the permissions of the one it replaces, else ``mode`` (else the umask's)."""
    folder = path.parent
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if path.exists():
            # The installer's permissions (a site file may hold broker credentials).
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        elif mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself must survive a power cut
    finally:
        os.close(directory)
