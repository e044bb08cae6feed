"""Which serial ports a site file may name, and what a port must be before it is opened.

A port is one of:

- a serial device: ``/dev/ttyUSB0`` and the other ``/dev/tty<letters><digits>`` (``ttyAMA0``,
  ``ttyS0``, ``ttyACM0``), the Raspberry Pi's ``/dev/serial0`` and ``/dev/serial1``, or a stable
  udev link ``/dev/serial/by-id/NAME`` or ``/dev/serial/by-path/NAME``;
- a pseudo-terminal, ``/dev/pts/N``;
- a link to one of those anywhere else (what the simulator makes, ``var/demo/rtu``), given as
  an absolute path or relative to the working directory, with no ``.`` or ``..`` in it;
- ``socket://host:port``, a serial server (ser2net) over TCP.

Nothing else. pyserial reads any string as a URL, and its other handlers are not ports:
``spy://...?file=PATH`` truncates a file, ``rfc2217://...?timeout=4`` blocks for seconds,
``loop://`` and ``alt://`` are not a line at all. ``/dev/mem`` or ``/dev/sda`` are devices,
but not serial ones. So a port is checked twice: its form when the site file is read
(:func:`parse_port`, :func:`check_port`), and what it resolves to when it is opened
(:func:`resolve_device`): every link followed, the end must be a ``/dev/tty*`` or
``/dev/pts/N`` character device. A link elsewhere pointing at ``/dev/mem`` passes the first
check and fails the second.

A device that does not exist (yet) is not a form error: a USB adapter may be plugged in after
the file is written, and the driver reports it offline until it appears.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ALLOWED_FORMS",
    "DevicePort",
    "PortError",
    "SerialPort",
    "SocketPort",
    "check_port",
    "parse_port",
    "resolve_device",
]

#: The forms, as every refusal states them.
ALLOWED_FORMS: Final = (
    "a serial port is /dev/ttyUSB0 (or another /dev/tty<letters><digits>), /dev/serial0, "
    "/dev/serial/by-id/NAME, /dev/serial/by-path/NAME, /dev/pts/N, a link to one of these "
    "(no '.' or '..' in the path), or socket://host:port"
)

# One path component: no leading dot (so neither "." nor ".." nor a hidden name), none of the
# characters a URL or a shell would read differently ('%', '?', '#', spaces, quotes, '\').
_COMPONENT: Final = r"[A-Za-z0-9_][A-Za-z0-9_.:+@=,~-]*"
_TTY: Final = re.compile(r"/dev/tty[A-Za-z]+[0-9]+")
_PTS: Final = re.compile(r"/dev/pts/[0-9]+")
_DEVICE_FORMS: Final = (
    _TTY,
    _PTS,
    re.compile(r"/dev/serial[0-9]"),
    re.compile(rf"/dev/serial/by-(?:id|path)/{_COMPONENT}"),
)
_PATH: Final = re.compile(rf"/?{_COMPONENT}(?:/{_COMPONENT})*")
_SOCKET: Final = re.compile(
    r"socket://(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
    r":(?P<port>[0-9]{1,5})"
)
#: Kernel and device folders: nothing there but the forms above is a serial port.
_SYSTEM_DIRS: Final = ("/dev/", "/proc/", "/sys/")
_MAX_LENGTH: Final = 4096


class PortError(ValueError):
    """Not a serial port; the message names the allowed forms."""


@dataclass(frozen=True, slots=True)
class DevicePort:
    """A local device path (or a link to one), exactly as written."""

    path: str

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True, slots=True)
class SocketPort:
    """A serial server reached over TCP."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"socket://{self.host}:{self.port}"


SerialPort = DevicePort | SocketPort


def _refuse(text: str, why: str) -> PortError:
    return PortError(f"{text!r} is not a serial port: {why}; {ALLOWED_FORMS}")


def parse_port(text: str) -> SerialPort:
    """The port ``text`` names, by its form alone (no file is touched); :class:`PortError`."""
    if not isinstance(text, str) or not text:
        raise _refuse(str(text), "it is empty")
    if len(text) > _MAX_LENGTH or any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise _refuse(text, "it is too long or holds control characters")
    scheme, sep, _ = text.partition("://")
    if sep or ":" in text.split("/", 1)[0]:
        if scheme != "socket":
            hint = " (write it in lower case)" if scheme.lower() == "socket" else ""
            raise _refuse(
                text,
                f"only socket:// URLs reach a serial port{hint}; pyserial's other handlers "
                "write files, block or loop back",
            )
        found = _SOCKET.fullmatch(text)
        if found is None:
            raise _refuse(text, "socket:// takes host:port and nothing else (no path, no query)")
        port = int(found["port"])
        if not 1 <= port <= 65535:
            raise _refuse(text, f"TCP port {port} is not within 1-65535")
        return SocketPort(found["host"].strip("[]"), port)
    if any(form.fullmatch(text) for form in _DEVICE_FORMS):
        return DevicePort(text)
    if not _PATH.fullmatch(text):
        raise _refuse(
            text,
            "a path may hold letters, digits and _ . : + @ = , ~ - only, with no empty, '.' "
            "or '..' part",
        )
    if text.startswith(_SYSTEM_DIRS) or text in ("/dev", "/proc", "/sys"):
        raise _refuse(text, "it is a system device or file, not a serial line")
    return DevicePort(text)


def resolve_device(path: str) -> str:
    """The serial device ``path`` leads to, every link followed; checked before any open.

    Raises :class:`PortError` when the end is anything but a ``/dev/tty*`` or ``/dev/pts/N``
    character device, and ``FileNotFoundError`` when ``path`` or the device it names does not
    exist (an adapter not plugged in, a simulator not started).
    """
    port = parse_port(path)
    if not isinstance(port, DevicePort):
        raise _refuse(path, "a socket:// URL is not a device path")
    os.lstat(path)  # FileNotFoundError: nothing there (yet)
    target = os.path.realpath(path)
    if not (_TTY.fullmatch(target) or _PTS.fullmatch(target)):
        raise _refuse(path, f"it leads to {target}, which is not a serial device")
    mode = os.stat(target).st_mode  # FileNotFoundError: a link to an adapter unplugged
    if not stat.S_ISCHR(mode):
        raise _refuse(path, f"{target} is not a character device")
    return target


def check_port(text: str) -> SerialPort:
    """What a site file's ``port`` is, checked as far as this machine can tell now.

    The form always; a device path that exists must also lead to a serial device. A device
    that is missing is accepted: it is the driver's "offline" at run time, not a file error.
    """
    port = parse_port(text)
    if isinstance(port, DevicePort):
        try:
            resolve_device(port.path)
        except FileNotFoundError:
            pass
        except PermissionError:
            pass  # the gateway's user may see what this one cannot; its open will tell
        except OSError as exc:
            raise _refuse(text, f"it cannot be looked at ({exc.strerror or exc})") from None
    return port
