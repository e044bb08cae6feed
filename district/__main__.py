"""``python -m district receive|fleet|gaps|sign``: the district platform's commands.

- ``receive``: the receiver (district/receiver.py), until Ctrl-C, SIGTERM or ``--seconds``;
- ``fleet``: the fleet simulator (district/fleet.py);
- ``gaps``: per gateway its epochs and the seq ranges missing, from the database;
- ``keygen``, ``sign``: command keys and signed commands (as ``python -m hil.receiver``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m district", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    rx = sub.add_parser("receive", help="store every gateway's messages into PostgreSQL")
    rx.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port")
    rx.add_argument("--db", required=True, help="postgresql://user@host:port/database")
    rx.add_argument("--prefix", default="district/v1")
    rx.add_argument("--group", default="district", help="shared subscription group")
    rx.add_argument("--client-id", default="district-rx-1", help="one per instance, kept")
    rx.add_argument("--window", type=int, default=1000, help="messages in flight (unacked)")
    rx.add_argument("--username")
    rx.add_argument("--password")
    rx.add_argument("--seconds", type=float, help="stop after this many seconds")
    rx.add_argument("--json", action="store_true", help="print the summary as JSON")
    fleet = sub.add_parser("fleet", help="publish the traffic of N simulated gateways")
    fleet.add_argument("--broker", required=True)
    fleet.add_argument("--prefix", default="district/v1")
    fleet.add_argument("--gateways", type=int, default=100)
    fleet.add_argument("--devices", type=int, default=5, help="efm-ref monitors per gateway")
    fleet.add_argument("--poll", type=float, default=1.0, help="poll interval, seconds")
    fleet.add_argument("--seconds", type=float, default=60.0)
    fleet.add_argument("--connections", type=int, default=4)
    fleet.add_argument("--seed", type=int, default=1)
    fleet.add_argument("--unpaced", action="store_true", help="as fast as possible (a backlog)")
    fleet.add_argument("--json", action="store_true")
    gaps = sub.add_parser("gaps", help="epochs and missing seqs per gateway, from the database")
    gaps.add_argument("--db", required=True)
    gaps.add_argument("--gateway")
    for name in ("keygen", "sign"):
        sub.add_parser(name, help="command keys and signed commands (see --help)", add_help=False)
    return parser.parse_known_args(argv)[0]


def _show(summary: dict[str, object], *, as_json: bool) -> None:
    print(json.dumps(summary) if as_json else "\n".join(f"{k}: {v}" for k, v in summary.items()))


def main(argv: Iterable[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("keygen", "sign"):
        from hil import signer  # noqa: PLC0415 -- the same tool as hil.receiver's

        return signer.main(argv)
    args = _args(argv)
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if args.action == "receive":
        # Each command imports only what it runs: a receiver starts in about a second.
        from district.receiver import progress_line, run_receiver  # noqa: PLC0415

        if args.seconds is not None:
            threading.Timer(args.seconds, stop.set).start()
        stats = run_receiver(
            args.broker,
            args.db,
            stop=stop,
            prefix=args.prefix,
            group=args.group,
            client_id=args.client_id,
            window=args.window,
            username=args.username,
            password=args.password,
            progress=progress_line(args.client_id),
        )
        summary = stats.as_dict()
        print(
            json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items())
        )
        return 0
    if args.action == "fleet":
        from district.fleet import FleetProfile, run_fleet  # noqa: PLC0415
        from district.fleet import progress_line as fleet_progress  # noqa: PLC0415

        profile = FleetProfile(devices=args.devices, poll=args.poll)
        result = run_fleet(
            args.broker,
            gateways=args.gateways,
            seconds=args.seconds,
            profile=profile,
            prefix=args.prefix,
            connections=args.connections,
            seed=args.seed,
            paced=not args.unpaced,
            stop=stop,
            progress=fleet_progress,
        )
        out = result.as_dict()
        _show(out, as_json=args.json)
        return 0
    import psycopg  # noqa: PLC0415

    from district.store import epochs, gaps  # noqa: PLC0415

    with psycopg.connect(args.db) as conn:
        missing = gaps(conn, args.gateway)
        for gateway, seen in sorted(epochs(conn).items()):
            if args.gateway and gateway != args.gateway:
                continue
            print(f"{gateway}: {len(seen)} epoch(s), {len(seen) - 1} reset(s)")
            for epoch in seen:
                ranges = missing.get((gateway, epoch), [])
                shown = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges[:10])
                print(f"  {epoch}: " + (f"missing {shown}" if ranges else "no gaps"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
