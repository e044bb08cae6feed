"""The store-and-forward buffer: a SQLite outbox with one writer.

Imports nothing from ``edge``, and from ``drivers`` only the standard-library-only retry
schedule (``drivers.backoff``): it stores events as JSON and readings as
``(series, ts, value)`` rows and knows nothing of what they mean.
"""

from buffer.loss import MEMORY_LIMIT, LossTally
from buffer.outbox import (
    SCHEMA_VERSION,
    STREAMS,
    CapacityPolicy,
    CommitListener,
    Outbox,
    OutboxClosed,
    OutboxCorrupt,
    OutboxError,
    OutboxUnavailable,
    OutboxUnwritable,
    Record,
    ResetInfo,
    Stream,
)
from buffer.state import StateConflict, StateEntry

__all__ = [
    "MEMORY_LIMIT",
    "SCHEMA_VERSION",
    "STREAMS",
    "CapacityPolicy",
    "CommitListener",
    "LossTally",
    "Outbox",
    "OutboxClosed",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxUnavailable",
    "OutboxUnwritable",
    "Record",
    "ResetInfo",
    "StateConflict",
    "StateEntry",
    "Stream",
]
