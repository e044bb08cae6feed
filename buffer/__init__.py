"""The store-and-forward buffer: a SQLite outbox with one writer.

Imports nothing from ``edge`` or ``drivers``: it stores JSON bodies and knows nothing of what
they mean.
"""

from buffer.outbox import (
    SCHEMA_VERSION,
    STREAMS,
    CommitListener,
    Outbox,
    OutboxClosed,
    OutboxCorrupt,
    OutboxError,
    OutboxUnavailable,
    Record,
    Stream,
)

__all__ = [
    "SCHEMA_VERSION",
    "STREAMS",
    "CommitListener",
    "Outbox",
    "OutboxClosed",
    "OutboxCorrupt",
    "OutboxError",
    "OutboxUnavailable",
    "Record",
    "Stream",
]
