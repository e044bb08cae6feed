"""Files and devices a site file names, which must exist on the gateway: serial ports, the
uplink's TLS files, the command keys' folder.

A file missing where ``edge check-config`` runs may be made later on the Pi (an adapter not
plugged in yet, certificates provisioned at first boot), so check-config warns; ``edge
doctor``, which runs on the gateway itself, fails. One list serves both. Relative paths are
taken from the working directory, as the gateway takes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from edge.config.model import ModbusRtuBus, SerialBus, SiteConfig

__all__ = ["MissingFile", "missing_file_warnings", "missing_files"]

Place = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class MissingFile:
    """One named path that is absent or cannot be read, and what it is for."""

    place: Place
    path: str
    #: What the path is for, with ``{path}`` where the path goes.
    what: str
    reason: str
    hint: str

    def message(self) -> str:
        return f"{self.what.format(path=self.path)} {self.reason}: {self.hint}"


def _state(path: str, *, folder: bool = False) -> str | None:
    """Why ``path`` cannot serve, None when it can."""
    if not os.path.lexists(path):
        return "does not exist"
    if not os.path.exists(path):
        return "is a link to nothing"
    if folder and not os.path.isdir(path):
        return "is not a folder"
    if not folder and os.path.isdir(path):
        return "is a folder, not a file"
    if not os.access(path, os.R_OK | (os.X_OK if folder else 0)):
        return "cannot be read by this user"
    return None


def _named(config: SiteConfig) -> Iterable[tuple[Place, str, str, str, bool]]:
    """(place, path, what it is, what to do, whether a folder) of every path the site names."""
    for index, bus in enumerate(config.buses):
        if isinstance(bus, ModbusRtuBus | SerialBus) and "://" not in bus.port:
            yield (
                ("buses", index, "port"),
                bus.port,
                f"serial port {{path}} of bus '{bus.id}'",
                "plug in the adapter, or name the port that exists "
                "(`ls -l /dev/serial/by-id/` lists them); the bus stays offline until then",
                False,
            )
    if config.sms is not None and "://" not in config.sms.port:
        yield (
            ("sms", "port"),
            config.sms.port,
            "SMS modem port {path}",
            "plug in the modem, or name its port; alarm SMS cannot be sent until then",
            False,
        )
    uplink = config.uplink
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(uplink, key)
        if path is not None:
            yield (
                ("uplink", key),
                path,
                f"uplink.{key} {{path}}",
                "provision it (first boot does), or correct the path; the uplink cannot "
                "connect over TLS without it",
                False,
            )
    keys = config.commands.keys
    if keys is not None:
        yield (
            ("commands", "keys"),
            keys,
            "command keys folder {path}",
            "provision the platform's public keys there; every command is refused until then",
            True,
        )


def missing_files(config: SiteConfig) -> list[MissingFile]:
    """Every path of ``config`` that does not exist or cannot be read here."""
    found = []
    for place, path, what, hint, folder in _named(config):
        reason = _state(path, folder=folder)
        if reason is not None:
            found.append(MissingFile(place, path, what, reason, hint))
    return found


def missing_file_warnings(config: SiteConfig) -> Iterable[tuple[Place, str]]:
    """The warning check: each missing path, at the key that names it."""
    for missing in missing_files(config):
        yield missing.place, missing.message()
