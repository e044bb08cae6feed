"""OpenSSL stays out of a gateway process until TLS is used (edge/openssl.py).

Each check runs in a fresh interpreter that imports ``edge`` first, as ``edge run`` does: this
test process has loaded ssl and hashlib long before (pytest and its plugins do), which is the
case :func:`edge.openssl.defer` leaves alone (also checked).
"""

from __future__ import annotations

import hmac
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

#: What the running gateway imports that itself imports ssl or hashlib.
RUN_PATH_IMPORTS = """
import edge
import asyncio, hashlib, hmac, http.client, secrets, sqlite3, urllib.request, uuid
import aiomqtt, gpiozero, paho.mqtt.client
"""

#: Helpers of the scripts: whether OpenSSL's libraries are mapped, what ssl holds.
_HELPERS = """
import json, sys
def mapped():
    with open("/proc/self/maps") as f:
        text = f.read()
    return sorted({lib for lib in ("libssl", "libcrypto") if lib in text})
def state():
    from edge import openssl
    ssl = sys.modules["ssl"]
    return {
        "ssl_loaded": openssl.loaded(ssl),
        "_ssl": sys.modules.get("_ssl") is not None,
        "_hashlib": sys.modules.get("_hashlib") is not None,
        "mapped": mapped(),
    }
"""

ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/maps"
)


def run(script: str, *, first: str = RUN_PATH_IMPORTS) -> Any:
    """Run ``script`` (its last line prints JSON) in a fresh interpreter after the imports
    ``first``; what it printed."""
    code = first + _HELPERS + textwrap.dedent(script)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_run_path_maps_no_openssl_and_hashes_with_cpythons_own_sha256() -> None:
    got = run(
        """
        print(json.dumps({**state(), "abc": hashlib.sha256(b"abc").hexdigest(),
                          "hmac": hmac.new(b"k", b"m", "sha256").hexdigest()}))
        """
    )
    assert got["mapped"] == []
    assert not got["ssl_loaded"]
    assert not got["_ssl"]
    assert not got["_hashlib"]
    assert got["abc"] == ABC_SHA256
    # The same HMAC as this process computes through OpenSSL.
    assert got["hmac"] == hmac.new(b"k", b"m", "sha256").hexdigest()


def test_a_plain_socket_that_has_nothing_to_read_or_no_room_to_write_loads_nothing() -> None:
    # paho names ssl's exception classes in the except clauses around every read and write
    # of its socket, plain or not; they are evaluated whenever one fails.
    got = run(
        """
        import socket
        client = paho.mqtt.client.Client(paho.mqtt.client.CallbackAPIVersion.VERSION2)
        mine, theirs = socket.socketpair()
        mine.setblocking(False)
        client._sock = mine
        failures = []
        try:
            client._sock_recv(1)
        except BlockingIOError:
            failures.append("read")
        try:
            while True:
                client._sock_send(b"x" * 65536)
        except BlockingIOError:
            failures.append("write")
        print(json.dumps({**state(), "failures": failures}))
        """
    )
    assert got["failures"] == ["read", "write"]
    assert not got["ssl_loaded"]
    assert got["mapped"] == []


def test_the_first_use_of_tls_loads_the_real_ssl_for_every_module_that_imported_it() -> None:
    got = run(
        """
        import ssl
        before = state()
        context = ssl.create_default_context()
        try:
            context.load_verify_locations(cadata="not a certificate")
            caught = None
        except ssl.SSLError as exc:
            caught = type(exc).__name__
        import _ssl
        print(json.dumps({
            "before": before, "after": state(), "caught": caught,
            "context": type(context).__name__,
            "paho_sees_it": paho.mqtt.client.ssl.SSLWantReadError is _ssl.SSLWantReadError,
            "one_module": paho.mqtt.client.ssl is ssl is sys.modules["ssl"],
        }))
        """
    )
    assert got["before"]["mapped"] == []
    assert not got["before"]["ssl_loaded"]
    assert got["after"]["ssl_loaded"]
    assert "libssl" in got["after"]["mapped"]
    assert got["context"] == "SSLContext"
    assert got["caught"] == "SSLError"
    assert got["paho_sees_it"]
    assert got["one_module"]


def test_threads_that_first_use_tls_at_once_load_it_once() -> None:
    got = run(
        """
        import ssl, threading
        start = threading.Barrier(8)
        kinds, errors = [], []
        def connect():
            start.wait()
            try:
                kinds.append(type(ssl.create_default_context()))
            except Exception as exc:
                errors.append(repr(exc))
        threads = [threading.Thread(target=connect) for _ in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(json.dumps({"errors": errors, "contexts": len(kinds),
                          "one_class": all(k is ssl.SSLContext for k in kinds)}))
        """
    )
    assert got == {"errors": [], "contexts": 8, "one_class": True}


def test_a_process_that_loaded_asyncio_before_edge_is_left_as_it_is() -> None:
    got = run(
        """
        from edge import openssl
        print(json.dumps({**state(), "deferred now": openssl.defer()}))
        """,
        first="import asyncio\nimport edge, hashlib\n",
    )
    assert got["ssl_loaded"]
    assert got["_hashlib"]
    assert got["deferred now"] is False
