"""Fault mode: the site file is unusable and there is no last good config to run instead.

A gateway with nothing to run must still not be silent, nor restart in a loop that nobody
hears. ``edge run`` then runs this instead of a gateway, until it is stopped:

- the buzzer sounds :data:`~edge.annunciator.FAULT_PATTERN` (three short beeps every ten
  seconds), on the ``outputs`` of the site file when that section is usable on its own, else
  on :data:`DEFAULT_BUZZER` with the default pin factory;
- the outbox is left as it is, or, when ``gateway``, ``uplink`` and ``buffer`` are usable on
  their own, opened and drained: a ``config-invalid`` event saying exactly what is wrong goes
  first, then whatever was waiting; signed ``ping`` and ``get-status`` are answered (the
  status says ``mode: fault`` and the problems), under the file's ``commands`` section when it
  is usable on its own (else every command is refused);
- systemd hears READY (with the fault as its STATUS), so it does not restart the process in a
  loop; ``edge doctor`` names the same problems from the same files;
- ``push-config``, signed with the engineering key (no running config bounds what it changes),
  is taken as on a running gateway (checked, written with its push marker, acknowledged),
  provided the site file's path is known: then fault mode ends and ``edge run``
  tries the pushed config; if it does not prove itself (edge/site_runner.py), the file goes back
  and fault mode resumes, reporting ``config-rolled-back``. So a gateway that lost its config
  can be given one from the platform, without a ladder.

Nothing here judges readings: without a site file there are no devices to poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from gpiozero import Buzzer

from buffer import Outbox
from edge import __version__
from edge.annunciator import FAULT_PATTERN, make_pin_factory, phase_state
from edge.atomic import digest_of
from edge.clock import Clock, SystemClock
from edge.commands import CommandError, current_command_id, current_key_class
from edge.config.compiled import salvage_sections
from edge.config.terms import DEFAULT_FAULT_PIN
from edge.contract import event_body
from edge.gateway import open_outbox
from edge.log import fields
from edge.reload import PushRejected, RestartRequest, check_pushed, write_site
from edge.uplink import Uplink

if TYPE_CHECKING:
    from edge.config.model import BufferConfig, CommandPolicy, Outputs
    from edge.config.model import Gateway as GatewaySection
    from edge.config.model import Uplink as UplinkSection

__all__ = ["DEFAULT_BUZZER", "FaultMode", "Salvage", "salvage"]

log = logging.getLogger("edge.fault")


@dataclass(frozen=True)
class BuzzerPin:
    """A buzzer's pin, as fault mode reads it from ``outputs.buzzer``."""

    pin: int
    active_high: bool = True


#: The buzzer when the file names none usable: the pin a refused SD card sounds on too.
DEFAULT_BUZZER: Final = BuzzerPin(pin=DEFAULT_FAULT_PIN)
#: How long after a push's ack fault mode ends, so that the ack leaves first.
_ACK_GRACE: Final = 0.5
#: The first problems a config-invalid event lists (a file of garbage has thousands).
MAX_REPORTED: Final = 50


@dataclass(frozen=True)
class Salvage:
    """The sections of an unusable site file that are valid on their own."""

    gateway: GatewaySection | None = None
    outputs: Outputs | None = None
    uplink: UplinkSection | None = None
    buffer: BufferConfig | None = None
    #: Who may command the gateway; unusable or absent, every command is refused.
    commands: CommandPolicy | None = None


@dataclass(frozen=True)
class _Identity:
    """What a push is checked against in fault mode (edge.reload.Running)."""

    gateway: GatewaySection
    buffer: BufferConfig


def salvage(text: str | None) -> Salvage:
    """What of the site file ``text`` can still be used: each section validated alone (by the
    validating process, edge/config/compile.py: fault mode loads no pydantic either)."""
    if text is None:
        return Salvage()
    sections = salvage_sections(text)
    return Salvage(
        gateway=sections.get("gateway"),
        outputs=sections.get("outputs"),
        uplink=sections.get("uplink"),
        buffer=sections.get("buffer"),
        commands=sections.get("commands"),
    )


@dataclass
class FaultMode:
    """Sound the fault, keep the buffer, tell the platform what is wrong; until stopped."""

    problems: list[str]
    found: Salvage
    pin_factory: Any = None
    clock: Clock = field(default_factory=SystemClock)
    #: Where the fault sounds, as logged (e.g. ``GPIO 17``).
    buzzer_at: str = ""
    outbox: Outbox | None = None
    uplink: Uplink | None = None
    #: The site file a push-config replaces (None: pushes are refused).
    site: Path | None = None
    known_models: Collection[str] | None = None
    #: A push taken: fault mode has ended for it to be tried.
    pushed: RestartRequest | None = None
    #: Reported first: the push that fault mode took before, rolled back.
    rolled_back: dict[str, Any] | None = None
    _buzzer: Buzzer | None = None
    _since: float = field(default_factory=time.time)
    _done: asyncio.Event = field(default_factory=asyncio.Event)

    def _open_buzzer(self) -> None:
        outputs = self.found.outputs
        pin = outputs.buzzer if outputs is not None else DEFAULT_BUZZER
        try:
            factory = (
                self.pin_factory
                if self.pin_factory is not None
                else make_pin_factory(outputs.pin_factory if outputs is not None else None)
            )
            self._buzzer = Buzzer(pin.pin, active_high=pin.active_high, pin_factory=factory)
        except Exception as exc:  # no GPIO backend: still report, still READY
            log.error("fault buzzer unusable", extra=fields(pin=pin.pin, error=repr(exc)))
            self.buzzer_at = f"none (GPIO {pin.pin}: {exc})"
            return
        self.buzzer_at = f"GPIO {pin.pin}"

    async def _sound(self) -> None:
        buzzer = self._buzzer
        if buzzer is None:
            return
        started = self.clock.monotonic()
        never = asyncio.Event()
        while True:
            on, remaining = phase_state(FAULT_PATTERN, self.clock.monotonic() - started)
            buzzer.value = on
            await self.clock.wait(never, remaining)

    def status(self) -> dict[str, Any]:
        """The get-status answer and the shape of the config-invalid event."""
        return {
            "mode": "fault",
            "version": __version__,
            "since": self._since,
            "problems": self.problems[:MAX_REPORTED],
            "problem_count": len(self.problems),
            "buzzer": f"fault pattern on {self.buzzer_at}",
        }

    async def run(
        self, stop: asyncio.Event, *, on_started: Callable[[str], None] | None = None
    ) -> None:
        self._open_buzzer()
        log.error(
            "no usable config: fault mode",
            extra=fields(problems=len(self.problems), buzzer=self.buzzer_at),
        )
        for problem in self.problems[:MAX_REPORTED]:
            log.error("config problem", extra=fields(problem=problem))
        tasks = [asyncio.create_task(self._sound(), name="fault buzzer")]
        reporter = self._reporter()
        if reporter is not None:
            tasks.append(asyncio.create_task(reporter, name="fault report"))
        try:
            if on_started is not None:
                on_started(f"FAULT: no usable config ({len(self.problems)} problems); see logs")
            waits = [asyncio.create_task(stop.wait()), asyncio.create_task(self._done.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.uplink is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2.0):
                        await self.uplink.stop()
            if self.outbox is not None:
                with contextlib.suppress(Exception):
                    await self.outbox.close(grace=0.5)
            if self._buzzer is not None:
                self._buzzer.off()  # quiet before the pin is let go: a stop is not a fault
                self._buzzer.close()

    def _reporter(self) -> Any:
        found = self.found
        if found.gateway is None or found.uplink is None or found.buffer is None:
            missing = [
                name for name in ("gateway", "uplink", "buffer") if getattr(found, name) is None
            ]
            log.error(
                "the platform cannot be told: sections unusable",
                extra=fields(sections=",".join(missing)),
            )
            return None
        return self._report(found.gateway, found.uplink, found.buffer)

    async def _report(
        self, gateway: GatewaySection, uplink: UplinkSection, buffer: BufferConfig
    ) -> None:
        # The supervisor is not used: if the disk refuses, try again slowly, alarms need nothing
        # from this task.
        while self.outbox is None:
            try:
                self.outbox = await open_outbox(buffer)
            except Exception as exc:
                log.error("fault mode: outbox not open", extra=fields(error=repr(exc)))
                await asyncio.sleep(30)
        if self.rolled_back is not None:
            self.outbox.submit(
                "event", event_body("config-rolled-back", time.time(), **self.rolled_back)
            )
        body = self.status()
        body.pop("version")
        body.pop("since")
        self.outbox.submit(
            "event",
            event_body("config-invalid", time.time(), running="fault", **body),
        )
        outbox = self.outbox

        async def push_config(params: Mapping[str, Any]) -> dict[str, Any]:
            return await self._push(params, gateway, buffer, outbox)

        async def get_status(params: Mapping[str, Any]) -> dict[str, Any]:
            return self.status()

        async def ping(params: Mapping[str, Any]) -> dict[str, Any]:
            return {"pong": True}

        self.uplink = Uplink(
            uplink,
            gateway.id,
            self.outbox,
            version=__version__,
            boot_time=self._since,
            config_hash="",
            command_handlers={"ping": ping, "get-status": get_status, "push-config": push_config},
            # Signed commands only, as from a running gateway: the site file's own key folder.
            command_policy=self.found.commands,
        )
        await self.uplink.run()

    async def _push(
        self,
        params: Mapping[str, Any],
        gateway: GatewaySection,
        buffer: BufferConfig,
        outbox: Outbox,
    ) -> dict[str, Any]:
        """push-config in fault mode: the same checks and file handling as on a running
        gateway (edge/gateway.py), then fault mode ends for the push to be tried."""
        site = self.site
        if site is None:
            raise CommandError("this gateway was not started from a site file; cannot replace it")
        if self.pushed is not None:
            raise CommandError(
                "a pushed config is still being confirmed; push again once config-applied or "
                "config-rolled-back has been reported"
            )
        if current_key_class() != "engineering":
            # No running config bounds what this push changes: it changes everything.
            raise CommandError(
                "push-config in fault mode needs the engineering key, not the operations key: "
                "no running config bounds what it changes"
            )
        try:
            pushed = await asyncio.to_thread(
                check_pushed,
                params,
                _Identity(gateway, buffer),
                filename=site.name,
                known_models=self.known_models,
            )
        except PushRejected as exc:
            outbox.submit(
                "event",
                event_body(
                    "config-rejected",
                    time.time(),
                    command_id=current_command_id(),
                    errors=exc.errors[:MAX_REPORTED],
                    error_count=len(exc.errors),
                ),
            )
            raise
        digest = digest_of(pushed.text.encode())
        try:
            await asyncio.to_thread(
                write_site,
                site,
                pushed.text,
                pending={"config_hash": digest, "command_id": current_command_id()},
            )
        except OSError as exc:
            raise CommandError(f"cannot write the site file: {exc}") from None
        self.pushed = RestartRequest(current_command_id(), digest, "")
        log.warning("pushed config written; leaving fault mode", extra=fields(config_hash=digest))
        # The ack goes out on this connection first (as edge/gateway.py's push does).
        asyncio.get_running_loop().call_later(_ACK_GRACE, self._done.set)
        return {
            "config_hash": digest,
            "previous_hash": "",
            "restarting": True,
            "confirm_within_s": pushed.config.uplink.push_confirm_within,
        }
