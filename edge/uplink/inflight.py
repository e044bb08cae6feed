"""The uplink's messages in flight: built and not yet acknowledged, and the rows they claim.

Pure bookkeeping (no I/O, no clock). A message is kept, exact, from the moment it is built
until its PUBACK accepted it, across lost connections: what one connection left unacknowledged
goes first, unchanged, on the next. Its rows stay claimed until they are deleted, so that no
session reads them into a second message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

from buffer import Record
from edge.uplink.messages import Message

__all__ = ["InFlight"]

log = logging.getLogger("edge.uplink")

#: Connections in a row that must end with the same message unacknowledged before the uplink
#: takes it for too large for the broker, and the smallest payload limit it will learn.
REFUSED_AFTER: Final = 3
SMALLEST_LIMIT: Final = 1024


class InFlight:
    """Messages built and not yet acknowledged, oldest first. Never more than the window: a
    message is built only when a window slot is free."""

    def __init__(self) -> None:
        self._messages: dict[int, Message] = {}
        self._next_key = 0
        #: Seqs of rows in a message built but not yet deleted.
        self._claimed: set[int] = set()
        #: Keys of the messages resent at the start of the current session.
        self._resent: set[int] = set()
        #: The oldest unacknowledged message and how many sessions in a row ended with it
        #: resent and still unacknowledged.
        self._stuck: tuple[int, int] = (-1, 0)
        #: Backfill messages among them (the drain policy keeps a slot free of these).
        self.backfill = 0
        #: A payload limit learnt from a broker that drops larger messages (MQTT 3.1.1 has no
        #: way to announce one).
        self.learnt_limit: int | None = None

    def __len__(self) -> int:
        return len(self._messages)

    def payloads(self) -> list[bytes]:
        """The payloads, oldest first: exactly what goes again first after a reconnect."""
        return [message.payload for message in self._messages.values()]

    def add(self, message: Message) -> None:
        """A message was built: keep it and claim its rows."""
        self._messages[self._next_key] = message
        self._next_key += 1
        self._claimed.update(message.seqs)
        if message.lane == "backfill":
            self.backfill += 1

    def resend(self) -> list[Message]:
        """A connection came up: what the last one left unacknowledged, oldest first, to be
        sent again unchanged."""
        self._resent = set(self._messages)
        return list(self._messages.values())

    def acknowledged(self, message: Message) -> None:
        """Its PUBACK accepted it; its rows stay claimed until :meth:`deleted`."""
        for key, kept in self._messages.items():
            if kept is message:
                self._drop(key)
                return

    def deleted(self, seqs: Sequence[int]) -> None:
        """These rows left the outbox (or will be read again after a restart)."""
        self._claimed.difference_update(seqs)

    def claimed(self, seq: int) -> bool:
        return seq in self._claimed

    def unclaimed_run(self, rows: list[Record]) -> list[Record] | None:
        """The first run of ``rows`` (oldest first) that no message claims; None when every one
        is claimed (only a previous session leaves claimed rows behind)."""
        if not rows or not self._claimed:
            return rows
        run: list[Record] = []
        for row in rows:
            if row.seq in self._claimed:
                if run:
                    # A message carries a run of rows: stop at the first claimed one.
                    break
                continue
            run.append(row)
        return run or None

    def session_ended(self, refused_topics: Sequence[str]) -> None:
        """Look at the oldest message left unacknowledged by a session that just ended.

        One the broker never acknowledges over several connections, each of which it dropped,
        is most likely over the broker's packet limit: Mosquitto closes the connection of a
        client that sends one (MQTT 3.1.1 cannot tell us the limit). Resent unchanged it would
        fail forever, so it is taken apart: its rows go again in smaller messages (the
        platform never had it: no duplicate under another id), and :attr:`learnt_limit` says
        how small.
        """
        # Only what this session sent again counts (one that failed before draining resent none).
        resent, self._resent = self._resent, set()
        if not self._messages:
            self._stuck = (-1, 0)
            return
        key, message = next(iter(self._messages.items()))
        # A message the broker answered with a refusing PUBACK was not too large: it was read.
        if key not in resent or message.topic in refused_topics:
            self._stuck = (-1, 0)
            return
        count = self._stuck[1] + 1 if self._stuck[0] == key else 1
        self._stuck = (key, count)
        if count < REFUSED_AFTER or len(message.payload) <= SMALLEST_LIMIT:
            return
        limit = max(SMALLEST_LIMIT, len(message.payload) // 2)
        log.error(
            "uplink: a %d-byte message (rows %d-%d) was not acknowledged over %d connections, "
            "each dropped: the broker seems to refuse messages this large; sending its rows "
            "again in messages up to %d bytes (lower uplink.max_message_bytes to match the "
            "broker)",
            len(message.payload),
            message.seqs[0],
            message.seqs[-1],
            count,
            limit,
        )
        # The others over the new limit as well: they stood behind it on the same connection,
        # so the broker never took them either.
        for other in [k for k, m in self._messages.items() if len(m.payload) > limit]:
            self._claimed.difference_update(self._messages[other].seqs)
            self._drop(other)
        self.learnt_limit = limit
        self._stuck = (-1, 0)

    def _drop(self, key: int) -> None:
        if self._messages.pop(key).lane == "backfill":
            self.backfill -= 1
