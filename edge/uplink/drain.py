"""What the uplink sends next: the drain policy, pure code on times it is given.

The service (:mod:`.service`) peeks the outbox, tells :class:`DrainPolicy` what is waiting and
builds and publishes what it is told to; the policy reads no clock, no disk and no socket, so
its promises are tested without a broker (tests/unit/test_uplink_drain.py):

- **events first**: while an event waits, the next message is an event, whatever else waits;
- **live before backlog**: live telemetry that is due (a full batch, or its oldest reading
  ``batch_interval`` old) goes before any backlog message;
- **the backlog in the gaps**: within the ``backfill_*`` token buckets (never more than their
  rate, plus one message of debt), and leaving one window slot free for an alarm;
- **nothing starved**: once nothing new arrives, what waits goes: events at once, live within
  ``batch_interval``, the backlog as soon as the buckets allow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from edge.config.model import Uplink as UplinkConfig


__all__ = ["DrainPolicy", "Lane", "Send", "TokenBucket", "Wait", "Waiting"]

#: The three kinds of outbox message, in the order they are sent.
Lane = Literal["event", "live", "backfill"]

#: A bucket lets a message go once it holds more than this (it may then go into debt).
_SOME: Final = 1e-3


class TokenBucket:
    """``rate`` units a second on average, ``burst`` at most at once. A message may take the
    bucket into debt (one larger than the burst must still go some time); the next waits until
    the debt is paid back. Time is given (``now``, seconds on any steady clock)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"a token bucket needs rate > 0 and burst > 0 (got {rate}, {burst})")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until the bucket lets the next message go (0: now)."""
        # A clock never goes back, but a caller's might: never refill for negative time.
        elapsed = max(0.0, now - self._stamp)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._stamp = max(self._stamp, now)
        return 0.0 if self._tokens > 0 else (_SOME - self._tokens) / self.rate

    def take(self, amount: float, now: float) -> None:
        """Spend ``amount`` (into debt if need be)."""
        self.delay(now)  # refill up to now first
        self._tokens -= amount


@dataclass(frozen=True, slots=True)
class Waiting:
    """What the outbox holds for this session, as the service peeked it.

    ``live`` counts live telemetry rows not yet in a message (the service looks at most one
    batch); ``live_created`` is the wall time the oldest of them was stored. While ``events``
    is above 0 the service need not look at live telemetry: the decision does not depend on it.
    """

    events: int = 0
    live: int = 0
    live_created: float | None = None
    #: Backfill messages awaiting their PUBACK now.
    backfill_in_flight: int = 0


@dataclass(frozen=True, slots=True)
class Send:
    """Build and publish the next message of ``lane``."""

    lane: Lane


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to send now: wait for new rows, a PUBACK, or at most ``seconds`` (None: no
    time limit)."""

    seconds: float | None


Decision = Send | Wait


class DrainPolicy:
    """Which lane goes next, for one uplink (the rate buckets span its sessions).

    Call :meth:`new_session` when a connection comes up, :meth:`next` whenever a window slot
    is free, :meth:`backfill_sent` after publishing a backlog message and
    :meth:`backlog_finished` when the backlog it asked for turned out empty.
    """

    def __init__(
        self,
        *,
        window: int,
        batch_size: int,
        batch_interval: float,
        messages_per_s: float | None = None,
        bytes_per_s: float | None = None,
        now: float = 0.0,
    ) -> None:
        if window < 1 or batch_size < 1 or batch_interval < 0:
            raise ValueError(
                "a drain policy needs window >= 1, batch_size >= 1 and batch_interval >= 0 "
                f"(got {window}, {batch_size}, {batch_interval})"
            )
        self.window = window
        self.batch_size = batch_size
        self.batch_interval = batch_interval
        self._buckets = [
            TokenBucket(messages_per_s, 1.0, now) if messages_per_s is not None else None,
            TokenBucket(bytes_per_s, bytes_per_s, now) if bytes_per_s is not None else None,
        ]
        #: Whether live telemetry was looked at yet this session: what waited at its start
        #: waited through the outage and goes at once.
        self._live_started = False
        self._backlog_done = False

    @classmethod
    def of(cls, config: UplinkConfig, now: float) -> DrainPolicy:
        """The policy of an ``uplink:`` section of the site file."""
        return cls(
            window=config.inflight,
            batch_size=config.batch_size,
            batch_interval=config.batch_interval,
            messages_per_s=config.backfill_messages_per_s,
            bytes_per_s=None
            if config.backfill_bytes_per_s is None
            else float(config.backfill_bytes_per_s),
            now=now,
        )

    def new_session(self) -> None:
        """A connection came up: its backlog is still to send, its live data not looked at."""
        self._live_started = False
        self._backlog_done = False

    @property
    def backlog_done(self) -> bool:
        """Whether this session has sent the whole backlog it found."""
        return self._backlog_done

    def next(self, waiting: Waiting, *, now: float, wall: float) -> Decision:
        """What to send now that a window slot is free. ``now``: a steady clock (the buckets);
        ``wall``: the wall clock, in which ``live_created`` is (a clock stepped backwards sends
        live data at once)."""
        if waiting.events > 0:
            return Send("event")
        wait: float | None = None
        if waiting.live <= 0:
            self._live_started = True
        else:
            created = wall if waiting.live_created is None else waiting.live_created
            age = wall - created
            fill_wait = self.batch_interval - age
            # Rows waiting at the session's start go at once: they waited through the outage.
            if (
                not self._live_started
                or waiting.live >= self.batch_size
                or age < 0
                or fill_wait <= 0
            ):
                self._live_started = True
                return Send("live")
            # Let the batch fill; the backlog may use the time meanwhile.
            wait = fill_wait
        if self._backlog_done:
            return Wait(wait)
        # One slot stays free for an alarm raised meanwhile: it must not wait for a backfill
        # PUBACK (a round trip of a second or more over 4G). A backfill PUBACK wakes the loop.
        if 1 < self.window <= waiting.backfill_in_flight + 1:
            return Wait(wait)
        hold = max((b.delay(now) for b in self._buckets if b is not None), default=0.0)
        if hold > 0:
            return Wait(hold if wait is None else min(wait, hold))
        return Send("backfill")

    def backfill_sent(self, payload_bytes: int, now: float) -> None:
        """A backlog message of ``payload_bytes`` went: charge the buckets."""
        messages, volume = self._buckets
        if messages is not None:
            messages.take(1, now)
        if volume is not None:
            volume.take(payload_bytes, now)

    def backlog_finished(self) -> None:
        """The backlog this session found is all sent (or claimed by messages in flight)."""
        self._backlog_done = True
