"""OpenSSL stays out of the gateway's memory until TLS is spoken.

libcrypto and libssl are the largest libraries a gateway maps: about 5 MiB of the resident
memory of a running gateway (docs/benchmarks.md, "Import budget of `edge run`"). Two modules
load them, whatever the site: ``_hashlib`` (hashlib's OpenSSL backend) and ``_ssl`` (through
``ssl``, which asyncio, aiomqtt, paho and pymodbus all import at their top). A site whose broker
URL is ``mqtt://`` needs neither. :func:`defer`, run before anything else of the package
(``edge/__init__.py``), keeps both out until TLS is actually used:

- Hashing: the gateway hashes a few short strings with SHA-256 (rule fingerprints, digests of
  files). CPython's built-in implementations do that as well; ``_hashlib`` is marked absent (a
  ``None`` in ``sys.modules``, the import system's documented way) and hashlib uses them.
- asyncio is imported while ``ssl`` is absent, as on an interpreter built without it. asyncio
  then has no TLS of its own, which the gateway never uses: paho wraps its own socket in the
  context ``edge.uplink.connection.tls_context`` builds.
- Everyone else gets a stand-in ``ssl`` module, which becomes the real one, in place, the
  first time anything of it is used (an ``mqtts://`` uplink's context, ``edge doctor``). Until
  then no TLS socket can exist, so no SSL exception can be raised: the names of ssl's exception
  classes stand for a class nothing raises. paho names them in the ``except`` clauses around
  every read and write of a plain socket as well, evaluated each time one fails; without this,
  the first dropped connection would load OpenSSL for nothing.

A process that has loaded any of these before importing ``edge`` (a test runner, a program that
embeds the package) is left as it is: there is nothing to win, and nothing may change under it.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Final

#: What must not be loaded yet for :func:`defer` to keep OpenSSL out.
_TOO_LATE: Final = ("ssl", "_ssl", "_hashlib", "hashlib", "asyncio")

#: CPython's own SHA-256 (3.11; ``_sha2`` from 3.12), which hashlib falls back to. An
#: interpreter built without it keeps hashing through OpenSSL.
_BUILT_IN_SHA256: Final = ("_sha256", "_sha2")

#: The exception classes of the ``ssl`` module (Python 3.11).
SSL_EXCEPTIONS: Final = frozenset(
    {
        "SSLError",
        "SSLZeroReturnError",
        "SSLWantReadError",
        "SSLWantWriteError",
        "SSLSyscallError",
        "SSLEOFError",
        "SSLCertVerificationError",
        "CertificateError",
    }
)


class NeverRaised(Exception):  # not an "Error": nothing raises it
    """What ssl's exception classes stand for until ssl is loaded: nothing raises it."""


def defer() -> bool:
    """Keep OpenSSL out of this process until TLS is used; say whether it was still possible."""
    if any(name in sys.modules for name in _TOO_LATE):
        return False
    spec = importlib.util.find_spec("ssl")
    if spec is None or spec.loader is None:
        return False  # an interpreter built without ssl: nothing to defer
    if any(importlib.util.find_spec(name) for name in _BUILT_IN_SHA256):
        sys.modules["_hashlib"] = None  # type: ignore[assignment]
    sys.modules["ssl"] = None  # type: ignore[assignment]
    try:
        import asyncio  # noqa: F401, PLC0415 (here: while ssl is absent)
    finally:
        del sys.modules["ssl"]
    sys.modules["ssl"] = stand_in(spec)
    return True


def loaded(module: ModuleType) -> bool:
    """Whether ``module`` (the ``ssl`` module or its stand-in) holds the real ssl."""
    return "__getattr__" not in vars(module)


def stand_in(spec: ModuleSpec) -> ModuleType:
    """A module for ``spec`` that executes the real module into itself on first use."""
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader
    if loader is None:
        raise ImportError(f"{spec.name} has no loader", name=spec.name)
    # The first use may come from paho's connecting thread as well as from the event loop.
    lock = threading.RLock()
    running = False  # ssl's own code is running into the module, on the lock's thread

    def __getattr__(name: str) -> object:
        nonlocal running
        if name in SSL_EXCEPTIONS:
            return NeverRaised
        if name.startswith("__"):
            raise AttributeError(name)  # introspection (copy, pickle, pydoc) loads nothing
        with lock:
            if running:  # ssl's own code, while it runs, asks for a name it has not yet set
                raise AttributeError(name)
            if not loaded(module):
                running = True
                try:
                    loader.exec_module(module)
                finally:
                    running = False
                del vars(module)["__getattr__"]
        return getattr(module, name)

    vars(module)["__getattr__"] = __getattr__
    return module
