"""The platform's side of signed commands: make keys, sign a command, send it, read its ack.

    python -m hil.receiver keygen --out keys/ --key-id operations-2026a
    python -m hil.receiver sign --key keys/operations-2026a.private.pem \\
        --gateway gw-demo-0001 --command set-threshold \\
        --params '{"rule": "residual-current-over-limit", "threshold": 250}' \\
        --send mqtt://127.0.0.1:18830

``keygen`` writes ``KEY_ID.private.pem`` (mode 0600: it stays with the platform) and
``KEY_ID.pub`` (installed on the gateways with their certificates). ``sign`` prints the
signed ``edge.command/1`` JSON; with ``--send`` it also publishes it to
``{prefix}/{gateway}/commands`` and prints the gateway's ack (exit status 0 for ``ok``, 1 for
``error``, 3 when no ack came in time). docs/commands.md shows the whole flow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt

from edge import contract
from edge.schemas import ContractError, validate, validate_message
from edge.signing import generate_key, load_private_key, sign_command
from edge.uplink import parse_broker_url

__all__ = ["build_command", "main", "send"]


def build_command(
    gateway_id: str,
    name: str,
    params: Mapping[str, Any],
    key_file: Path,
    *,
    command_id: str | None = None,
    issued_at: float | None = None,
) -> dict[str, Any]:
    """A signed ``edge.command/1`` for one gateway, with the private key of ``keygen``,
    checked against the contract's schema."""
    key, key_id = load_private_key(key_file)
    command = {
        "schema": contract.SCHEMA_COMMAND,
        "command_id": command_id or f"cmd-{uuid.uuid4()}",
        "command": name,
        "issued_at": contract.iso_utc(time.time() if issued_at is None else issued_at),
        "params": dict(params),
    }
    signed = sign_command(command, gateway_id, key, key_id)
    validate("command", signed)
    return signed


async def send(
    broker: str, prefix: str, gateway_id: str, command: Mapping[str, Any], wait: float
) -> dict[str, Any] | None:
    """Publish ``command`` to ``{prefix}/{gateway}/commands`` (QoS 1, never retained: a
    gateway refuses retained commands) and return the gateway's ``edge.ack/1`` for it, or None
    when none came within ``wait`` seconds. What is not a valid ack is passed over. Resending
    the same command is safe: the gateway answers a ``command_id`` it has run with the first
    answer."""
    address = parse_broker_url(broker)
    topics = contract.Topics.of(prefix, gateway_id)
    tls = ssl.create_default_context() if address.tls else None
    payload = json.dumps(command, separators=(",", ":"), ensure_ascii=False).encode()
    async with aiomqtt.Client(address.host, address.port, tls_context=tls, timeout=10) as client:
        await client.subscribe(topics.acks, qos=1)
        await client.publish(topics.commands, payload, qos=1, retain=False)
        try:
            async with asyncio.timeout(wait):
                async for message in client.messages:
                    ack = _ack_in(message.payload)
                    if ack is not None and ack["command_id"] == command["command_id"]:
                        return ack
        except TimeoutError:
            return None
    return None


def _ack_in(payload: object) -> dict[str, Any] | None:
    """The ``edge.ack/1`` a message carries, or None for anything else."""
    if not isinstance(payload, bytes | bytearray):
        return None
    try:
        body = json.loads(payload)
        kind = validate_message(body)
    except (ValueError, ContractError):
        return None
    return body if kind == "ack" else None


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hil.receiver", description="Command keys and signed commands."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signing commands")
    keygen.add_argument("--out", type=Path, required=True, help="folder to write the pair into")
    keygen.add_argument(
        "--key-id", required=True, help="operations-NAME or engineering-NAME, e.g. operations-2026a"
    )
    sign = sub.add_parser("sign", help="sign a command (and send it with --send)")
    sign.add_argument("--key", type=Path, required=True, help="a KEY_ID.private.pem from keygen")
    sign.add_argument("--gateway", required=True, help="the gateway id the command is for")
    sign.add_argument("--command", required=True, help="ping, set-threshold, push-config, ...")
    sign.add_argument("--params", default="{}", help="the params as JSON (default {})")
    sign.add_argument(
        "--site", type=Path, help="push-config: send this site file as site_yaml (its text)"
    )
    sign.add_argument("--command-id", help="default: a new uuid")
    sign.add_argument("--send", metavar="BROKER", help="publish to mqtt://host:port, print the ack")
    sign.add_argument("--prefix", default="district/v1", help="topic prefix (district/v1)")
    sign.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the ack")
    return parser.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    args = _args(sys.argv[1:] if argv is None else list(argv))
    if args.action == "keygen":
        try:
            private, public = generate_key(args.out, args.key_id)
        except (ValueError, OSError) as exc:
            print(f"keygen: {exc}", file=sys.stderr)
            return 2
        print(f"private key (keep it on the platform): {private}")
        print(f"public key (install it in the gateways' certs/): {public}")
        return 0
    try:
        params = json.loads(args.params)
        if args.site is not None:
            params = {"site_yaml": args.site.read_text(encoding="utf-8")}
        if not isinstance(params, dict):
            raise ValueError("--params must be a JSON object")
        command = build_command(
            args.gateway, args.command, params, args.key, command_id=args.command_id
        )
    except (ValueError, OSError, ContractError) as exc:
        print(f"sign: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(command, indent=2))
    if args.send is None:
        return 0
    ack = asyncio.run(send(args.send, args.prefix, args.gateway, command, args.wait))
    if ack is None:
        print(f"sign: no ack within {args.wait:g} s", file=sys.stderr)
        return 3
    print(json.dumps(ack, indent=2))
    return 0 if ack.get("result") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
