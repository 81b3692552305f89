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

import os
import types
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


_ID_BATCH = 256
_ids: list[str] = []
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _refill_ids() -> None:
    raw = os.urandom(16 * _ID_BATCH).hex()
    fresh = []
    for at in range(0, len(raw), 32):
        h = raw[at : at + 32]
        # Version 4 and the RFC 4122 variant, set in the text form directly.
        fresh.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}")
    _ids.extend(fresh)


def new_event_id() -> str:
    """Return a fresh, random event id: a UUID4 string from the OS random source.

    Ids are made in batches (one system call per 256 ids); ``list.pop`` is atomic,
    so this is thread-safe.
    """
    while True:
        try:
            return _ids.pop()
        except IndexError:
            _refill_ids()


def check_headers(headers: Mapping[str, str]) -> None:
    """Refuse reserved header names and non-string values (internal)."""
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith(_RESERVED_PREFIXES) or lowered in _RESERVED_NAMES:
            raise ConfigurationError(
                f"header {name!r} is reserved for envelope attributes; choose another name"
            )
        if not isinstance(value, str):
            raise ConfigurationError(f"header {name!r} must be a string")


def _free_headers(headers: Mapping[str, str]) -> dict[str, str]:
    # Usually every header is an attribute: check cheaply before copying.
    for k in headers:
        if not k.lower().startswith(_RESERVED_PREFIXES) and k.lower() not in _RESERVED_NAMES:
            return {
                k: v
                for k, v in headers.items()
                if not k.lower().startswith(_RESERVED_PREFIXES) and k.lower() not in _RESERVED_NAMES
            }
    return {}


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
            check_headers(headers)
            headers = dict(headers)
        return make_envelope(
            event,
            event_id,
            type,
            source,
            time or datetime.now(UTC),
            correlation_id or event_id,
            subject,
            CONTENT_TYPE_JSON,
            causation_id,
            traceparent,
            partition_key,
            headers or NO_HEADERS,
        )

    def to_headers(self) -> dict[str, str]:
        """Return the transport headers carrying this envelope's attributes."""
        headers = {
            H_SPECVERSION: "1.0",
            H_ID: self.id,
            H_SOURCE: self.source,
            H_TYPE: self.type,
            H_TIME: self.time.isoformat(),
            H_CONTENT_TYPE: self.datacontenttype,
            H_CORRELATION: self.correlation_id,
        }
        # Spelled out rather than looped: this runs once per published event.
        if self.subject is not None:
            headers[H_SUBJECT] = self.subject
        if self.causation_id is not None:
            headers[H_CAUSATION] = self.causation_id
        if self.traceparent is not None:
            headers[H_TRACEPARENT] = self.traceparent
        if self.partition_key is not None:
            headers[H_PARTITION_KEY] = self.partition_key
        if self.headers:
            for name, value in self.headers.items():
                headers.setdefault(name, value)
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
        free = _free_headers(headers)
        return make_envelope(
            event,
            event_id,
            type_name,
            headers.get(H_SOURCE, ""),
            time,
            headers.get(H_CORRELATION) or event_id,
            headers.get(H_SUBJECT),
            headers.get(H_CONTENT_TYPE, CONTENT_TYPE_JSON),
            headers.get(H_CAUSATION),
            headers.get(H_TRACEPARENT),
            headers.get(H_PARTITION_KEY),
            free,
        )


NO_HEADERS: Mapping[str, str] = types.MappingProxyType({})

# The generated __init__ of a frozen dataclass sets each of its 12 fields through
# object.__setattr__, which costs more than the rest of a publish together. This
# builds the same immutable object through the slot descriptors directly. The
# order below is the field order of Envelope (checked by a test).
_FIELDS = (
    "event",
    "id",
    "type",
    "source",
    "time",
    "correlation_id",
    "subject",
    "datacontenttype",
    "causation_id",
    "traceparent",
    "partition_key",
    "headers",
)
(
    _set_event,
    _set_id,
    _set_type,
    _set_source,
    _set_time,
    _set_correlation_id,
    _set_subject,
    _set_datacontenttype,
    _set_causation_id,
    _set_traceparent,
    _set_partition_key,
    _set_headers,
) = (Envelope.__dict__[name].__set__ for name in _FIELDS)
_new = object.__new__


def make_envelope(
    event: E,
    id: str,
    type: str,
    source: str,
    time: datetime,
    correlation_id: str,
    subject: str | None,
    datacontenttype: str,
    causation_id: str | None,
    traceparent: str | None,
    partition_key: str | None,
    headers: Mapping[str, str],
) -> Envelope[E]:
    """Build an `Envelope` from all its fields, in field order, without checks (internal)."""
    envelope: Envelope[E] = _new(Envelope)
    _set_event(envelope, event)
    _set_id(envelope, id)
    _set_type(envelope, type)
    _set_source(envelope, source)
    _set_time(envelope, time)
    _set_correlation_id(envelope, correlation_id)
    _set_subject(envelope, subject)
    _set_datacontenttype(envelope, datacontenttype)
    _set_causation_id(envelope, causation_id)
    _set_traceparent(envelope, traceparent)
    _set_partition_key(envelope, partition_key)
    _set_headers(envelope, headers)
    return envelope
