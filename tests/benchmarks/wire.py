"""Telemetry bytes on the wire, and what building them costs (``python -m tests.benchmarks.wire``).

The reference site: 50 devices x 20 points polled every second, values as electrical fire
monitors give them (slow random walks with noise: 230.4 V, 12.31 A, 41.7 °C, 35 mA), every
point of one poll sharing its time, and now and then an event taking a seq between readings.
Readings go out in batches of ``batch_size`` (the uplink's default unless given), built by
:mod:`edge.contract` exactly as the uplink builds them.

Figures:

- ``wire_bytes_per_reading_plain`` / ``wire_bytes_per_reading_compressed``: MQTT 3.1.1 PUBLISH
  packet bytes (fixed header with its remaining-length bytes, 2-byte topic length, the topic
  ``district/v1/<gateway>/telemetry``, 2-byte packet id, payload) divided by the readings
  carried, compact telemetry (``edge.telemetry/2``) plain and deflated;
- ``wire_bytes_per_reading_v1``: the same for the readable ``edge.telemetry/1``;
- ``wire_encode_us_per_reading`` / ``wire_compress_us_per_reading`` /
  ``wire_decode_us_per_reading``: CPU time per reading to build a compact message, to deflate
  it, and for the platform to inflate and decode it, on this machine.

The through-the-broker figures (``uplink_bytes_per_reading_*``) come from the uplink
benchmark. Figures are printed and merged into ``--out`` (bench-results.json).
"""

from __future__ import annotations

import argparse
import json
import random
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import contract
from edge.config.model import Uplink as UplinkConfig

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "gw-bench-0001"
PREFIX = "district/v1"
EPOCH = "0b6c1f7e-3c1a-4d55-9a59-2f4f1c8e7d10"
#: One reading in this many is followed by an event's seq (a hole in the telemetry seqs).
EVENT_EVERY = 500


@dataclass(frozen=True)
class Row:
    seq: int
    body: Mapping[str, Any]


@dataclass(frozen=True)
class PointKind:
    name: str
    unit: str
    typical: float
    decimals: int
    #: Random-walk step and measurement noise, in the point's unit.
    step: float
    noise: float


#: 20 points of an electrical fire monitor with metering: what one poll returns, in order.
POINTS: tuple[PointKind, ...] = (
    PointKind("residual_current", "mA", 35, 0, 0.5, 1.0),
    *(PointKind(f"temperature_{i}", "°C", 41.7 - i, 1, 0.02, 0.1) for i in range(1, 5)),
    *(PointKind(f"voltage_{p}", "V", 230.4, 1, 0.05, 0.3) for p in "abc"),
    *(PointKind(f"current_{p}", "A", 12.31, 2, 0.02, 0.05) for p in "abc"),
    PointKind("current_n", "A", 0.42, 2, 0.01, 0.02),
    *(PointKind(f"power_{p}", "kW", 2.83, 3, 0.005, 0.01) for p in "abc"),
    PointKind("power_factor", "", 0.93, 2, 0.002, 0.005),
    PointKind("frequency", "Hz", 50.0, 2, 0.002, 0.01),
    PointKind("energy", "kWh", 18234.5, 1, 0.0, 0.0),
    PointKind("leakage_alarm", "", 0, 0, 0.0, 0.0),
    PointKind("status", "", 0, 0, 0.0, 0.0),
)


def device_points(readings_per_device: int) -> list[tuple[str, PointKind]]:
    """The points of one poll: the 20 above, repeated under new names if more are asked."""
    kinds = [POINTS[i % len(POINTS)] for i in range(readings_per_device)]
    return [
        (kind.name if i < len(POINTS) else f"{kind.name}_{i}", kind) for i, kind in enumerate(kinds)
    ]


def site_aliases(readings_per_device: int, devices: int) -> contract.Aliases:
    """The alias table of ``devices`` such monitors (the order Aliases.of_site gives)."""
    points = device_points(readings_per_device)
    return contract.Aliases(
        (f"efm-{d:03d}", name, kind.unit) for d in range(devices) for name, kind in points
    )


def site_rows(
    readings_per_device: int, devices: int, seconds: int, rng: random.Random
) -> Iterator[Row]:
    """Outbox telemetry rows in the order the outbox holds them."""
    points = device_points(readings_per_device)
    level = [[kind.typical for _, kind in points] for _ in range(devices)]
    energy_step = 0.1
    seq = 1
    start = 1_714_550_400.0  # 2024-05-01T08:00:00Z
    for second in range(seconds):
        for d in range(devices):
            # Devices on one RS-485 line are polled one after the other, a few ms apart.
            ts = round(start + second + d * 0.012 + rng.uniform(0, 0.004), 3)
            for i, (name, kind) in enumerate(points):
                walk = level[d]
                walk[i] += rng.gauss(0, kind.step)
                if kind.name == "energy":
                    walk[i] += energy_step
                value = round(walk[i] + rng.gauss(0, kind.noise), kind.decimals)
                if kind.decimals == 0:
                    value = float(int(value))
                body = {
                    "device": f"efm-{d:03d}",
                    "point": name,
                    "value": value,
                    "unit": kind.unit,
                    "ts": ts,
                }
                yield Row(seq, body)
                seq += 2 if rng.randrange(EVENT_EVERY) == 0 else 1


def publish_size(topic_len: int, payload_len: int) -> int:
    """Bytes of an MQTT 3.1.1 QoS 1 PUBLISH packet with this topic and payload."""
    remaining = 2 + topic_len + 2 + payload_len  # topic length, topic, packet id, payload
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


def measure(
    readings_per_device: int = 20,
    devices: int = 50,
    seconds: int = 60,
    batch_size: int | None = None,
    level: int = contract.COMPRESS_LEVEL,
) -> dict[str, float]:
    """Bytes per reading and CPU cost for the site above; see the module's docstring."""
    if batch_size is None:
        batch_size = UplinkConfig.model_validate({"brokers": ["mqtt://x:1"]}).batch_size
    rng = random.Random(1)
    aliases = site_aliases(readings_per_device, devices)
    topic_len = len(contract.telemetry_topic(PREFIX, GATEWAY).encode())
    rows = list(site_rows(readings_per_device, devices, seconds, rng))
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    plain = compressed = verbose = 0
    encode_s = compress_s = decode_s = 0.0
    sent_at = 1_714_550_400.0
    for batch in batches:
        started = time.perf_counter()
        payload = contract.telemetry_message(
            GATEWAY, EPOCH, batch, clock_synced=True, historical=False, aliases=aliases,
            sent_at=sent_at,
        )  # fmt: skip
        encoded = time.perf_counter()
        deflated = zlib.compress(payload, level)
        compress_s += time.perf_counter() - encoded
        encode_s += encoded - started
        started = time.perf_counter()
        decoded = contract.decode_telemetry(contract.decode_payload(deflated), aliases)
        decode_s += time.perf_counter() - started
        if len(decoded) != len(batch):
            raise AssertionError(f"{len(decoded)} readings decoded of {len(batch)}")
        plain += publish_size(topic_len, len(payload))
        compressed += publish_size(topic_len, len(deflated))
        v1 = contract.telemetry_message(
            GATEWAY, EPOCH, batch, clock_synced=True, historical=False, sent_at=sent_at
        )
        verbose += publish_size(topic_len, len(v1))
    n = len(rows)
    return {
        "wire_readings": n,
        "wire_batch_size": batch_size,
        "wire_compress_level": level,
        "wire_bytes_per_reading_v1": round(verbose / n, 2),
        "wire_bytes_per_reading_plain": round(plain / n, 2),
        "wire_bytes_per_reading_compressed": round(compressed / n, 2),
        "wire_encode_us_per_reading": round(encode_s / n * 1e6, 3),
        "wire_compress_us_per_reading": round(compress_s / n * 1e6, 3),
        "wire_decode_us_per_reading": round(decode_s / n * 1e6, 3),
    }


KEYS = (
    "wire_readings",
    "wire_batch_size",
    "wire_compress_level",
    "wire_bytes_per_reading_v1",
    "wire_bytes_per_reading_plain",
    "wire_bytes_per_reading_compressed",
    "wire_encode_us_per_reading",
    "wire_compress_us_per_reading",
    "wire_decode_us_per_reading",
)
#: A run of a moment that goes through every step (tests/integration/test_benchmarks.py).
TINY = {"devices": 5, "seconds": 2}
#: ``python -m tests.benchmarks`` calls every suite's ``run``.
run = measure


def main() -> None:
    parser = argparse.ArgumentParser(description="Telemetry bytes per reading on the wire.")
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--points", type=int, default=20, help="readings per device poll")
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--batch-size", type=int, help="default: the uplink's default")
    parser.add_argument("--level", type=int, default=contract.COMPRESS_LEVEL, help="zlib level")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results.json")
    args = parser.parse_args()
    figures = measure(args.points, args.devices, args.seconds, args.batch_size, args.level)
    for key, value in figures.items():
        print(f"{key}: {value}")
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results.update(figures)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
