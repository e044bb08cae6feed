"""Field-bus drivers: they turn wire traffic into :class:`Reading` and :class:`DeviceStatus`.

Drivers import nothing from ``edge`` or ``buffer``: they are handed a sink callable and
know nothing of rules, disks or networks.
"""

from drivers.types import DeviceStatus, Reading, Sink

__all__ = ["DeviceStatus", "Reading", "Sink"]
