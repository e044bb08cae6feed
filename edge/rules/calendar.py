"""Calendar buckets in the site's time zone: hours, days and the months they belong to.

"Two consecutive calendar months" means the months of the site's own calendar, so bucket
boundaries are local midnights (23 or 25 hours apart on daylight-saving days), not multiples
of 86 400 seconds since the epoch.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

__all__ = ["BucketUnit", "bucket_of", "days_in_month", "month_of"]

BucketUnit = Literal["hour", "day"]


def bucket_of(ts: float, unit: BucketUnit, zone: ZoneInfo) -> tuple[float, float]:
    """``(start, end)`` in POSIX seconds of the local hour or day that contains ``ts``."""
    local = datetime.fromtimestamp(ts, zone)
    if unit == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
        # An hour is 3600 s whatever the zone does; fold keeps the repeated hour distinct.
        begin = start.timestamp()
        return begin, begin + 3600.0
    day = local.date()
    begin_dt = datetime(day.year, day.month, day.day, tzinfo=zone)
    following = day + timedelta(days=1)
    end_dt = datetime(following.year, following.month, following.day, tzinfo=zone)
    return begin_dt.timestamp(), end_dt.timestamp()


def month_of(ts: float, zone: ZoneInfo) -> tuple[int, int]:
    """``(year, month)`` of the local date at ``ts``."""
    local = datetime.fromtimestamp(ts, zone)
    return local.year, local.month


def days_in_month(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]
