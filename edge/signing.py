"""Ed25519 signatures of downlink commands: the platform's keys, what is signed, the check.

Whoever can publish to a gateway's commands topic could otherwise silence its alarms, so the
gateway runs only commands the district platform signed. The platform holds the private keys;
the gateway holds the public ones, installed with its certificates (``certs/`` on the SD card
and in ``/etc/city-safety-edge/certs``) as PEM files named for their class:

- ``operations-<name>.pub``: day-to-day commands (ping, get-status, silence, set-threshold,
  storm-mode, a push-config that stays within the operations bounds);
- ``engineering-<name>.pub``: on top, a push-config that changes the uplink, the command
  policy, the outputs or a fire/critical rule (edge/command_bounds.py).

Any number of each may be installed at once, so a new key is installed before the old one is
withdrawn (rotation, docs/commands.md). A command names the key it was signed with
(``signature.key``, the file name without ``.pub``); the class is the gateway's, from the
file name, never the command's word.

What is signed is ``SIGNING_CONTEXT`` followed by the canonical JSON (edge/canonical.py) of
the command without its ``signature``, with ``gateway_id`` added: the signature binds the
gateway, the command id, the command, ``issued_at`` and every param. The cryptography itself
is the ``cryptography`` package's.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, get_args

from edge.canonical import CanonicalError, canonical_json

# cryptography is imported where a key is read, made or used: a gateway without command keys
# never loads it (about 7 MiB resident with its Rust core; docs/benchmarks.md, import budget).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "KEY_CLASSES",
    "PRIVATE_KEY_SUFFIX",
    "PUBLIC_KEY_SUFFIX",
    "CommandKey",
    "KeyClass",
    "KeyRing",
    "SignatureRefused",
    "generate_key",
    "load_key_ring",
    "load_private_key",
    "sign_command",
    "signing_bytes",
    "verify",
]

KeyClass: TypeAlias = Literal["operations", "engineering"]
KEY_CLASSES: Final[tuple[KeyClass, ...]] = get_args(KeyClass)
PUBLIC_KEY_SUFFIX: Final = ".pub"
#: Kept with the platform only; the suffix is one a gateway's certificate check refuses.
PRIVATE_KEY_SUFFIX: Final = ".private.pem"
#: Put before the signed JSON so that a signature over a command is never valid as anything
#: else, and a later layout gets a new context.
SIGNING_CONTEXT: Final = b"edge.command-signature/1\n"
KEY_ID_RE: Final = re.compile(r"^(operations|engineering)-[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class SignatureRefused(Exception):
    """The command's signature is missing, malformed, by an unknown key or does not verify."""


@dataclass(frozen=True, slots=True)
class CommandKey:
    """One installed public key: its id (file name without ``.pub``) and its class."""

    key_id: str
    key_class: KeyClass
    public_key: Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class KeyRing:
    """The public keys a gateway accepts, by id; ``problems`` names each file it could not use."""

    keys: Mapping[str, CommandKey]
    problems: tuple[str, ...] = ()

    def count(self, key_class: KeyClass) -> int:
        return sum(key.key_class == key_class for key in self.keys.values())


def key_class_of(key_id: str) -> KeyClass | None:
    match = KEY_ID_RE.match(key_id)
    return None if match is None else match.group(1)  # type: ignore[return-value]


def load_key_ring(folder: Path) -> KeyRing:
    """Every ``operations-*.pub`` and ``engineering-*.pub`` in ``folder``. A missing folder is
    an empty ring (the gateway then refuses every command); a file that is not an Ed25519
    public key is left out and named in ``problems``."""
    keys: dict[str, CommandKey] = {}
    problems: list[str] = []
    if not folder.is_dir():
        return KeyRing({}, (f"{folder}: no such folder",))
    for path in sorted(folder.glob(f"*{PUBLIC_KEY_SUFFIX}")):
        key_id = path.name.removesuffix(PUBLIC_KEY_SUFFIX)
        key_class = key_class_of(key_id)
        if key_class is None:
            problems.append(
                f"{path.name}: a command key is named operations-NAME.pub or "
                "engineering-NAME.pub (NAME: letters, digits, '-', '_', '.')"
            )
            continue
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PublicKey,
        )

        try:
            loaded = serialization.load_pem_public_key(path.read_bytes())
        except (ValueError, TypeError, OSError) as exc:
            problems.append(f"{path.name}: not a readable PEM public key ({exc})")
            continue
        if not isinstance(loaded, Ed25519PublicKey):
            problems.append(f"{path.name}: a {type(loaded).__name__}, not an Ed25519 public key")
            continue
        keys[key_id] = CommandKey(key_id, key_class, loaded)
    return KeyRing(keys, tuple(problems))


def signing_bytes(command: Mapping[str, Any], gateway_id: str) -> bytes:
    """The bytes a command's signature is over (raises :class:`CanonicalError`)."""
    signed = {k: v for k, v in command.items() if k != "signature"}
    signed["gateway_id"] = gateway_id
    return SIGNING_CONTEXT + canonical_json(signed)


def verify(command: Mapping[str, Any], gateway_id: str, ring: KeyRing) -> CommandKey:
    """The key that signed ``command`` for ``gateway_id``; :class:`SignatureRefused` otherwise."""
    signature = command.get("signature")
    if signature is None:
        raise SignatureRefused("the command is not signed; this gateway runs only signed commands")
    if not isinstance(signature, Mapping):
        raise SignatureRefused("signature must be an object with key and ed25519")
    key_id, value = signature.get("key"), signature.get("ed25519")
    if not isinstance(key_id, str) or not isinstance(value, str):
        raise SignatureRefused("signature must be an object with key and ed25519")
    key = ring.keys.get(key_id)
    if key is None:
        raise SignatureRefused(f"signed with key {key_id!r}, which this gateway does not have")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureRefused("signature.ed25519 is not base64") from None
    if len(raw) != 64:
        raise SignatureRefused(f"signature.ed25519 holds {len(raw)} bytes, not 64")
    try:
        message = signing_bytes(command, gateway_id)
    except CanonicalError as exc:
        raise SignatureRefused(f"the command cannot be checked: {exc}") from None
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

    try:
        key.public_key.verify(raw, message)
    except InvalidSignature:
        raise SignatureRefused(
            f"bad signature: the command was not signed by key {key_id!r} for gateway "
            f"{gateway_id!r} as it arrived (altered, or meant for another gateway)"
        ) from None
    return key


def sign_command(
    command: Mapping[str, Any], gateway_id: str, private_key: Ed25519PrivateKey, key_id: str
) -> dict[str, Any]:
    """``command`` with its ``signature`` (the platform's side; tests and hil/signer.py)."""
    signature = private_key.sign(signing_bytes(command, gateway_id))
    return {
        **{k: v for k, v in command.items() if k != "signature"},
        "signature": {"key": key_id, "ed25519": base64.b64encode(signature).decode("ascii")},
    }


def generate_key(folder: Path, key_id: str) -> tuple[Path, Path]:
    """A new key pair in ``folder``: ``KEY_ID.private.pem`` (mode 0600, the platform keeps it)
    and ``KEY_ID.pub`` (installed on the gateways). Refuses to overwrite either."""
    if key_class_of(key_id) is None:
        raise ValueError(
            f"key id {key_id!r}: name it operations-NAME or engineering-NAME "
            "(NAME: letters, digits, '-', '_', '.')"
        )
    folder.mkdir(parents=True, exist_ok=True)
    private_path = folder / f"{key_id}{PRIVATE_KEY_SUFFIX}"
    public_path = folder / f"{key_id}{PUBLIC_KEY_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; a key is never overwritten")
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Created 0600 from the first byte: a private key is never readable by others, not even
    # for a moment.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path


def load_private_key(path: Path) -> tuple[Ed25519PrivateKey, str]:
    """A private key written by :func:`generate_key` and its key id (from the file name)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: a {type(key).__name__}, not an Ed25519 private key")
    return key, path.name.removesuffix(PRIVATE_KEY_SUFFIX)
