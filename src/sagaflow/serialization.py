"""Turning envelopes into transport messages and back: JSON, size limit, HMAC signing.

`JsonSerializer` is the only serializer sagaflow ships, on purpose: JSON through
pydantic (never pickle), so that a message can be read by any language and can
never execute code when decoded. Decoding checks, in this order, and stops at the
first failure:

1. the body size against ``max_size`` (before anything is parsed);
2. the HMAC signature, when a `HmacSigner` is configured (the payload is never
   decoded when it fails);
3. the ``ce-type`` header against the event registry;
4. the JSON body against the event class's schema.

Each failure raises a `SerializationError` subclass whose message names the
problem but never contains the payload, so it is safe to log and to store with a
dead letter.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import types
import typing
import uuid
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ValidationError

from sagaflow.envelope import (
    H_CAUSATION,
    H_CONTENT_TYPE,
    H_CORRELATION,
    H_ID,
    H_PARTITION_KEY,
    H_SOURCE,
    H_SUBJECT,
    H_TIME,
    H_TYPE,
    Envelope,
)
from sagaflow.errors import (
    ConfigurationError,
    MessageTooLargeError,
    SchemaError,
    SerializationError,
    SignatureError,
)
from sagaflow.events import Event, EventRegistry, default_registry
from sagaflow.transports.base import Message

__all__ = ["DEFAULT_MAX_SIZE", "HmacSigner", "JsonSerializer", "Serializer"]

DEFAULT_MAX_SIZE = 1024 * 1024
"""Default limit on an encoded body: 1 MiB."""

H_KEY_ID = "sagaflow-key-id"
H_SIGNATURE = "sagaflow-signature"

# The attributes covered by a signature, besides the body. Free headers and
# traceparent are not covered: they may be rewritten by infrastructure.
_SIGNED_HEADERS = (
    H_ID,
    H_TYPE,
    H_SOURCE,
    H_TIME,
    H_SUBJECT,
    H_CONTENT_TYPE,
    H_CORRELATION,
    H_CAUSATION,
    H_PARTITION_KEY,
)
_KEY_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_MIN_KEY_BYTES = 16
_MAX_ERRORS_SHOWN = 5


@runtime_checkable
class Serializer(Protocol):
    """Encodes envelopes into transport messages and decodes them back.

    ``decode(encode(envelope, topic=t))`` returns an envelope equal to the
    original. Both methods are pure and thread-safe.
    """

    def encode(self, envelope: Envelope[Event], *, topic: str) -> Message:
        """Return the message carrying ``envelope`` on ``topic``.

        Raises:
            MessageTooLargeError: The encoded body exceeds the size limit.
        """
        ...

    def decode(self, message: Message) -> Envelope[Event]:
        """Return the envelope carried by ``message``.

        Raises:
            SerializationError: Or a subclass, naming why the message is unreadable.
        """
        ...


class HmacSigner:
    """HMAC-SHA256 signatures with named keys, for key rotation.

    Messages are signed with the *active* key; any key in ``keys`` verifies. To
    rotate: add the new key everywhere, then make it active, then remove the old
    one once no message signed with it can still arrive.

    The signature covers the body and the envelope attributes (id, type, source,
    time, subject, content type, correlation and causation ids, partition key),
    so a captured body cannot be replayed under another type or flow. Keys are
    never shown in ``repr`` or error messages.

    Args:
        keys: Key id to secret (at least 16 bytes each). Key ids use letters,
            digits, ``_``, ``.`` and ``-``.
        active_key_id: The key used to sign; defaults to the only key when there
            is exactly one.
    """

    __slots__ = ("_active", "_keys")

    def __init__(self, keys: Mapping[str, bytes], *, active_key_id: str | None = None) -> None:
        if not keys:
            raise ConfigurationError("HmacSigner needs at least one key")
        for key_id, secret in keys.items():
            if not _KEY_ID.match(key_id):
                raise ConfigurationError(f"invalid HMAC key id {key_id!r}")
            if not isinstance(secret, bytes) or len(secret) < _MIN_KEY_BYTES:
                raise ConfigurationError(
                    f"HMAC key {key_id!r} must be bytes of at least {_MIN_KEY_BYTES} bytes"
                )
        if active_key_id is None:
            if len(keys) != 1:
                raise ConfigurationError("HmacSigner: name the active_key_id among several keys")
            active_key_id = next(iter(keys))
        if active_key_id not in keys:
            raise ConfigurationError(f"active key id {active_key_id!r} is not among the keys")
        self._keys = dict(keys)
        self._active = active_key_id

    def __repr__(self) -> str:
        return f"<HmacSigner active={self._active!r} keys={sorted(self._keys)!r}>"

    def sign(self, headers: Mapping[str, str], body: bytes) -> dict[str, str]:
        """Return the signature headers for a message with ``headers`` and ``body``."""
        digest = _digest(self._keys[self._active], headers, body)
        return {H_KEY_ID: self._active, H_SIGNATURE: digest}

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Check the signature headers of a message.

        Raises:
            SignatureError: The signature is missing, names an unknown key or does
                not match.
        """
        key_id = headers.get(H_KEY_ID)
        signature = headers.get(H_SIGNATURE)
        if key_id is None or signature is None:
            raise SignatureError("message is not signed")
        secret = self._keys.get(key_id)
        if secret is None:
            raise SignatureError(f"message is signed with unknown key id {key_id[:64]!r}")
        # Compared as bytes: hostile header text (non-ASCII, lone surrogates) is a
        # mismatch, not a TypeError from compare_digest.
        expected = _digest(secret, headers, body).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass")):
            raise SignatureError("message signature does not match")


def _digest(secret: bytes, headers: Mapping[str, str], body: bytes) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    # Length-prefix every part so that no two different messages share a byte
    # string ("ab"+"c" vs "a"+"bc"); a missing header differs from an empty one.
    for name in _SIGNED_HEADERS:
        value = headers.get(name)
        if value is None:
            mac.update(b"\x00")
        else:
            raw = value.encode("utf-8", "surrogatepass")  # header text may hold any code point
            mac.update(b"\x01" + len(raw).to_bytes(8, "big") + raw)
    mac.update(len(body).to_bytes(8, "big") + body)
    return mac.hexdigest()


class _LocalMessage(Message):
    """A message encoded by this process, remembering the envelope it came from.

    Transports that hand the very same object to a consumer (the memory
    transport) let `JsonSerializer.decode` return that envelope instead of
    parsing the bytes again. Anything that crossed a process boundary is a plain
    `Message` and takes the full decoding path. The headers are built on first
    read, from the envelope: an in-process consumer never reads them.
    """

    __slots__ = ("_envelope", "_headers", "_serializer")
    _envelope: Envelope[Event]
    _headers: dict[str, str] | None
    _serializer: JsonSerializer

    @property
    def headers(self) -> Mapping[str, str]:
        """The envelope's headers (`Envelope.to_headers`), built on first access."""
        headers = self._headers
        if headers is None:
            headers = self._envelope.to_headers()
            object.__setattr__(self, "_headers", headers)
        return headers


# Same technique as envelope.make_envelope: a frozen dataclass built through its
# slot descriptors, several times cheaper than its generated __init__.
_set_id, _set_topic, _set_body, _set_key = (
    Message.__dict__[name].__set__ for name in ("id", "topic", "body", "key")
)
_set_envelope, _set_headers, _set_serializer = (
    _LocalMessage.__dict__[name].__set__ for name in ("_envelope", "_headers", "_serializer")
)


def _local_message(
    envelope: Envelope[Event],
    topic: str,
    body: bytes,
    headers: dict[str, str] | None,
    serializer: JsonSerializer,
) -> _LocalMessage:
    message: _LocalMessage = object.__new__(_LocalMessage)
    _set_id(message, envelope.id)
    _set_topic(message, topic)
    _set_body(message, body)
    _set_key(message, envelope.partition_key)
    _set_envelope(message, envelope)
    _set_headers(message, headers)
    _set_serializer(message, serializer)
    return message


_IMMUTABLE_LEAVES: tuple[type, ...] = (
    str,
    int,
    float,
    bool,
    bytes,
    type(None),
    Decimal,
    uuid.UUID,
    datetime,
    date,
    time,
    timedelta,
    enum.Enum,
)
_shareable_cache: dict[type[BaseModel], bool] = {}


def shareable(cls: type[BaseModel]) -> bool:
    """Return whether instances of the frozen model ``cls`` are deeply immutable.

    Only then may one decoded instance be shared by the handlers of several
    groups: none of them can change what another sees.
    """
    found = _shareable_cache.get(cls)
    if found is None:
        _shareable_cache[cls] = False  # recursive models: assume not, then decide
        found = bool(cls.model_config.get("frozen")) and all(
            _immutable(field.annotation) for field in cls.model_fields.values()
        )
        _shareable_cache[cls] = found
    return found


def _immutable(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is None:
        if isinstance(annotation, type):
            if issubclass(annotation, BaseModel):
                return shareable(annotation)
            return issubclass(annotation, _IMMUTABLE_LEAVES)
        return False
    if origin is typing.Literal:
        return True
    if origin is typing.Annotated:
        return _immutable(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, tuple, frozenset):
        return all(a is Ellipsis or _immutable(a) for a in typing.get_args(annotation))
    return False


class JsonSerializer:
    """JSON serializer through pydantic, with a size limit and optional signing.

    Args:
        registry: Where wire names are looked up on decode (default: the default
            registry).
        max_size: Largest body in bytes, on encode and on decode.
        signer: Sign every encoded message and require a valid signature on
            every decoded one.
    """

    __slots__ = ("max_size", "registry", "signer")

    def __init__(
        self,
        registry: EventRegistry | None = None,
        *,
        max_size: int = DEFAULT_MAX_SIZE,
        signer: HmacSigner | None = None,
    ) -> None:
        if type(max_size) is not int or max_size < 1:
            raise ConfigurationError(f"max_size must be an int >= 1, got {max_size!r}")
        self.registry = registry if registry is not None else default_registry
        self.max_size = max_size
        self.signer = signer

    def __repr__(self) -> str:
        return f"<JsonSerializer max_size={self.max_size} signed={self.signer is not None}>"

    def encode_body(self, event: Event) -> bytes:
        """Return the JSON bytes of ``event``, checking the size limit.

        Raises:
            MessageTooLargeError: The body exceeds ``max_size``.
        """
        body = event.__pydantic_serializer__.to_json(event)
        if len(body) > self.max_size:
            raise MessageTooLargeError(len(body), self.max_size)
        return body

    def encode(self, envelope: Envelope[Event], *, topic: str) -> Message:
        """Return the message carrying ``envelope`` on ``topic``; see `Serializer.encode`."""
        event = envelope.event
        body = self.encode_body(event)
        if self.signer is None and shareable(type(event)):
            # Headers are built on first read: an in-process consumer never reads them.
            return _local_message(envelope, topic, body, None, self)
        headers = envelope.to_headers()
        if self.signer is not None:
            headers.update(self.signer.sign(headers, body))
        if not shareable(type(event)):
            return Message(
                id=envelope.id, topic=topic, body=body, headers=headers, key=envelope.partition_key
            )
        return _local_message(envelope, topic, body, headers, self)

    def decode(self, message: Message) -> Envelope[Event]:
        """Return the envelope carried by ``message``; see `Serializer.decode`."""
        if type(message) is _LocalMessage and message._serializer is self:
            # Encoded by this very serializer, never left the process, and the
            # event is deeply immutable: decoding would rebuild an equal envelope.
            return message._envelope
        body = message.body
        if len(body) > self.max_size:
            raise MessageTooLargeError(len(body), self.max_size)
        headers = message.headers
        if self.signer is not None:
            self.signer.verify(headers, body)
        type_name = headers.get(H_TYPE)
        if type_name is None:
            raise SerializationError(f"missing required header {H_TYPE!r}")
        cls = self.registry.get(type_name)
        try:
            event = cls.model_validate_json(body)
        except ValidationError as exc:
            raise _schema_error(type_name, cls, exc) from None
        return Envelope.from_headers(event, headers)


def _schema_error(type_name: str, cls: type[BaseModel], exc: ValidationError) -> SerializationError:
    # Never echo the input: it may hold personal data or secrets. That includes
    # object keys (a dict field's keys, an unexpected field's name): a location
    # part is shown only when it is a list index or a declared field name.
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if any(err["type"] == "json_invalid" for err in errors):
        return SerializationError(f"body of {type_name!r} is not valid JSON")
    names = _declared_names(cls)
    shown = "; ".join(
        f"{'.'.join(_loc_part(part, names) for part in err['loc']) or '<root>'}: {err['msg']}"
        for err in errors[:_MAX_ERRORS_SHOWN]
    )
    more = len(errors) - _MAX_ERRORS_SHOWN
    suffix = f" (and {more} more)" if more > 0 else ""
    return SchemaError(f"body does not match {type_name!r}: {shown}{suffix}")


def _loc_part(part: str | int, names: frozenset[str]) -> str:
    return str(part) if isinstance(part, int) or part in names else "*"


def _declared_names(cls: type[BaseModel]) -> frozenset[str]:
    """Field names and aliases of ``cls`` and of every model its fields refer to."""
    names: set[str] = set()
    seen: set[type[BaseModel]] = set()
    pending: list[Any] = [cls]
    while pending:
        item = pending.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            if item in seen:
                continue
            seen.add(item)
            for name, info in item.model_fields.items():
                names.add(name)
                if isinstance(info.alias, str):
                    names.add(info.alias)
                if isinstance(info.validation_alias, str):
                    names.add(info.validation_alias)
                pending.append(info.annotation)
        else:
            pending.extend(typing.get_args(item))
    return frozenset(names)
