"""The rules' memory across restarts: windows, baselines, active alarms and remote thresholds.

A restart must not forget a window half counted or an alarm sounding, so the gateway keeps the
rule engine's state in a store (in the field the outbox's key-value table, in tests and
``edge replay`` a memory store) and restores it before it polls. :class:`RuleStateKeeper`
decides when: restore once, before any save (a save before the restore would overwrite the
stored windows with young ones); save at once after a transition, else every
:data:`STATE_SAVE_INTERVAL`; the thresholds set by command (overrides) with the site file's hash,
so a different site file starts from its own thresholds.

What a restore brings back is the gateway's to sound and report (the alarm path); this module
only reads and writes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from edge.clock import Clock
from edge.log import fields
from edge.rules import (
    STATE_SCHEMA,
    AlarmBook,
    RuleEngine,
    StateStore,
    Transition,
    load_rule_state,
    save_rule_state,
)
from edge.rules.state import StoredValue
from edge.rules.tuning import Override

__all__ = [
    "OVERRIDES_KEY",
    "STATE_RESTORE_TIMEOUT",
    "STATE_SAVE_INTERVAL",
    "STATE_SAVE_TIMEOUT",
    "RuleStateKeeper",
]

# The gateway's logger, as before this module was split out of it: the journal reads the same.
log = logging.getLogger("edge.gateway")

#: How often changed rule state is written to the store. A restart loses at most this much
#: of a window's readings (never counts one twice); transitions are saved at once.
STATE_SAVE_INTERVAL: Final = 30.0
#: How long the start waits for the buffer to restore rule state before polling anyway.
STATE_RESTORE_TIMEOUT: Final = 3.0
#: Shutdown budget for the last state save.
STATE_SAVE_TIMEOUT: Final = 1.0
#: Where the thresholds set at run time are kept in the state store.
OVERRIDES_KEY: Final = "overrides/thresholds"


class RuleStateKeeper:
    """Restores and saves one gateway's rule state.

    ``store()`` is where the state lives now: the outbox once it is open (None before), or a
    store given from the start (``fixed``: tests, replay), which needs no waiting for
    ``ready``, the event set when the outbox opens."""

    def __init__(
        self,
        rules: RuleEngine,
        alarms: AlarmBook,
        clock: Clock,
        *,
        store: Callable[[], StateStore | None],
        ready: asyncio.Event,
        fixed: bool,
        config_digest: str,
    ) -> None:
        self._rules = rules
        self._alarms = alarms
        self._clock = clock
        self.store = store
        self._ready = ready
        self._fixed = fixed
        self._config_digest = config_digest
        #: Whether the stored state was read (or found unreadable): saves may start.
        self.restored = False
        #: Whether a transition happened since the last save: the next save is now.
        self.due = False
        self._last_save = clock.monotonic()

    async def restore(self, *, wait: bool = True) -> list[Transition] | None:
        """Read the stored state into the rules and the alarm book; the transitions of stored
        alarms that no longer apply (dropped), or None when nothing was restored.

        With ``wait`` (the start), waits for the outbox at most :data:`STATE_RESTORE_TIMEOUT`:
        a buffer that opens later has its state restored then (by the rules task, without
        ``wait``), laid over the few seconds already judged, so a slow disk costs seconds of a
        window, never the window."""
        if wait and not self._fixed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATE_RESTORE_TIMEOUT):
                    await self._ready.wait()
        store = self.store()
        if store is None:
            if wait:
                log.warning("rule state not restored yet: the buffer is not open")
            return None
        self.restored = True
        try:
            dropped = await load_rule_state(store, self._rules, self._alarms)
        except Exception as exc:  # a damaged store must not stop the alarms
            log.error("rule state not restored", extra=fields(error=repr(exc)))
            return None
        try:
            await self._restore_overrides(store)
        except Exception as exc:  # the site file's thresholds are a safe place to be
            log.error("threshold overrides not restored", extra=fields(error=repr(exc)))
        log.info(
            "rule state restored",
            extra=fields(active_alarms=len(self._alarms.alarms), dropped=len(dropped)),
        )
        return dropped

    async def _restore_overrides(self, store: StateStore) -> None:
        stored = {e.key: e for e in await store.state_items("overrides/")}.get(OVERRIDES_KEY)
        value = None if stored is None else stored.value
        if not isinstance(value, dict) or value.get("config_hash") != self._config_digest:
            return
        overrides = []
        for item in value.get("overrides", []):
            try:
                overrides.append(Override.load(item))
            except ValueError as exc:
                log.error("threshold override dropped", extra=fields(error=str(exc)))
        for problem in self._rules.load_overrides(overrides):
            log.error("threshold override dropped", extra=fields(error=problem))
        if overrides:
            log.warning(
                "threshold overrides restored", extra=fields(count=len(self._rules.overrides))
            )

    async def save(self, *, budget: float | None = None) -> None:
        """Write the rules' and the alarm book's state (errors are logged; the next save
        retries)."""
        store = self.store()
        if store is None or not self.restored:
            # Saving before restoring would overwrite the stored windows with young ones.
            return
        try:
            async with asyncio.timeout(budget):
                await save_rule_state(store, self._rules, self._alarms, self._clock.monotonic())
        except Exception as exc:  # the next save retries; alarms go on
            log.error("rule state not saved", extra=fields(error=repr(exc)))

    async def save_if_due(self) -> None:
        """Save now if a transition happened or :data:`STATE_SAVE_INTERVAL` has passed."""
        now = self._clock.monotonic()
        if self.due or now - self._last_save >= STATE_SAVE_INTERVAL:
            self.due = False
            self._last_save = now
            await self.save()

    async def save_overrides(self) -> None:
        """Store the overrides, tagged with the site file's hash: a different site file (a
        push, or an installer's edit) starts from its own thresholds."""
        await self.put(
            OVERRIDES_KEY,
            {
                "config_hash": self._config_digest,
                "overrides": [o.dump() for o in self._rules.overrides],
            },
            what="threshold overrides",
        )

    async def put(self, key: str, value: Any, *, what: str) -> None:
        """Store ``value`` under ``key`` once the state is restored; ``what`` names it in the
        error logged when the store refuses."""
        store = self.store()
        if store is None or not self.restored:
            return
        try:
            await store.state_put(key, value, schema=STATE_SCHEMA)
        except Exception as exc:
            log.error(f"{what} not saved", extra=fields(error=repr(exc)))

    async def items(self, prefix: str) -> list[StoredValue]:
        """The stored values under ``prefix`` (none before the store is there)."""
        store = self.store()
        return [] if store is None else list(await store.state_items(prefix))
