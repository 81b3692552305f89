from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sagaflow.envelope import Envelope
from sagaflow.errors import (
    ConfigurationError,
    MessageTooLargeError,
    SchemaError,
    SerializationError,
    SignatureError,
    UnknownEventTypeError,
)
from sagaflow.events import Event, EventRegistry
from sagaflow.serialization import HmacSigner, JsonSerializer, Serializer
from sagaflow.transports.base import Message

REGISTRY = EventRegistry()


class Line(BaseModel):
    sku: str
    qty: int


class Placed(Event, type="ser.placed.v1", registry=REGISTRY):
    order_id: str
    total: Decimal
    lines: list[Line]
    at: datetime
    note: str | None = None


class Blob(Event, type="ser.blob.v1", registry=REGISTRY):
    data: bytes
    ratio: float
    flag: bool
    kind: Literal["a", "b"]
    ref: UUID
    tags: dict[str, int]


KEY = b"k" * 32


def envelope(event: Event, **kw: object) -> Envelope[Event]:
    assert event.event_type is not None
    return Envelope.wrap(event, type=event.event_type, source="/tests", **kw)  # type: ignore[arg-type]


def sample() -> Placed:
    return Placed(
        order_id="o-1",
        total=Decimal("12.50"),
        lines=[Line(sku="a", qty=2)],
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_serializer_satisfies_protocol() -> None:
    assert isinstance(JsonSerializer(REGISTRY), Serializer)


def test_round_trip_keeps_event_and_attributes() -> None:
    ser = JsonSerializer(REGISTRY)
    env = envelope(
        sample(),
        subject="o-1",
        causation_id="c-1",
        correlation_id="corr",
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        partition_key="o-1",
        headers={"x-tenant": "acme"},
    )
    msg = ser.encode(env, topic="ser.placed.v1")
    assert msg.id == env.id
    assert msg.key == "o-1"
    assert msg.headers["ce-type"] == "ser.placed.v1"
    assert msg.headers["ce-specversion"] == "1.0"
    assert msg.headers["content-type"] == "application/json"
    assert json.loads(msg.body)["order_id"] == "o-1"
    back = ser.decode(msg)
    assert back == env


def test_root_event_correlates_with_itself() -> None:
    env = envelope(sample())
    assert env.correlation_id == env.id
    assert env.causation_id is None


def test_reserved_headers_are_refused() -> None:
    for name in ("ce-id", "CE-Type", "content-type", "sagaflow-signature"):
        with pytest.raises(ConfigurationError):
            envelope(sample(), headers={name: "x"})


def test_oversized_is_refused_on_encode_and_before_decode() -> None:
    ser = JsonSerializer(REGISTRY, max_size=64)
    with pytest.raises(MessageTooLargeError) as info:
        ser.encode(envelope(sample()), topic="t")
    assert info.value.limit == 64
    big = Message(id="1", topic="t", body=b"{" * 65, headers={"ce-type": "ser.placed.v1"})
    with pytest.raises(MessageTooLargeError):
        ser.decode(big)
    with pytest.raises(ConfigurationError):
        JsonSerializer(REGISTRY, max_size=0)


def hostile(body: bytes, **headers: str) -> Message:
    base = {"ce-id": "h-1", "ce-type": "ser.placed.v1"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return Message(id="h-1", topic="t", body=body, headers=base)


def test_hostile_inputs_raise_typed_errors_without_payload() -> None:
    ser = JsonSerializer(REGISTRY)
    with pytest.raises(SerializationError, match="not valid JSON") as info:
        ser.decode(hostile(b'{"order_id": "secret-value'))
    assert "secret-value" not in str(info.value)
    with pytest.raises(SchemaError) as schema:
        ser.decode(hostile(b'{"order_id": 5, "total": "secret-value", "lines": 1, "at": 2}'))
    assert "secret-value" not in str(schema.value)
    with pytest.raises(SchemaError):
        ser.decode(hostile(b"[1, 2]"))
    with pytest.raises(UnknownEventTypeError):
        ser.decode(hostile(b"{}", ce_type="nobody.v1"))
    with pytest.raises(SerializationError, match="ce-type"):
        ser.decode(Message(id="x", topic="t", body=b"{}", headers={}))
    good = ser.encode(envelope(sample()), topic="t")
    no_id = {k: v for k, v in good.headers.items() if k != "ce-id"}
    with pytest.raises(SerializationError, match="ce-id"):
        ser.decode(Message(id="x", topic="t", body=good.body, headers=no_id))
    bad_time = {**good.headers, "ce-time": "yesterday"}
    with pytest.raises(SerializationError, match="ce-time"):
        ser.decode(Message(id="x", topic="t", body=good.body, headers=bad_time))


def test_signed_round_trip_and_tampering() -> None:
    ser = JsonSerializer(REGISTRY, signer=HmacSigner({"k1": KEY}))
    msg = ser.encode(envelope(sample()), topic="t")
    assert msg.headers["sagaflow-key-id"] == "k1"
    assert ser.decode(msg).event == sample()

    tampered = Message(
        id=msg.id, topic="t", body=msg.body.replace(b"o-1", b"o-2"), headers=msg.headers
    )
    with pytest.raises(SignatureError):
        ser.decode(tampered)
    retyped = Message(
        id=msg.id, topic="t", body=msg.body, headers={**msg.headers, "ce-correlationid": "x"}
    )
    with pytest.raises(SignatureError):
        ser.decode(retyped)
    unsigned = JsonSerializer(REGISTRY).encode(envelope(sample()), topic="t")
    with pytest.raises(SignatureError, match="not signed"):
        ser.decode(unsigned)
    other = JsonSerializer(REGISTRY, signer=HmacSigner({"k9": b"z" * 32})).encode(
        envelope(sample()), topic="t"
    )
    with pytest.raises(SignatureError, match="unknown key"):
        ser.decode(other)


def test_signature_checked_before_decoding() -> None:
    ser = JsonSerializer(REGISTRY, signer=HmacSigner({"k1": KEY}))
    # Garbage that would be a JSON error is reported as a signature error: never parsed.
    with pytest.raises(SignatureError):
        ser.decode(hostile(b"not json", sagaflow_key_id="k1", sagaflow_signature="00"))
    with pytest.raises(SignatureError):
        ser.decode(hostile(b"{}", ce_type="nobody.v1"))


def test_key_rotation() -> None:
    old = JsonSerializer(REGISTRY, signer=HmacSigner({"k1": KEY}))
    both = JsonSerializer(
        REGISTRY, signer=HmacSigner({"k1": KEY, "k2": b"n" * 32}, active_key_id="k2")
    )
    assert both.decode(old.encode(envelope(sample()), topic="t")).event == sample()
    assert both.encode(envelope(sample()), topic="t").headers["sagaflow-key-id"] == "k2"


def test_signer_configuration_errors_hide_keys() -> None:
    with pytest.raises(ConfigurationError):
        HmacSigner({})
    with pytest.raises(ConfigurationError):
        HmacSigner({"k": b"short"})
    with pytest.raises(ConfigurationError):
        HmacSigner({"bad:id": KEY})
    with pytest.raises(ConfigurationError):
        HmacSigner({"a": KEY, "b": KEY})
    with pytest.raises(ConfigurationError):
        HmacSigner({"a": KEY}, active_key_id="b")
    assert "kkkk" not in repr(HmacSigner({"a": KEY}))


texts = st.text(max_size=20)
placed = st.builds(
    Placed,
    order_id=texts,
    total=st.decimals(
        allow_nan=False, allow_infinity=False, places=2, max_value=10**9, min_value=-(10**9)
    ),
    lines=st.lists(st.builds(Line, sku=texts, qty=st.integers()), max_size=3),
    at=st.datetimes(timezones=st.just(UTC)),
    note=st.none() | texts,
)
blobs = st.builds(
    Blob,
    data=st.binary(max_size=32),
    ratio=st.floats(allow_nan=False),
    flag=st.booleans(),
    kind=st.sampled_from(["a", "b"]),
    ref=st.uuids(),
    tags=st.dictionaries(texts, st.integers(), max_size=3),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    event=placed | blobs, signed=st.booleans(), subject=st.none() | texts.filter(str.isprintable)
)
def test_any_registered_event_round_trips(event: Event, signed: bool, subject: str | None) -> None:
    signer = HmacSigner({"k1": KEY}) if signed else None
    ser = JsonSerializer(REGISTRY, signer=signer)
    env = envelope(event, subject=subject)
    assert ser.decode(ser.encode(env, topic="t")) == env
