"""The last good site config: what ``edge run`` falls back on when the site file is unusable.

A config is *good* once a gateway running it has reached the platform: its uplink is online
and the broker echoed the gateway's own status back (for a pushed config, also its
``config-applied`` event acknowledged; edge/site_runner.py). The runner then keeps a copy of the
file, with its hash, next to the site file as ``<name>.last-good``::

    {"config_hash": "3f2a...", "saved": "2026-05-01T08:30:00.125Z", "site_yaml": "gateway: ..."}

Written atomically (temporary file, fsync, rename, fsync of the folder), so a power cut
leaves the old copy or the new one. At start, a site file that cannot be read or does not
validate makes ``edge run`` run this copy instead; a copy that is cut short, edited, or whose
hash does not match its text is refused (:class:`LastGoodUnusable` says which), and the
gateway runs in fault mode (edge/fault.py) rather than guess.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from edge.atomic import atomic_write, digest_of
from edge.config.compiled import parse_site
from edge.config.issues import ConfigError
from edge.contract import iso_utc

if TYPE_CHECKING:
    from edge.config.model import SiteConfig

__all__ = ["LAST_GOOD_SUFFIX", "LastGood", "LastGoodUnusable", "load", "path_for", "save", "saved"]

#: Next to the site file: the copy of the last config known to reach the platform.
LAST_GOOD_SUFFIX: Final = ".last-good"


class LastGoodUnusable(Exception):
    """There is no last good config to run; the message says exactly why."""


@dataclass(frozen=True)
class LastGood:
    """A last good config that passed every check: its model, hash, text and when it was kept."""

    config: SiteConfig
    digest: str
    text: str
    saved: str
    path: Path


def path_for(site: Path) -> Path:
    return site.with_name(site.name + LAST_GOOD_SUFFIX)


def saved(site: Path) -> str | None:
    """The hash of the kept copy, without checking it (None when there is none)."""
    try:
        record = json.loads(path_for(site).read_bytes())
    except (OSError, ValueError):
        return None
    digest = record.get("config_hash") if isinstance(record, dict) else None
    return digest if isinstance(digest, str) else None


def save(site: Path, data: bytes) -> str:
    """Keep ``data`` (a site file's bytes, already validated and running) as the last good
    config of ``site``; returns its hash."""
    digest = digest_of(data)
    record = {
        "config_hash": digest,
        "saved": iso_utc(time.time()),
        "site_yaml": data.decode("utf-8"),
    }
    atomic_write(path_for(site), json.dumps(record, ensure_ascii=False).encode(), mode=0o600)
    return digest


def load(site: Path, *, known_models: Collection[str] | None = None) -> LastGood:
    """The last good config of ``site``, checked: its hash matches its text and the text
    validates as a site file. Raises :class:`LastGoodUnusable`."""
    path = path_for(site)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LastGoodUnusable(
            f"no last good config kept ({path} does not exist: it is written once a config "
            "has reached the platform)"
        ) from None
    except OSError as exc:
        raise LastGoodUnusable(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise LastGoodUnusable(f"{path} is corrupt (not JSON: {exc})") from None
    if not isinstance(record, dict):
        raise LastGoodUnusable(f"{path} is corrupt (not a JSON object)")
    text, digest = record.get("site_yaml"), record.get("config_hash")
    if not isinstance(text, str) or not isinstance(digest, str):
        raise LastGoodUnusable(f"{path} is corrupt (site_yaml or config_hash missing)")
    actual = digest_of(text.encode("utf-8"))
    if actual != digest:
        raise LastGoodUnusable(
            f"{path} does not match its hash (says {digest}, the text hashes to {actual}): "
            "it was damaged or edited"
        )
    try:
        config = parse_site(text, str(path), known_models=known_models)
    except ConfigError as exc:
        first = exc.issues[0] if exc.issues else "invalid"
        raise LastGoodUnusable(f"{path} no longer validates: {first}") from None
    return LastGood(config, digest, text, str(record.get("saved", "")), path)
