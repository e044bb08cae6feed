"""The commissioning web server: one page, a small JSON API over the gateway's control socket.

Who may use it: whoever opens the URL printed first (its token works once and becomes a
session cookie, ``SameSite=Strict``); every POST also carries the session's CSRF token in a
header, and a request whose ``Host`` or ``Origin`` is not this server's is refused (DNS
rebinding, cross-site forms). It changes nothing on the gateway but what commissioning needs:
the self-test, the passive bus scan and the record it sends. It stops after ``--idle``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import html
import io
import ipaddress
import json
import secrets
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import segno
from aiohttp import web

from edge.config import SiteConfig, report_config
from edge.contract import iso_utc
from edge.control import DEFAULT_SOCKET, ControlClient, ControlError

__all__ = ["Commissioning", "make_app", "run"]

COOKIE: Final = "edge_commission"
CSRF_HEADER: Final = "X-CSRF-Token"
#: How long each output is driven by one guided self-test step.
STEP_SECONDS: Final = {"buzzer": 1.0, "led": 2.0, "relay": 1.0}
OUTPUTS: Final = tuple(STEP_SECONDS)
MAX_BODY: Final = 16 * 1024
STATIC: Final = {
    "app.js": "text/javascript",
    "style.css": "text/css",
}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Commissioning:
    """What this server knows: the site, its token and sessions, the installer's answers."""

    config: SiteConfig
    config_path: str
    socket: Path
    host: str
    port: int = 0
    idle: float = 900.0
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    token_used: bool = False
    sessions: dict[str, str] = field(default_factory=dict)  # session id -> its CSRF token
    answers: dict[str, bool | None] = field(default_factory=lambda: dict.fromkeys(OUTPUTS))
    first_readings: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None
    last_request: float = field(default_factory=time.monotonic)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: One connection for the page's polling, one for actions: a self-test takes seconds,
    #: and the live values go on meanwhile (a connection answers in order).
    clients: dict[str, ControlClient] = field(default_factory=dict)

    @property
    def url(self) -> str:
        host = outward_address() if _wildcard(self.host) else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/?token={self.token}"

    def control(self, purpose: str = "status") -> ControlClient:
        if purpose not in self.clients:
            self.clients[purpose] = ControlClient(self.socket, timeout=5.0)
        return self.clients[purpose]

    def remember_first(self, status: dict[str, Any]) -> None:
        """Keep each device's first readings seen here: the record says what it read then."""
        for device in status.get("devices", []):
            first = self.first_readings.setdefault(device["id"], {})
            for point, reading in device.get("points", {}).items():
                if point not in first:
                    first[point] = {
                        "value": reading["value"],
                        "unit": reading["unit"],
                        "ts": iso_utc(reading["ts"]),
                    }


def outward_address() -> str:
    """This machine's address on its default route (what a phone on the same network
    types); the loopback address when it has none. A UDP connect sends no packet."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def _host_allowed(state: Commissioning, header: str) -> bool:
    """The ``Host`` a browser sends for this server: a name that resolves here by another
    DNS answer (rebinding) is refused; on a wildcard address any IP literal is this machine."""
    name, _, port = header.rpartition(":") if not header.endswith("]") else (header, "", "")
    name = name.strip("[]")
    if port != str(state.port):
        return False
    if _wildcard(state.host):
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True
    return name == state.host or (_loopback(state.host) and name == "localhost")


@web.middleware
async def guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state: Commissioning = request.app["state"]
    state.last_request = time.monotonic()
    peer = request.remote or ""
    if (not _wildcard(state.host) and _loopback(state.host)) and not _loopback(peer):
        raise web.HTTPForbidden(text="this page answers this machine only\n")
    if not _host_allowed(state, request.headers.get("Host", "")):
        raise web.HTTPForbidden(text="wrong Host header: open the URL edge commission printed\n")
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"http://{request.headers['Host']}":
        raise web.HTTPForbidden(text="cross-site request refused\n")
    public = request.path in ("/", "/favicon.ico") or request.path.startswith("/static/")
    session = request.cookies.get(COOKIE)
    if not public and session not in state.sessions:
        raise web.HTTPUnauthorized(text="no session: open the URL edge commission printed\n")
    if request.method not in ("GET", "HEAD"):
        expected = state.sessions.get(session or "")
        given = request.headers.get(CSRF_HEADER, "")
        if expected is None or not secrets.compare_digest(given, expected):
            raise web.HTTPForbidden(text="missing or wrong CSRF token\n")
    response = await handler(request)
    response.headers.update(SECURITY_HEADERS)
    return response


def _static(name: str) -> bytes:
    return (resources.files("edge.commission") / "static" / name).read_bytes()


async def index(request: web.Request) -> web.StreamResponse:
    state: Commissioning = request.app["state"]
    token = request.query.get("token")
    if token is not None:
        if state.token_used or not secrets.compare_digest(token, state.token):
            raise web.HTTPForbidden(text="this token is wrong or was used already\n")
        state.token_used = True
        session = secrets.token_urlsafe(24)
        state.sessions[session] = secrets.token_urlsafe(24)
        response = web.HTTPSeeOther("/")
        response.set_cookie(COOKIE, session, httponly=True, samesite="Strict", path="/")
        raise response
    if request.cookies.get(COOKIE) not in state.sessions:
        raise web.HTTPUnauthorized(text="no session: open the URL edge commission printed\n")
    return web.Response(body=_static("index.html"), content_type="text/html")


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=_static(name), content_type=STATIC[name])


async def session_info(request: web.Request) -> web.StreamResponse:
    state: Commissioning = request.app["state"]
    return web.json_response(
        {
            "csrf": state.sessions[request.cookies[COOKIE]],
            "gateway": state.config.gateway.id,
            "site": state.config.gateway.site.model_dump(),
            "idle_s": state.idle,
        }
    )


async def status(request: web.Request) -> web.StreamResponse:
    state: Commissioning = request.app["state"]
    try:
        found = await state.control().request("status")
    except ControlError as exc:
        return web.json_response({"ok": False, "error": str(exc)})
    state.remember_first(found)
    return web.json_response(
        {"ok": True, "status": found, "answers": state.answers, "record": state.record}
    )


async def checks(request: web.Request) -> web.StreamResponse:
    state: Commissioning = request.app["state"]
    return web.json_response(state.checks)


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(MAX_BODY, request.content_length)
    try:
        body = json.loads(await request.content.read(MAX_BODY + 1) or b"{}")
    except ValueError:
        raise web.HTTPBadRequest(text="not JSON\n") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="a JSON object expected\n")
    return body


async def scan(request: web.Request) -> web.StreamResponse:
    """The passive scan; with ``{"sweep": BUS}``, every Modbus address of an idle bus."""
    state: Commissioning = request.app["state"]
    body = await _body(request)
    bus = next((b for b in state.config.buses if b.id == body.get("sweep")), None)
    try:
        if bus is None:
            return web.json_response({"ok": True, **await state.control().request("scan")})
        # Each silent address costs the bus's timeout; the models of those that answer more.
        within = 247 * 2 * float(getattr(bus, "timeout", 1.0)) + 30
        params = {"bus": bus.id, "addresses": list(range(1, 248))}
        found = await state.control("action").request("scan", params, within=within)
        return web.json_response({"ok": True, **found})
    except ControlError as exc:
        return web.json_response({"ok": False, "error": str(exc)})


async def selftest(request: web.Request) -> web.StreamResponse:
    state: Commissioning = request.app["state"]
    output = (await _body(request)).get("output")
    if output not in OUTPUTS:
        raise web.HTTPBadRequest(text=f"output must be one of {', '.join(OUTPUTS)}\n")
    seconds = STEP_SECONDS[output]
    try:
        result = await state.control("action").request(
            "selftest", {"outputs": [output], "seconds": seconds}, within=seconds * 4 + 10
        )
    except ControlError as exc:
        return web.json_response({"ok": False, "error": str(exc)})
    return web.json_response({"ok": True, **result})


async def answer(request: web.Request) -> web.StreamResponse:
    state: Commissioning = request.app["state"]
    body = await _body(request)
    if body.get("output") not in OUTPUTS or not isinstance(body.get("yes"), bool):
        raise web.HTTPBadRequest(text="expected {output, yes: true|false}\n")
    state.answers[body["output"]] = body["yes"]
    return web.json_response({"ok": True, "answers": state.answers})


def build_record(state: Commissioning, by: str, notes: str, live: dict[str, Any]) -> dict[str, Any]:
    """The commissioning record: who, when, each device's first readings, checks, answers."""
    statuses = {d["id"]: d for d in live.get("devices", [])}
    return {
        "by": by,
        "at": iso_utc(time.time()),
        "gateway": state.config.gateway.id,
        "site": state.config.gateway.site.model_dump(),
        "devices": [
            {
                "id": device.id,
                "model": device.model,
                "bus": device.bus,
                "address": device.address,
                "location": device.location.model_dump(),
                "status": statuses.get(device.id, {}).get("status", "unknown"),
                "first_readings": state.first_readings.get(device.id, {}),
            }
            for device in state.config.devices
        ],
        "checks": state.checks,
        "selftest": {
            name: {"heard" if name == "buzzer" else "seen": value}
            for name, value in state.answers.items()
        },
        "notes": notes,
    }


async def make_record(request: web.Request) -> web.StreamResponse:
    state: Commissioning = request.app["state"]
    body = await _body(request)
    by, notes = body.get("by"), body.get("notes", "")
    if not isinstance(by, str) or not by.strip() or len(by) > 200:
        raise web.HTTPBadRequest(text="say who commissioned (a name, at most 200 characters)\n")
    if not isinstance(notes, str) or len(notes) > 2000:
        raise web.HTTPBadRequest(text="notes: text of at most 2000 characters\n")
    try:
        live = await state.control().request("status")
        state.remember_first(live)
    except ControlError:
        live = {}
    record = build_record(state, by.strip(), notes, live)
    try:
        await state.control("action").request("commissioned", {"record": record})
        sent, error = True, None
    except ControlError as exc:
        sent, error = False, str(exc)
    state.record = record
    return web.json_response({"ok": True, "submitted": sent, "error": error, "record": record})


async def record_json(request: web.Request) -> web.StreamResponse:
    state: Commissioning = request.app["state"]
    if state.record is None:
        raise web.HTTPNotFound(text="no record yet: finish the commissioning first\n")
    return web.json_response(
        state.record,
        dumps=lambda value: json.dumps(value, indent=2),
        headers={"Content-Disposition": f'attachment; filename="{state.config.gateway.id}.json"'},
    )


def _answer(value: bool | None) -> str:
    return "not asked" if value is None else "yes" if value else "NO"


def _label(title: str, lines: list[str], payload: dict[str, Any]) -> str:
    qr = segno.make(json.dumps(payload, separators=(",", ":"), ensure_ascii=False), error="m")
    svg = qr.svg_inline(scale=3, border=2)
    text = "".join(f"<div>{html.escape(line)}</div>" for line in lines)
    return f'<div class="label">{svg}<div><b>{html.escape(title)}</b>{text}</div></div>'


async def printable(request: web.Request) -> web.StreamResponse:
    """A printable page: the record, and a QR label per gateway and per device."""
    state: Commissioning = request.app["state"]
    config = state.config
    site = config.gateway.site
    labels = [
        _label(
            config.gateway.id,
            ["gateway", f"{site.name}", f"{site.address or ''}"],
            {"gateway": config.gateway.id, "site": site.name},
        )
    ]
    for device in config.devices:
        where = ", ".join(str(v) for v in device.location.model_dump().values() if v)
        labels.append(
            _label(
                device.id,
                [f"{device.model} @ {device.bus}/{device.address}", where],
                {
                    "gateway": config.gateway.id,
                    "device": device.id,
                    "model": device.model,
                    "bus": device.bus,
                    "address": device.address,
                    "location": device.location.model_dump(),
                },
            )
        )
    record = state.record
    if record is None:
        summary, details = "<p>No record yet: finish the commissioning on the main page.</p>", ""
    else:
        summary = (
            f"<p>Commissioned by <b>{html.escape(record['by'])}</b> at {record['at']}. "
            + ", ".join(
                f"{name}: {_answer(next(iter(answer.values())))}"
                for name, answer in record["selftest"].items()
            )
            + ".</p>"
        )
        rows = "".join(
            f"<tr><td>{html.escape(d['id'])}</td><td>{html.escape(d['status'])}</td>"
            f"<td>{len(d['first_readings'])}</td></tr>"
            for d in record["devices"]
        )
        details = (
            "<h2>Devices</h2><table><tr><th>device</th><th>status</th><th>points read</th></tr>"
            f"{rows}</table><details><summary>The record (JSON)</summary>"
            f"<pre>{html.escape(json.dumps(record, indent=2, ensure_ascii=False))}</pre></details>"
        )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Commissioning {html.escape(config.gateway.id)}</title>"
        '<link rel="stylesheet" href="/static/style.css"></head><body class="print">'
        f"<h1>{html.escape(site.name)} — {html.escape(config.gateway.id)}</h1>"
        f'{summary}<h2>Labels</h2><div class="labels">{"".join(labels)}</div>{details}'
        "</body></html>"
    )
    return web.Response(text=page, content_type="text/html")


def make_app(state: Commissioning) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app["state"] = state
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/session", session_info)
    app.router.add_get("/api/status", status)
    app.router.add_get("/api/checks", checks)
    app.router.add_post("/api/scan", scan)
    app.router.add_post("/api/selftest", selftest)
    app.router.add_post("/api/answer", answer)
    app.router.add_post("/api/record", make_record)
    app.router.add_get("/api/record", record_json)
    app.router.add_get("/record", printable)
    return app


def run_checks(path: str) -> dict[str, Any]:
    """``edge check-config`` on the site file, as the page shows it."""
    from drivers.modbus import known_models  # noqa: PLC0415

    out = io.StringIO()
    status_code, _ = report_config(path, out, known_models=known_models())
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    return {"status": status_code, "valid": status_code == 0, "lines": lines}


def single_instance(socket_path: Path) -> socket.socket:
    """Hold a lock no second ``edge commission`` of this gateway can take. An abstract Unix
    socket: released by the kernel when this process ends, however it ends."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    digest = hashlib.sha256(str(socket_path.resolve()).encode()).hexdigest()[:16]
    try:
        lock.bind(f"\0city-safety-edge-commission-{digest}")
    except OSError:
        lock.close()
        raise ControlError(
            f"another edge commission is running for the gateway at {socket_path}; "
            "use its page, or stop it first"
        ) from None
    return lock


async def serve(state: Commissioning) -> None:
    runner = web.AppRunner(make_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, state.host, state.port)
    await site.start()
    server = getattr(site, "_server", None)
    if state.port == 0 and server is not None and server.sockets:
        state.port = server.sockets[0].getsockname()[1]
    print(state.url, flush=True)
    print(
        f"commissioning {state.config.gateway.id}: open the URL above (it works once); "
        f"stops after {state.idle:g}s without a request",
        flush=True,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, state.done.set)
    try:
        while not state.done.is_set():
            idle = time.monotonic() - state.last_request
            if idle >= state.idle:
                print(f"stopped: no request for {state.idle:g}s", flush=True)
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(1.0, state.idle - idle)):
                    await state.done.wait()
    finally:
        for client in state.clients.values():
            await client.close()
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    from drivers.modbus import known_models  # noqa: PLC0415

    status_code, config = report_config(
        args.config, sys.stderr, known_models=known_models(), quiet=True
    )
    if config is None:
        return status_code
    socket_path = Path(args.socket or config.control.socket or DEFAULT_SOCKET)
    host, port = args.listen
    try:
        lock = single_instance(socket_path)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    with lock:
        state = Commissioning(config, args.config, socket_path, host, port, idle=args.idle)
        state.checks = run_checks(args.config)
        try:
            asyncio.run(serve(state))
        except OSError as exc:
            print(f"error: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
            return 1
    return 0
