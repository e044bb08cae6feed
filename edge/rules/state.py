"""Where rule state lives between restarts: a key-value store of versioned JSON values.

The engine's windows, baselines and active alarms are plain JSON (see
:meth:`RuleEngine.dump_state`). :class:`StateStore` is the small interface the gateway needs
from a store; the buffer's durable key-value table (``buffer/state.py``, exposed by the outbox
as ``state_items`` / ``state_put``) is the one used in the field, :class:`MemoryStateStore`
the one used by tests and ``edge replay``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from edge.rules.alarms import AlarmBook
from edge.rules.engine import ACTIVE_KEY, STATE_PREFIX, STATE_SCHEMA, RuleEngine
from edge.rules.types import Transition

__all__ = [
    "MemoryStateStore",
    "StateStore",
    "StoredValue",
    "load_rule_state",
    "save_rule_state",
]

#: The key of the alarm book (which alarms are silenced); the engine owns the rest of the prefix.
SILENCE_KEY = "alarms/silenced"


class StoredValue(Protocol):
    """One stored value: ``schema`` is the writer's version of the value's layout."""

    @property
    def key(self) -> str: ...

    @property
    def value(self) -> Any: ...

    @property
    def schema(self) -> int: ...


@runtime_checkable
class StateStore(Protocol):
    """Versioned JSON values by key (``buffer.state.StateEntry`` is a :class:`StoredValue`)."""

    async def state_items(self, prefix: str) -> Sequence[StoredValue]: ...

    async def state_put(self, key: str, value: Any, *, schema: int) -> Any: ...


@dataclass(frozen=True)
class _Entry:
    key: str
    value: Any
    schema: int


class MemoryStateStore:
    """A :class:`StateStore` in memory (tests, replay); ``writes`` counts the puts."""

    def __init__(self) -> None:
        self.values: dict[str, _Entry] = {}
        self.writes = 0

    async def state_items(self, prefix: str) -> list[_Entry]:
        return [entry for key, entry in sorted(self.values.items()) if key.startswith(prefix)]

    async def state_put(self, key: str, value: Any, *, schema: int) -> int:
        self.writes += 1
        self.values[key] = _Entry(key, value, schema)
        return self.writes


async def load_rule_state(
    store: StateStore, engine: RuleEngine, book: AlarmBook
) -> list[Transition]:
    """Resume the engine and the alarm book from ``store``. Returns ``cleared`` transitions of
    restored alarms whose rule was removed or changed while the gateway was down."""
    values: dict[str, tuple[int, Any]] = {
        entry.key: (entry.schema, entry.value) for entry in await store.state_items(STATE_PREFIX)
    }
    silenced: Mapping[str, Any] = {}
    for entry in await store.state_items("alarms/"):
        if entry.key == ACTIVE_KEY:
            values[entry.key] = (entry.schema, entry.value)
        elif entry.key == SILENCE_KEY and entry.schema == STATE_SCHEMA:
            silenced = entry.value if isinstance(entry.value, dict) else {}
    dropped = engine.load_state(values)
    book.load(dict(silenced), engine.active)
    return dropped


async def save_rule_state(
    store: StateStore,
    engine: RuleEngine,
    book: AlarmBook,
    now: float | None = None,
    *,
    everything: bool = False,
) -> int:
    """Write what changed since the last save (see :meth:`RuleEngine.dump_state` for ``now``);
    returns the number of values written."""
    values = engine.dump_state(now, everything=everything)
    silenced = book.dump()
    if everything or silenced != book.saved:
        values[SILENCE_KEY] = silenced
        book.saved = silenced
    for key, value in values.items():
        await store.state_put(key, value, schema=STATE_SCHEMA)
    return len(values)
