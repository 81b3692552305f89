"""Helpers shared by the outbox and inbox implementations (private).

Encoding events the way the bus does, storing headers, validating messages,
and turning stored rows back into messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sagaflow.choreography.context import current_envelope
from sagaflow.choreography.outbox import OutboxMessage, ParkedMessage
from sagaflow.errors import ConfigurationError
from sagaflow.events import Event
from sagaflow.transports.base import Message, validate_name

if TYPE_CHECKING:
    from sagaflow.choreography.bus import EventBus


def encode_headers(headers: Mapping[str, str]) -> str:
    """Return message headers as compact JSON text (internal)."""
    return json.dumps(dict(headers), separators=(",", ":"))


def decode_headers(raw: str | bytes | Mapping[str, str] | None) -> dict[str, str]:
    """Return headers stored by `encode_headers` (psycopg may hand back a dict)."""
    if raw is None:
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    decoded: dict[str, str] = json.loads(raw)
    return decoded


class MessageEncoder:
    """Turns events into outbox messages exactly as `EventBus.publish` would (internal).

    Envelopes come from `EventBus.envelope` (so correlation and causation ids are
    inherited inside handlers) and bytes from the bus's serializer and topic map.
    Without a bus, a default `EventBus` over the default registry is used.
    """

    __slots__ = ("_bus",)

    def __init__(self, bus: EventBus | None) -> None:
        self._bus = bus

    @property
    def bus(self) -> EventBus:
        """The bus whose envelopes, serializer and topics are used."""
        if self._bus is None:
            from sagaflow.choreography.bus import EventBus

            # A bus that is never started: only its envelope building is used.
            self._bus = EventBus(source="sagaflow")
        return self._bus

    def encode(
        self,
        event: Event,
        *,
        key: str | None = None,
        id: str | None = None,
        subject: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
    ) -> Message:
        """Return the message `EventBus.publish` would send for ``event``.

        Raises:
            ConfigurationError: The event class is not registered or a header is reserved.
            MessageTooLargeError: The encoded event is over the serializer's limit.
        """
        bus = self.bus
        envelope = bus.envelope(
            event,
            id=id,
            subject=subject,
            key=key,
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            traceparent=traceparent,
        )
        return bus.serializer.encode(envelope, topic=bus.topic_for(envelope.type))


def check_message(message: Message) -> Message:
    """Validate a ready-made message before it is recorded (internal).

    Raises:
        ConfigurationError: The topic name is unsafe or the id is empty.
    """
    validate_name("topic", message.topic)
    if not message.id:
        raise ConfigurationError("an outbox message needs a non-empty id")
    return message


def message_from_row(
    seq: int,
    msg_id: str,
    topic: str,
    key: str | None,
    body: bytes,
    headers: str | bytes | Mapping[str, str] | None,
    attempts: int,
) -> OutboxMessage:
    """Build an `OutboxMessage` from the stored columns (internal)."""
    message = Message(
        id=msg_id, topic=topic, body=bytes(body), headers=decode_headers(headers), key=key
    )
    return OutboxMessage(seq=int(seq), message=message, attempts=int(attempts))


def claimed_from_rows(rows: list[Sequence[Any]]) -> list[OutboxMessage]:
    """Build claimed messages from ``seq, id, topic, key, body, headers, attempts`` rows.

    The claim's ``RETURNING`` does not promise the order of its subquery (neither
    SQLite nor PostgreSQL does), and the relay publishes in seq order: sort here.
    """
    rows.sort(key=lambda r: r[0])
    return [message_from_row(*r) for r in rows]


def parked_from_row(row: Sequence[Any]) -> ParkedMessage:
    """Build a `ParkedMessage` from ``seq, id, topic, key, body, headers, attempts, reason, at``."""
    claimed = message_from_row(*row[:7])
    return ParkedMessage(
        seq=claimed.seq,
        message=claimed.message,
        reason=str(row[7] or ""),
        attempts=claimed.attempts,
        parked_at=float(row[8] or 0.0),
    )


def event_id_or_current(event_id: str | None) -> str:
    """Return ``event_id``, or the id of the event being handled (internal).

    Raises:
        ConfigurationError: No id given and no event is being handled.
    """
    if event_id is not None:
        return event_id
    envelope = current_envelope()
    if envelope is None:
        raise ConfigurationError("no event id given and no event is being handled")
    return envelope.id
