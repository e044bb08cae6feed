"""Modbus RTU/TCP driver: device models as data files, and an async poller per bus.

Device models live in ``drivers/models/<name>.yaml``; :mod:`drivers.modbus.model` loads them
and holds the pure register codec; :mod:`drivers.modbus.schedule` decides what each bus reads
next and when, :mod:`drivers.modbus.bus` does the I/O around it with the master of
:mod:`drivers.modbus.client`.
"""

from drivers.modbus.bus import (
    BusSettings,
    BusStats,
    Lane,
    ModbusBus,
    PolledDevice,
    PollObserver,
    RtuSettings,
    TcpSettings,
)
from drivers.modbus.model import (
    DeviceModel,
    ModelError,
    Point,
    decode,
    encode,
    known_models,
    load_model,
    load_model_file,
    parse_model,
    read_plan,
)

__all__ = [
    "BusSettings",
    "BusStats",
    "DeviceModel",
    "Lane",
    "ModbusBus",
    "ModelError",
    "Point",
    "PollObserver",
    "PolledDevice",
    "RtuSettings",
    "TcpSettings",
    "decode",
    "encode",
    "known_models",
    "load_model",
    "load_model_file",
    "parse_model",
    "read_plan",
]
