"""The uplink's MQTT client: aiomqtt's, with the few things aiomqtt 2.5.1 does not do.

This is the one module that reaches into aiomqtt's private parts, so that an upgrade has one
place to break and one test to say so (tests/unit/test_uplink_client.py checks every private
name and signature listed in :data:`AIOMQTT_PRIVATE`; tests/integration/test_uplink_client.py
checks the behaviour against a real Mosquitto). The rest of the uplink uses the client through
aiomqtt's public API: ``async with client``, ``publish``, ``subscribe``, ``messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttCodeError
from aiomqtt.types import PayloadType
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.uplink.refusals import Refusal

_T = TypeVar("_T")

__all__ = [
    "AIOMQTT_PRIVATE",
    "LEAVE_TIMEOUT",
    "ClosedBeforeConnack",
    "MqttClient",
    "PublishRefused",
]

#: What :class:`MqttClient` relies on inside ``aiomqtt.Client``: methods it overrides or calls
#: with their parameter names, and attributes it reads (an empty tuple). Checked by a test.
AIOMQTT_PRIVATE: Final[dict[str, tuple[str, ...]]] = {
    "_on_connect": ("self", "client", "userdata", "flags", "reason_code", "properties"),
    "_on_disconnect": ("self", "client", "userdata", "flags", "reason_code", "properties"),
    "_on_publish": ("self", "client", "userdata", "mid", "reason_code", "properties"),
    "_pending_call": ("self", "mid", "value", "pending_dict"),
    "_wait_for": ("self", "fut", "timeout"),
    "timeout": (),
    "_client": (),
    "_connected": (),
    "_disconnected": (),
    "_pending_publishes": (),
}


#: Longest a disconnect may take (a DISCONNECT stuck behind a full send buffer).
LEAVE_TIMEOUT: Final = 2.0


class ClosedBeforeConnack(aiomqtt.MqttError):
    """The broker closed the connection before its CONNACK (TLS refusal, connection limit)."""


class PublishRefused(Exception):
    """The broker answered a QoS 1 PUBLISH with a PUBACK whose reason code is a failure
    (0x80 or above, MQTT 5 only): it did not take the message, e.g. 0x87 Not authorized for a
    topic its ACL denies, 0x97 Quota exceeded. The connection stays up.

    Not an :class:`aiomqtt.MqttError` on purpose: the connection is fine, and every caller
    must decide what a refusal means rather than treat it as a lost connection.
    """

    def __init__(self, topic: str, reason: ReasonCode) -> None:
        self.refusal = Refusal(topic, int(reason.value), str(reason))
        super().__init__(f"the broker refused the message on {topic}: {self.refusal.describe()}")


class MqttClient(aiomqtt.Client):
    """aiomqtt's client, failing the connect at once when the broker closes before CONNACK,
    keeping the Maximum Packet Size an MQTT 5 broker announces in its CONNACK, reading the
    reason code of every PUBACK (:class:`PublishRefused`), and safe to cancel while it
    connects.

    aiomqtt 2.5.1 ignores a disconnect that comes before the CONNACK and waits for the
    operation timeout instead. A TLS 1.3 broker refusing our client certificate does exactly
    that (the handshake completes on our side, the alert follows), as does a broker at its
    connection limit: without this, every such attempt would hang for 10 s.
    """

    #: The broker's limit on a packet's size (MQTT 5 CONNACK), None when it set none.
    max_packet_size: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Failure reason codes of PUBACKs that arrived, by packet id, until publish() reads
        #: them.
        self._refusals: dict[int, ReasonCode] = {}
        #: The will: what a connection that completes after a cancelled connect says before
        #: it hangs up (a clean disconnect makes the broker discard the will itself).
        self._farewell: aiomqtt.Will | None = kwargs.get("will")

    async def __aenter__(self) -> Self:
        """Connect, as aiomqtt does; cancelling it leaves no connection behind.

        aiomqtt connects on a worker thread, which a cancellation does not stop: a connection
        completing after it would stay open with nobody to close it (and keep the gateway's
        client id from the next session). So the connect is shielded, and a connection that
        completes after a cancellation publishes the will's message and disconnects at once.
        """
        enter = asyncio.ensure_future(super().__aenter__())
        try:
            return await asyncio.shield(enter)
        except asyncio.CancelledError:
            enter.add_done_callback(self._leave_late)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect, within :data:`LEAVE_TIMEOUT`. A disconnect that fails (the connection
        already broke, a broker that stopped reading) leaves nothing to do: what ended the
        session is the error worth telling, and a stop must not wait out the operation
        timeout."""
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await super().__aexit__(exc_type, exc, tb)

    def _leave_late(self, enter: asyncio.Future[Self]) -> None:
        if enter.cancelled() or enter.exception() is not None:
            return
        # Queued on the connection without waiting: the PUBLISH goes before the DISCONNECT.
        will = self._farewell
        if will is not None:
            self._client.publish(will.topic, will.payload, will.qos, will.retain, will.properties)
        self._client.disconnect()

    async def publish(  # type: ignore[override]
        self,
        /,
        topic: str,
        payload: PayloadType = None,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (aiomqtt's signature)
    ) -> None:
        """aiomqtt 2.5.1's publish, plus the PUBACK's verdict: raises :class:`PublishRefused`
        when the broker answered with a failure reason code.

        aiomqtt sets the same event for every PUBACK whatever its reason code, and the packet
        id that would tell them apart stays inside its publish(); so this is its publish again
        (same steps, same errors), reading the verdict by packet id at the end. It returns only
        on the PUBACK for QoS 1: paho marks a QoS 1 message published, and calls on_publish,
        only from its PUBACK handler.
        """
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            if self._disconnected.done() and self._disconnected.exception():
                raise MqttCodeError(
                    info.rc, "Could not publish message"
                ) from self._disconnected.exception()
            raise MqttCodeError(info.rc, "Could not publish message")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await self._wait_for(confirmation.wait(), timeout=timeout)
            if not info.is_published():
                # Woken by _on_disconnect: the connection went before the PUBACK.
                lost = self._disconnected
                cause = lost.exception() if lost.done() and not lost.cancelled() else None
                raise aiomqtt.MqttError("connection lost before the PUBACK") from cause
        reason = self._refusals.pop(info.mid, None)
        if reason is not None:
            raise PublishRefused(topic, reason)

    async def _wait_for(self, fut: Awaitable[_T], timeout: float | None) -> _T:  # noqa: ASYNC109 (aiomqtt's signature)
        """aiomqtt's wait for a CONNACK, SUBACK, PUBACK or disconnect (its timeout, ``math.inf``
        for none, ``MqttError`` when it runs out), with ``asyncio.timeout`` instead of
        ``asyncio.wait_for``: on Python 3.11 ``wait_for`` returns a result that arrives
        together with a cancellation and drops the cancellation. A refused message's PUBACK, or
        a SUBACK, arriving as a session ended then left a task of the session running on and
        the task group, so the gateway's stop, waiting for it forever."""
        if timeout is None:
            timeout = self.timeout
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                return await fut
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure:
            self._refusals[mid] = reason_code
        else:
            # A packet id is reused once acknowledged: no stale verdict may stay behind.
            self._refusals.pop(mid, None)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        limit = getattr(properties, "MaximumPacketSize", None)
        if isinstance(limit, int) and limit > 0:
            self.max_packet_size = limit
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if not self._connected.done():
            self._connected.set_exception(
                ClosedBeforeConnack(
                    f"the broker closed the connection before accepting it ({reason_code}); "
                    "with mutual TLS, check that it accepts cert_file"
                )
            )
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)
        # aiomqtt leaves a pending publish waiting out its whole timeout on a connection that
        # is gone: a broker that hangs up on every PUBLISH would make each attempt last the
        # operation timeout. Wake them; publish() sees no PUBACK and raises at once.
        for waiting in self._pending_publishes.values():
            waiting.set()
