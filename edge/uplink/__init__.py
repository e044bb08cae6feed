"""The uplink: drains the outbox to the district broker over MQTT, ack then delete.

One connection at a time, brokers tried in the configured order (the next one after each
failure), a fresh :class:`aiomqtt.Client` per attempt. Every message goes out with QoS 1, up to
``uplink.inflight`` of them awaiting their PUBACK at once, and a message's rows are deleted
from the outbox only after its own PUBACK accepted it (PUBACKs may come in any order). A PUBACK
that refuses the message (MQTT 5 reason code 0x80 or above: an ACL, a quota) keeps the rows
and the window slot; the message goes again after a pause growing to ``reconnect_max``, the
state is ``refused`` and the log says so at once, then at most once a minute
(:mod:`.refusals`).

Order while connected: first the messages that were built but not acknowledged when the last
connection dropped, byte for byte as before (same ``message_id``, same rows); then events,
oldest first; then telemetry from about the connection's start on (live data); then the
backlog that was waiting when it came up, oldest first, in the gaps, within the ``backfill_*``
rate limits and leaving one window slot for alarms. No payload exceeds ``max_message_bytes``
(or the broker's MQTT 5 Maximum Packet Size): telemetry batches are cut to fit; an event too
large loses its own fields and says ``truncated: true``. A message that a broker drops the
connection over three times running (an MQTT 3.1.1 broker's packet limit) is taken apart.

On connect, before any telemetry, the retained metadata (the point aliases compact telemetry
refers to); then the health message every ``health_interval``, never stored.

Modules: :mod:`.connection` (broker URLs, TLS, the port look), :mod:`.client` (the MQTT
client: the one place that touches aiomqtt's private parts), :mod:`.drain` (what goes next:
a pure policy on given times, with the backfill rate buckets), :mod:`.inflight` (messages
awaiting their PUBACK, the rows they claim), :mod:`.messages` (building messages, the size
limit), :mod:`.refusals` (what the broker refuses, when to say it), :mod:`.service` (the
:class:`Uplink`: the session's tasks around them).

The retained status topic says "online" once connected; the MQTT will says "offline" for an
unclean loss, and :meth:`Uplink.stop` (or cancelling :meth:`Uplink.run`) publishes "offline"
before a clean disconnect, since a clean DISCONNECT makes the broker discard the will.

Reconnecting: the wait grows from 0.5 s to ``reconnect_max``; while waiting after the broker
went away, a bare TCP connect every half second tells when its port accepts again, and the next
attempt starts at once (a refused login or TLS handshake keeps the full wait).
"""

from __future__ import annotations

from edge.uplink.connection import PROTOCOLS, BrokerAddress, parse_broker_url, tls_context
from edge.uplink.service import Uplink, UplinkState

__all__ = [
    "PROTOCOLS",
    "BrokerAddress",
    "Uplink",
    "UplinkState",
    "parse_broker_url",
    "tls_context",
]
