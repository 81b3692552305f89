"""The envelope around every event: CloudEvents attributes plus tracing and routing data.

On the wire an envelope is a transport `Message` in CloudEvents *binary content
mode*: the attributes travel as ``ce-*`` headers, the body is the event's JSON
data. The extension attributes follow the CloudEvents naming rules
(lower-case, no separators): ``correlationid``, ``causationid``, ``traceparent``
(the distributed-tracing extension) and ``partitionkey`` (the partitioning
extension).

=====================  ======================  ===================================
attribute              header                  meaning
=====================  ======================  ===================================
``id``                 ``ce-id``               unique event id (also the message id)
``source``             ``ce-source``           the producing service
``type``               ``ce-type``             the event's wire name
``time``               ``ce-time``             when it was published (RFC 3339)
``subject``            ``ce-subject``          what it is about (an order id...)
``datacontenttype``    ``content-type``        ``application/json``
``correlation_id``     ``ce-correlationid``    the business flow it belongs to
``causation_id``       ``ce-causationid``      the id of the event that caused it
``traceparent``        ``ce-traceparent``      W3C trace context
``partition_key``      ``ce-partitionkey``     ordering key (also the message key)
``headers``            any other name          free application headers
=====================  ======================  ===================================
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, TypeVar

from sagaflow.errors import ConfigurationError, SerializationError
from sagaflow.events import Event
from sagaflow.transports.base import Message

__all__ = ["CONTENT_TYPE_JSON", "Envelope", "new_event_id"]

E_co = TypeVar("E_co", bound=Event, covariant=True)
E = TypeVar("E", bound=Event)

CONTENT_TYPE_JSON = "application/json"

H_SPECVERSION = "ce-specversion"
H_ID = "ce-id"
H_SOURCE = "ce-source"
H_TYPE = "ce-type"
H_TIME = "ce-time"
H_SUBJECT = "ce-subject"
H_CONTENT_TYPE = "content-type"
H_CORRELATION = "ce-correlationid"
H_CAUSATION = "ce-causationid"
H_TRACEPARENT = "ce-traceparent"
H_PARTITION_KEY = "ce-partitionkey"

_RESERVED_PREFIXES = ("ce-", "sagaflow-")
_RESERVED_NAMES = frozenset({H_CONTENT_TYPE})
_OPTIONAL = (
    (H_SUBJECT, "subject"),
    (H_CAUSATION, "causation_id"),
    (H_TRACEPARENT, "traceparent"),
    (H_PARTITION_KEY, "partition_key"),
)


def new_event_id() -> str:
    """Return a fresh, random event id (a UUID4 string)."""
    return str(uuid.uuid4())


def _check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith(_RESERVED_PREFIXES) or lowered in _RESERVED_NAMES:
            raise ConfigurationError(
                f"header {name!r} is reserved for envelope attributes; choose another name"
            )
        if not isinstance(value, str):
            raise ConfigurationError(f"header {name!r} must be a string")


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope(Generic[E_co]):
    """An event together with its CloudEvents attributes and routing data.

    Build one with `Envelope.wrap` (the bus does it for you on publish); a handler
    reads the envelope of the event it is handling with
    `sagaflow.choreography.current_envelope()`.

    Attributes:
        event: The typed event (the CloudEvents ``data``).
        id: Unique event id; also the transport message id and the inbox key.
        type: The event's wire name.
        source: The producing service (a URI-reference such as ``"/orders"``).
        time: Publication time, timezone-aware UTC.
        subject: Optional subject within the source (for example an order id).
        datacontenttype: Always ``application/json`` for sagaflow's serializer.
        correlation_id: The business flow this event belongs to; inherited by every
            event published while handling it.
        causation_id: Id of the event whose handling published this one.
        traceparent: W3C trace context header value.
        partition_key: Events with equal keys keep their order where the transport
            is ordered and the subscription asks for it.
        headers: Free application headers (names starting with ``ce-`` or
            ``sagaflow-`` and ``content-type`` are reserved).
    """

    event: E_co
    id: str
    type: str
    source: str
    time: datetime
    correlation_id: str
    subject: str | None = None
    datacontenttype: str = CONTENT_TYPE_JSON
    causation_id: str | None = None
    traceparent: str | None = None
    partition_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @staticmethod
    def wrap(
        event: E,
        *,
        type: str,
        source: str,
        id: str | None = None,
        time: datetime | None = None,
        subject: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
        partition_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Envelope[E]:
        """Build an envelope, filling the id, the time and the correlation id.

        A root event (no ``correlation_id``) starts a new flow: its correlation id
        is its own id.

        Raises:
            ConfigurationError: A header name is reserved or a value is not a string.
        """
        event_id = id or new_event_id()
        if headers:
            _check_headers(headers)
        return Envelope(
            event=event,
            id=event_id,
            type=type,
            source=source,
            time=time or datetime.now(UTC),
            subject=subject,
            correlation_id=correlation_id or event_id,
            causation_id=causation_id,
            traceparent=traceparent,
            partition_key=partition_key,
            headers=dict(headers) if headers else {},
        )

    def to_headers(self) -> dict[str, str]:
        """Return the transport headers carrying this envelope's attributes."""
        headers = dict(self.headers) if self.headers else {}
        headers[H_SPECVERSION] = "1.0"
        headers[H_ID] = self.id
        headers[H_SOURCE] = self.source
        headers[H_TYPE] = self.type
        headers[H_TIME] = self.time.isoformat()
        headers[H_CONTENT_TYPE] = self.datacontenttype
        headers[H_CORRELATION] = self.correlation_id
        for name, attr in _OPTIONAL:
            value = getattr(self, attr)
            if value is not None:
                headers[name] = value
        return headers

    def to_message(
        self, topic: str, body: bytes, extra_headers: Mapping[str, str] | None = None
    ) -> Message:
        """Return the transport message for this envelope with an encoded ``body``.

        Args:
            topic: Destination topic.
            body: The serialized event data.
            extra_headers: Headers added after the attributes (a signature, say).
        """
        headers = self.to_headers()
        if extra_headers:
            headers.update(extra_headers)
        return Message(id=self.id, topic=topic, body=body, headers=headers, key=self.partition_key)

    @staticmethod
    def from_headers(event: E, headers: Mapping[str, str]) -> Envelope[E]:
        """Rebuild an envelope from transport ``headers`` and its decoded ``event``.

        Raises:
            SerializationError: A required attribute is missing or malformed.
        """
        try:
            event_id = headers[H_ID]
            type_name = headers[H_TYPE]
        except KeyError as exc:
            raise SerializationError(f"missing required header {exc.args[0]!r}") from None
        raw_time = headers.get(H_TIME)
        try:
            time = datetime.fromisoformat(raw_time) if raw_time else datetime.now(UTC)
        except ValueError:
            raise SerializationError("malformed ce-time header") from None
        free = {
            k: v
            for k, v in headers.items()
            if not k.startswith(_RESERVED_PREFIXES) and k not in _RESERVED_NAMES
        }
        return Envelope(
            event=event,
            id=event_id,
            type=type_name,
            source=headers.get(H_SOURCE, ""),
            time=time,
            subject=headers.get(H_SUBJECT),
            datacontenttype=headers.get(H_CONTENT_TYPE, CONTENT_TYPE_JSON),
            correlation_id=headers.get(H_CORRELATION) or event_id,
            causation_id=headers.get(H_CAUSATION),
            traceparent=headers.get(H_TRACEPARENT),
            partition_key=headers.get(H_PARTITION_KEY),
            headers=free,
        )
