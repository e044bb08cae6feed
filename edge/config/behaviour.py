"""What the site's objects do besides holding fields, in one copy for both of their forms.

The site model (edge/config/model.py, pydantic) and the running gateway's plain classes
(edge/config/plain.py) both take these mixins as bases, so ``for_device``, ``terms``,
``gauge_for`` and the checks that threshold tuning runs again exist once. Nothing here imports
pydantic. Each mixin reads the fields of the class it is mixed into; the ``TYPE_CHECKING``
blocks say which.

Two hooks tell the forms apart: ``_handed_over(key)`` is what the validating process worked
out for a plain object (None on a model: it works it out itself), and ``_sibling(name)`` is
another class of the same form (``CompositeTerm`` for a composite rule's bare ids).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self

from edge.config.duration import format_duration

if TYPE_CHECKING:
    from edge.storage_policy import Policy, Storage

__all__ = [
    "AbnormalChecks",
    "CompositeBehaviour",
    "DerivedPointBehaviour",
    "OverLimitChecks",
    "PointRuleBehaviour",
    "SiteBehaviour",
    "SuddenChangeChecks",
    "SustainedChecks",
    "UnderLimitChecks",
    "exactly_one",
    "storage_of",
]


class _Form:
    """The two hooks, as the model has them; a plain class overrides both."""

    __slots__ = ()

    def _handed_over(self, key: str) -> Any:
        return None

    def _sibling(self, name: str) -> Callable[..., Any]:
        # The model's module: this one is imported by it, never the other way round.
        sibling: Callable[..., Any] = getattr(sys.modules[type(self).__module__], name)
        return sibling


def exactly_one(holder: Any, names: tuple[str, ...]) -> None:
    """``ValueError`` unless exactly one of the fields ``names`` of ``holder`` is given."""
    given = [name for name in names if getattr(holder, name) is not None]
    if len(given) != 1:
        # A field named after a Python keyword (``for_``) is written without the underscore.
        names = tuple(name.rstrip("_") for name in names)
        given = [name.rstrip("_") for name in given]
        listed = ", ".join(names[:-1]) + f" or {names[-1]}"
        found = f" (found {', '.join(given)})" if given else ""
        raise ValueError(f"give exactly one of {listed}{found}")


class PointRuleBehaviour(_Form):
    """A rule that judges one point of each device it applies to."""

    __slots__ = ()
    if TYPE_CHECKING:
        overrides: dict[str, dict[str, Any]] | None

        def _validated_override(self, changes: dict[str, Any]) -> Self: ...

    def for_device(self, device: str) -> Self:
        """The rule as it applies to ``device``: its override, if any, laid over the rule."""
        changes = (self.overrides or {}).get(device)
        if not changes:
            return self
        variants: dict[str, Self] | None = self._handed_over("variants")
        if variants is not None:
            return variants[device]
        return self._validated_override(changes)

    def handover(self) -> dict[str, Any]:
        """For the validating process: the rule as it applies to each overridden device."""
        devices = self.overrides or {}
        return {"variants": {device: self.for_device(device) for device in devices}}


class OverLimitChecks(PointRuleBehaviour):
    __slots__ = ()
    if TYPE_CHECKING:
        raise_at: float
        clear_below: float
        escalate: Any

    def check(self) -> None:
        if self.clear_below > self.raise_at:
            raise ValueError("clear_below must not be above raise_at (hysteresis runs downwards)")
        if self.escalate is not None and self.escalate.at <= self.raise_at:
            raise ValueError("escalate.at must be above raise_at")


class UnderLimitChecks(PointRuleBehaviour):
    __slots__ = ()
    if TYPE_CHECKING:
        raise_at: float
        clear_above: float
        escalate: Any

    def check(self) -> None:
        if self.clear_above < self.raise_at:
            raise ValueError("clear_above must not be below raise_at (hysteresis runs upwards)")
        if self.escalate is not None and self.escalate.at >= self.raise_at:
            raise ValueError("escalate.at must be below raise_at")


class SuddenChangeChecks(PointRuleBehaviour):
    __slots__ = ()

    def check(self) -> None:
        exactly_one(self, ("change", "change_percent"))


class AbnormalChecks(PointRuleBehaviour):
    __slots__ = ()
    if TYPE_CHECKING:
        min_samples: int
        max_samples: int
        learning: float
        baseline: float
        seasonal: str

    def check(self) -> None:
        if self.min_samples > self.max_samples:
            raise ValueError("min_samples must not be above max_samples")
        if self.learning > self.baseline:
            raise ValueError("learning must not be longer than baseline")
        if self.seasonal == "daily":
            if self.learning < 86_400.0:
                raise ValueError(
                    "seasonal: daily learns each hour of the day from whole days: learning "
                    f"must be at least 1d (got {format_duration(self.learning) or '0s'})"
                )
            per_hour = self.max_samples // 24
            if per_hour < self.min_samples:
                raise ValueError(
                    f"seasonal: daily keeps max_samples / 24 = {per_hour} readings for each "
                    f"hour of the day, fewer than min_samples {self.min_samples}: raise "
                    f"max_samples to at least {24 * self.min_samples} or lower min_samples"
                )


class SustainedChecks(PointRuleBehaviour):
    __slots__ = ()
    if TYPE_CHECKING:
        for_: float | None

    def check(self) -> None:
        exactly_one(self, ("above", "below"))
        exactly_one(self, ("duration", "hours", "days", "months", "for_"))
        if self.for_ is not None and self.for_ % 86_400.0:
            raise ValueError(
                f"a rolling window is whole days, e.g. 60d (got {format_duration(self.for_)}); "
                "use hours: N for hours"
            )


class CompositeBehaviour(_Form):
    __slots__ = ()
    if TYPE_CHECKING:
        all: list[Any] | None
        any: list[Any] | None

    def check(self) -> None:
        exactly_one(self, ("all", "any"))

    def terms(self) -> list[Any]:
        raw = self.all if self.all is not None else (self.any or [])
        term = self._sibling("CompositeTerm")
        return [term(rule=t) if isinstance(t, str) else t for t in raw]


class DerivedPointBehaviour(_Form):
    __slots__ = ()
    if TYPE_CHECKING:
        gauge_length: float | None
        gauge_lengths: dict[str, float] | None

    def gauge_for(self, device: str) -> float | None:
        return (self.gauge_lengths or {}).get(device, self.gauge_length)


class SiteBehaviour(_Form):
    """The whole site: its storage policies, which the validating process resolves (they
    need the device models' defaults validated)."""

    __slots__ = ()
    if TYPE_CHECKING:

        def _resolved_policies(self) -> dict[tuple[str, str], Policy]: ...

    def storage_policies(self) -> dict[tuple[str, str], Policy]:
        from edge.storage_policy import Policy  # noqa: PLC0415

        handed = self._handed_over("storage_policies")
        if handed is None:
            return self._resolved_policies()
        kinds = [Policy(**fields) for fields in handed["policies"]]
        points = handed["points"]
        return {(points[i], points[i + 1]): kinds[points[i + 2]] for i in range(0, len(points), 3)}

    def handover(self) -> dict[str, Any]:
        """Each distinct policy once and the points as one flat list of (device, point,
        index of its policy): the running gateway holds this for the config's life, and a
        site's thousand points share a few policies (a list and a dict of fields per point
        took 0.45 MiB at 1,000 points)."""
        import dataclasses  # noqa: PLC0415

        # By repr, not by equality: a band of -0.0 is written as given, not as 0.0.
        index: dict[str, int] = {}
        policies: list[dict[str, Any]] = []
        points: list[Any] = []
        for (device, point), policy in self.storage_policies().items():
            number = index.setdefault(repr(policy), len(index))
            if number == len(policies):
                policies.append(dataclasses.asdict(policy))
            points += (device, point, number)
        return {"storage_policies": {"policies": policies, "points": points}}


def storage_of(config: Any) -> Storage:
    """The :class:`~edge.storage_policy.Storage` of a validated site config (either form)."""
    from edge.storage_policy import Storage  # noqa: PLC0415

    window = config.storage.alarm_window
    return Storage(config.storage_policies(), pre=window.pre, post=window.post)
