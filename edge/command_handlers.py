"""What the gateway does for each downlink command: the handlers behind :data:`COMMANDS`.

edge/commands.py checks a command (signature, schema, age, rate, repeats) and answers it; the
handler here carries it out on the running gateway and says what the ack's ``data`` carries,
or raises :class:`~edge.commands.CommandError` having changed nothing. What a command may
change is bounded by the site file (edge/command_bounds.py); docs/commands.md is the
platform's view of each one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from drivers.catalog import family_of
from drivers.modbus import known_models, load_model
from edge import __version__, command_bounds, reload
from edge.atomic import digest_of
from edge.buses import modbus_devices
from edge.commands import CommandError, Handler, current_command_id, current_key_class
from edge.config.thresholds import command_threshold
from edge.contract import EventKind
from edge.health import Watched, gateway_health
from edge.log import fields
from edge.rule_state import RuleStateKeeper
from edge.storm import plan_storm

if TYPE_CHECKING:
    from edge.config.model import SiteConfig

__all__ = ["MAX_REPORTED_ERRORS", "PUSH_ACK_GRACE", "Commanded", "command_handlers"]

# The gateway's logger, as before this module was split out of it: the journal reads the same.
log = logging.getLogger("edge.gateway")

#: A pushed config is applied this long after its ack was handed to the uplink, so that the
#: ack goes out on the connection it came in on before the uplink stops.
PUSH_ACK_GRACE: Final = 0.5
#: A refused push's event lists at most this many errors (a file of garbage has thousands).
MAX_REPORTED_ERRORS: Final = 50


class Commanded(Watched, Protocol):
    """What the commands act on (:class:`edge.gateway.Gateway` has it)."""

    @property
    def config(self) -> SiteConfig: ...
    @property
    def config_digest(self) -> str: ...
    @property
    def config_path(self) -> str | None: ...
    @property
    def rule_state(self) -> RuleStateKeeper: ...
    @property
    def site_unusable(self) -> bool: ...
    @property
    def confirming(self) -> bool: ...
    @property
    def restart(self) -> reload.RestartRequest | None: ...

    def silence(self, source: str = "remote", alarm: tuple[str, str] | None = None) -> int: ...
    def report(self, kind: EventKind, **body: Any) -> None: ...
    async def restore_rule_state(self, *, wait: bool = True) -> None: ...
    def can_restart(self) -> bool: ...
    def restart_after(self, request: reload.RestartRequest, delay: float) -> None: ...


def command_handlers(gateway: Commanded) -> dict[str, Handler]:
    """The handler of each command in :data:`edge.commands.COMMANDS`, acting on ``gateway``."""
    on = _Handlers(gateway)
    handlers: dict[str, Handler] = {
        "ping": on.ping,
        "get-status": on.get_status,
        "silence": on.silence,
        "set-threshold": on.set_threshold,
        "storm-mode": on.storm_mode,
        "push-config": on.push_config,
    }
    return handlers


class _Handlers:
    def __init__(self, gateway: Commanded) -> None:
        self.gateway = gateway

    async def ping(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"pong": True}

    async def get_status(self, params: Mapping[str, Any]) -> dict[str, Any]:
        gateway = self.gateway
        health = await gateway_health(gateway)
        depth = health["buffer_streams"]
        return {
            "version": __version__,
            "config_hash": gateway.config_digest,
            "uptime_s": round(time.time() - gateway.boot_time, 3),
            "buzzer": "on" if gateway.annunciator.sounding else "off",
            "active_alarms": [
                {"rule": rule, "device": device, "silenced": alarm.silenced}
                for (rule, device), alarm in sorted(gateway.alarms.alarms.items())
            ],
            "outbox": {"events": depth.get("event", 0), "telemetry": depth.get("telemetry", 0)},
            "uplink": gateway.uplink.state if gateway.uplink is not None else "waiting",
            "oldest_unsent_age_s": health["oldest_unsent_age_s"],
            "buses": health["buses"],
            "storm": health["storm"],
            "threshold_overrides": health["threshold_overrides"],
        }

    async def silence(self, params: Mapping[str, Any]) -> dict[str, Any]:
        key = (str(params["rule"]), str(params["device"]))
        alarm = self.gateway.alarms.alarms.get(key)
        if alarm is None:
            raise CommandError(f"no active alarm of rule {key[0]!r} on device {key[1]!r}")
        if alarm.silenced and key not in self.gateway.rules.latched:
            return {"silenced": 0, "already": True}
        return {"silenced": self.gateway.silence("remote", key)}

    async def set_threshold(self, params: Mapping[str, Any]) -> dict[str, Any]:
        gateway = self.gateway
        if not gateway.rule_state.restored:
            # Overrides are stored next to the rule state; restore first so the stored ones
            # are not overwritten by this one alone.
            await gateway.restore_rule_state(wait=False)
        device = params.get("device")
        # "0.5 A" on a rule in mA is 500: a unit is converted or refused, never dropped.
        rule = next((r for r in gateway.config.rules if r.id == params["rule"]), None)
        try:
            value = command_threshold(
                params["threshold"], params.get("field"), getattr(rule, "unit", None)
            )
        except ValueError as exc:
            raise CommandError(f"threshold: {exc}") from None
        params = {**params, "threshold": value}
        refusal = self._threshold_refusal(params)
        if refusal is not None:
            raise CommandError(refusal)
        try:
            change = gateway.rules.set_threshold(
                str(params["rule"]),
                params["threshold"],
                field=params.get("field"),
                device=device,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        devices = {d: {"old": change.before[d], "new": change.after[d]} for d in change.after}
        gateway.report(
            "threshold-changed",
            rule=change.rule,
            field=change.field,
            old=change.old,
            new=change.value,
            device=device,
            devices=devices,
            command_id=current_command_id(),
        )
        log.warning(
            "threshold-changed",
            extra=fields(rule=change.rule, field=change.field, old=change.old, new=change.value),
        )
        await gateway.rule_state.save_overrides()
        return {
            "rule": change.rule,
            "field": change.field,
            "old": change.old,
            "new": change.value,
            "devices": devices,
            "overrides": [o.dump() for o in gateway.rules.overrides],
        }

    def _threshold_refusal(self, params: Mapping[str, Any]) -> str | None:
        """Why a set-threshold is beyond the site file's bounds (edge/command_bounds.py)."""
        config = self.gateway.config
        rule = next((r for r in config.rules if r.id == params["rule"]), None)
        if rule is None:
            return None
        device = params.get("device")
        devices = [str(device)] if device is not None else self.gateway.rules.devices_of(rule)
        models = {d.id: d.model for d in config.devices}

        def point_range(device_id: str, point: str) -> command_bounds.PointRange | None:
            model = models.get(device_id)
            if model is None or family_of(model) != "modbus":
                return None  # UART and GPIO sensors, derived points: the factor bounds them
            found = load_model(model)
            if not found.has_point(point):
                return None
            spec = found.point(point)
            return command_bounds.reportable_range(spec.type, spec.scale)

        return command_bounds.threshold_refusal(
            config,
            str(params["rule"]),
            params.get("field"),
            params["threshold"],
            devices,
            point_range=point_range,
        )

    async def storm_mode(self, params: Mapping[str, Any]) -> dict[str, Any]:
        gateway = self.gateway
        if not gateway.rule_state.restored:
            # The stored storm state is read at restore; a storm started before that would be
            # taken for one a restart ended.
            await gateway.restore_rule_state(wait=False)
        if not params["on"]:
            if gateway.storm.active is None:
                return {"active": False, "already": True}
            await gateway.storm.end("command", current_command_id())
            return {"active": False}
        plan = plan_storm(params, gateway.config.devices, modbus_devices(gateway.buses))
        return await gateway.storm.start(plan, current_command_id())

    async def push_config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        gateway = self.gateway
        if gateway.config_path is None or not gateway.can_restart():
            raise CommandError("this gateway was not started from a site file; cannot replace it")
        if gateway.restart is not None or gateway.confirming:
            # One push at a time: a second one would replace files the first still needs to
            # roll back.
            raise CommandError(
                "a pushed config is still being confirmed; push again once config-applied or "
                "config-rolled-back has been reported"
            )
        path = Path(gateway.config_path)
        try:
            # In a thread: checking a large site file takes a while, and the loop judges
            # readings meanwhile.
            pushed = await asyncio.to_thread(
                reload.check_pushed,
                params,
                gateway.config,
                filename=path.name,
                known_models=known_models(),
            )
        except reload.PushRejected as exc:
            gateway.report(
                "config-rejected",
                command_id=current_command_id(),
                errors=exc.errors[:MAX_REPORTED_ERRORS],
                error_count=len(exc.errors),
            )
            log.error("config-rejected", extra=fields(errors=len(exc.errors)))
            raise
        needs_engineering = command_bounds.engineering_reasons(gateway.config, pushed.config)
        if needs_engineering and current_key_class() != "engineering":
            raise CommandError(
                "push-config needs the engineering key, not the operations key: "
                + "; ".join(needs_engineering)
            )
        digest = digest_of(pushed.text.encode())
        if digest == gateway.config_digest and not gateway.site_unusable:
            # The platform repeating a push that was applied (its first ack lost in the
            # restart): nothing to do, and no second restart.
            return {"config_hash": digest, "unchanged": True}
        try:
            # In a thread: an fsync on an SD card can take long, and the alarms go on meanwhile.
            await asyncio.to_thread(
                reload.write_site,
                path,
                pushed.text,
                pending={"config_hash": digest, "command_id": current_command_id()},
            )
        except OSError as exc:
            raise CommandError(f"cannot write the site file: {exc}") from None
        gateway.restart_after(
            reload.RestartRequest(current_command_id(), digest, gateway.config_digest),
            PUSH_ACK_GRACE,
        )
        log.warning("pushed config written; restarting", extra=fields(config_hash=digest))
        return {
            "config_hash": digest,
            "previous_hash": gateway.config_digest,
            "restarting": True,
            "confirm_within_s": gateway.config.uplink.push_confirm_within,
        }
