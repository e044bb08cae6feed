"""What the broker refuses, and when the log says so: the first refusal at once, then at most
once a period, on an injected clock."""

from __future__ import annotations

from edge.uplink.refusals import Refusal, Refusals

DENIED = Refusal("district/v1/gw/events", 0x87, "Not authorized")
QUOTA = Refusal("district/v1/gw/telemetry", 0x97, "Quota exceeded")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_refusal_is_reported_at_once_then_at_most_once_a_period() -> None:
    clock = Clock()
    refusals = Refusals(every=60.0, clock=clock)
    assert not refusals.active
    assert refusals.refused(DENIED) == 1
    clock.now += 1
    assert refusals.refused(DENIED) is None
    assert refusals.refused(QUOTA) is None
    clock.now += 59.5
    # The line now due covers the two held back and this one.
    assert refusals.refused(DENIED) == 3
    assert refusals.count == 4
    assert refusals.topics == [DENIED.topic, QUOTA.topic]
    assert refusals.last == DENIED
    assert DENIED.describe() == "Not authorized (0x87)"


def test_refused_until_every_refused_topic_has_a_message_accepted() -> None:
    clock = Clock()
    refusals = Refusals(every=60.0, clock=clock)
    refusals.refused(DENIED)
    refusals.refused(QUOTA)
    assert refusals.accepted("district/v1/gw/status") is False  # never refused
    assert refusals.accepted(DENIED.topic) is False  # telemetry still refused
    assert refusals.active
    assert refusals.accepted(QUOTA.topic) is True
    assert not refusals.active
    # A new refusal after the broker took everything again is said at once.
    clock.now += 1
    assert refusals.refused(DENIED) == 1
    assert refusals.count == 3
