"""Rules of the serialization layer, through the public API.

Covers the documented decode order (size, signature, type, schema), signatures
(tampered body or attributes, wrong key, missing or malformed signature headers),
the size limit at its boundary, unknown types and versions, schema errors that
never echo the payload, and the envelope's header rules.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

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
from sagaflow.serialization import DEFAULT_MAX_SIZE, HmacSigner, JsonSerializer
from sagaflow.transports.base import Message

REGISTRY = EventRegistry()
KEY = b"k" * 32
OTHER_KEY = b"z" * 32


class Point(BaseModel):
    model_config = ConfigDict(frozen=True)
    x: int


class Mutable(BaseModel):
    x: int


class NoteV1(Event, type="rules.note.v1", registry=REGISTRY):
    text: str


class NoteV2(Event, type="rules.note.v2", registry=REGISTRY):
    text: str
    lang: str


class Counts(Event, type="rules.counts.v1", registry=REGISTRY):
    counts: dict[str, int]


class Many(Event, type="rules.many.v1", registry=REGISTRY):
    a: int
    b: int
    c: int
    d: int
    e: int
    f: int
    g: int


class Frozen(Event, type="rules.frozen.v1", registry=REGISTRY):
    point: Point
    label: Annotated[str, Field(max_length=10)]
    pair: tuple[int, ...]
    maybe: int | None = None


class WithList(Event, type="rules.list.v1", registry=REGISTRY):
    items: list[int]


class WithMutableModel(Event, type="rules.mutable-model.v1", registry=REGISTRY):
    point: Mutable


class WithAny(Event, type="rules.any.v1", registry=REGISTRY):
    value: Any


def wrap(event: Event, **kw: Any) -> Envelope[Event]:
    assert event.event_type is not None
    return Envelope.wrap(event, type=event.event_type, source="/rules", **kw)


def signed(keys: dict[str, bytes] | None = None, active: str | None = None) -> JsonSerializer:
    return JsonSerializer(REGISTRY, signer=HmacSigner(keys or {"k1": KEY}, active_key_id=active))


def wire(message: Message, *, body: bytes | None = None, **headers: str) -> Message:
    """The message as a broker hands it over: a plain Message, maybe altered."""
    merged = dict(message.headers)
    for name, value in headers.items():
        merged[name.replace("_", "-")] = value
    return Message(
        id=message.id,
        topic=message.topic,
        body=message.body if body is None else body,
        headers=merged,
        key=message.key,
    )


def without(message: Message, *names: str) -> Message:
    headers = {k: v for k, v in message.headers.items() if k not in names}
    return Message(id=message.id, topic=message.topic, body=message.body, headers=headers)


# --- signatures -----------------------------------------------------------------


def test_signed_message_survives_the_wire() -> None:
    ser = signed()
    env = wrap(NoteV1(text="hi"), subject="s", partition_key="p", headers={"x-a": "1"})
    back = ser.decode(wire(ser.encode(env, topic="t")))
    assert back == env


@pytest.mark.parametrize(
    "header",
    [
        "ce-id",
        "ce-type",
        "ce-source",
        "ce-time",
        "ce-subject",
        "content-type",
        "ce-correlationid",
        "ce-causationid",
        "ce-partitionkey",
    ],
)
def test_every_signed_attribute_is_covered(header: str) -> None:
    ser = signed()
    env = wrap(NoteV1(text="hi"), subject="s", causation_id="c", partition_key="p")
    msg = ser.encode(env, topic="t")
    value = "2030-01-01T00:00:00+00:00" if header == "ce-time" else "changed"
    with pytest.raises(SignatureError, match="does not match"):
        ser.decode(wire(msg, **{header: value}))
    # Removing an optional attribute is a change too (missing differs from empty).
    if header in ("ce-subject", "ce-causationid", "ce-partitionkey"):
        with pytest.raises(SignatureError, match="does not match"):
            ser.decode(without(msg, header))
        with pytest.raises(SignatureError, match="does not match"):
            ser.decode(wire(msg, **{header: ""}))


def test_free_headers_and_traceparent_are_not_signed() -> None:
    ser = signed()
    env = wrap(NoteV1(text="hi"), traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    msg = ser.encode(env, topic="t")
    back = ser.decode(wire(msg, ce_traceparent="00-" + "c" * 32 + "-" + "d" * 16 + "-01", x_b="2"))
    assert back.event == env.event
    assert back.headers == {"x-b": "2"}


def test_tampered_body_wrong_key_and_missing_signature() -> None:
    ser = signed()
    msg = ser.encode(wrap(NoteV1(text="pay 10")), topic="t")
    with pytest.raises(SignatureError, match="does not match"):
        ser.decode(wire(msg, body=msg.body.replace(b"10", b"99")))
    # Same key id, another secret: an impostor's signature does not match.
    impostor = signed({"k1": OTHER_KEY}).encode(wrap(NoteV1(text="pay 10")), topic="t")
    with pytest.raises(SignatureError, match="does not match"):
        ser.decode(wire(impostor))
    with pytest.raises(SignatureError, match="not signed"):
        ser.decode(without(msg, "sagaflow-signature"))
    with pytest.raises(SignatureError, match="not signed"):
        ser.decode(without(msg, "sagaflow-key-id"))
    with pytest.raises(SignatureError, match="does not match"):
        ser.decode(wire(msg, sagaflow_signature=""))
    with pytest.raises(SignatureError, match="does not match"):
        ser.decode(wire(msg, sagaflow_signature=msg.headers["sagaflow-signature"].upper()))


def test_malformed_signature_header_is_a_signature_error() -> None:
    ser = signed()
    msg = ser.encode(wrap(NoteV1(text="hi")), topic="t")
    for bad in ("é" * 64, "\u2603", "\udcff" * 64):
        with pytest.raises(SignatureError, match="does not match"):
            ser.decode(wire(msg, sagaflow_signature=bad))


def test_undecodable_header_text_is_a_signature_error() -> None:
    # A transport decoding header bytes with surrogateescape hands over lone surrogates.
    ser = signed()
    msg = ser.encode(wrap(NoteV1(text="hi"), subject="s"), topic="t")
    with pytest.raises(SignatureError, match="does not match"):
        ser.decode(wire(msg, ce_subject="\udcff"))


def test_unknown_key_id_is_shown_truncated_and_never_the_secret() -> None:
    ser = signed()
    msg = ser.encode(wrap(NoteV1(text="hi")), topic="t")
    with pytest.raises(SignatureError, match="unknown key id") as info:
        ser.decode(wire(msg, sagaflow_key_id="x" * 500))
    assert "x" * 65 not in str(info.value)
    assert KEY.decode() not in str(info.value)


def test_rotation_removed_key_no_longer_verifies() -> None:
    old = signed({"k1": KEY})
    new_only = signed({"k2": OTHER_KEY})
    msg = old.encode(wrap(NoteV1(text="hi")), topic="t")
    with pytest.raises(SignatureError, match="unknown key id 'k1'"):
        new_only.decode(wire(msg))


def test_unsigned_serializer_ignores_signature_headers() -> None:
    msg = signed().encode(wrap(NoteV1(text="hi")), topic="t")
    assert JsonSerializer(REGISTRY).decode(wire(msg, sagaflow_signature="junk")).event == NoteV1(
        text="hi"
    )


def test_signature_checked_before_type() -> None:
    ser = signed()
    msg = ser.encode(wrap(NoteV1(text="hi")), topic="t")
    with pytest.raises(SignatureError):
        ser.decode(wire(msg, ce_type="nobody.v1"))


def test_signer_refuses_non_bytes_keys_and_hides_them() -> None:
    with pytest.raises(ConfigurationError) as info:
        HmacSigner({"k1": "a string secret of 32 characters"})  # type: ignore[dict-item]
    assert "a string secret" not in str(info.value)
    with pytest.raises(ConfigurationError):
        HmacSigner({"x" * 65: KEY})
    HmacSigner({"x" * 64: KEY, "a.b_c-1": b"1" * 16}, active_key_id="a.b_c-1")
    ser = signed()
    assert repr(ser) == "<JsonSerializer max_size=1048576 signed=True>"
    assert repr(JsonSerializer(REGISTRY)) == "<JsonSerializer max_size=1048576 signed=False>"
    assert "kkkk" not in repr(ser.signer)


# --- size limit -----------------------------------------------------------------


def test_size_limit_at_the_boundary() -> None:
    event = NoteV1(text="a" * 10)
    size = len(JsonSerializer(REGISTRY).encode_body(event))
    exact = JsonSerializer(REGISTRY, max_size=size)
    msg = exact.encode(wrap(event), topic="t")
    assert len(msg.body) == size
    assert exact.decode(wire(msg)).event == event
    below = JsonSerializer(REGISTRY, max_size=size - 1)
    with pytest.raises(MessageTooLargeError) as info:
        below.encode(wrap(event), topic="t")
    assert (info.value.size, info.value.limit) == (size, size - 1)
    assert "aaaaaaaaaa" not in str(info.value)
    with pytest.raises(MessageTooLargeError):
        below.decode(wire(msg))
    assert JsonSerializer(REGISTRY).max_size == DEFAULT_MAX_SIZE == 1024 * 1024
    with pytest.raises(ConfigurationError):
        JsonSerializer(REGISTRY, max_size=-5)


@pytest.mark.parametrize("bad", [True, 1.5, "1024", None])
def test_max_size_must_be_a_whole_number_of_bytes(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="max_size must be an int >= 1"):
        JsonSerializer(REGISTRY, max_size=bad)


def test_size_checked_before_signature() -> None:
    ser = JsonSerializer(REGISTRY, max_size=8, signer=HmacSigner({"k1": KEY}))
    big = Message(id="1", topic="t", body=b"x" * 9, headers={"ce-type": "rules.note.v1"})
    with pytest.raises(MessageTooLargeError):
        ser.decode(big)


# --- types and versions ---------------------------------------------------------


def test_versions_decode_to_their_own_classes() -> None:
    ser = JsonSerializer(REGISTRY)
    v1 = ser.decode(wire(ser.encode(wrap(NoteV1(text="a")), topic="t")))
    v2 = ser.decode(wire(ser.encode(wrap(NoteV2(text="a", lang="en")), topic="t")))
    assert type(v1.event) is NoteV1 and v1.type == "rules.note.v1"
    assert type(v2.event) is NoteV2 and v2.type == "rules.note.v2"
    # A v2 body under the v1 name is refused: v1 has no such field (extra="forbid").
    v2_body = ser.encode_body(NoteV2(text="a", lang="en"))
    with pytest.raises(SchemaError, match="Extra inputs are not permitted"):
        ser.decode(
            Message(
                id="1", topic="t", body=v2_body, headers={"ce-id": "1", "ce-type": "rules.note.v1"}
            )
        )


def test_a_retired_version_is_an_unknown_type() -> None:
    only_v2 = EventRegistry()
    only_v2.register(NoteV2)
    msg = JsonSerializer(REGISTRY).encode(wrap(NoteV1(text="a")), topic="t")
    with pytest.raises(UnknownEventTypeError, match=r"rules\.note\.v1") as info:
        JsonSerializer(only_v2).decode(wire(msg))
    assert isinstance(info.value, SerializationError)


def test_an_unknown_type_name_off_the_wire_is_cut_short_in_the_error() -> None:
    name = "x" * 5_000
    msg = Message(id="1", topic="t", body=b"{}", headers={"ce-id": "1", "ce-type": name})
    with pytest.raises(UnknownEventTypeError) as info:
        JsonSerializer(REGISTRY).decode(msg)
    assert info.value.type_name == name  # the attribute keeps all of it
    assert len(str(info.value)) < 300
    assert "(5000 chars)" in str(info.value)


# --- schema errors --------------------------------------------------------------


def header(type_name: str) -> dict[str, str]:
    return {"ce-id": "1", "ce-type": type_name}


def test_schema_errors_are_capped_and_named_by_field() -> None:
    ser = JsonSerializer(REGISTRY)
    with pytest.raises(SchemaError) as info:
        ser.decode(Message(id="1", topic="t", body=b"{}", headers=header("rules.many.v1")))
    text = str(info.value)
    assert text.startswith("body does not match 'rules.many.v1': a: Field required")
    assert text.endswith("(and 2 more)")
    assert "f:" not in text
    with pytest.raises(SchemaError, match=r"<root>: Input should be an object"):
        ser.decode(Message(id="1", topic="t", body=b"3", headers=header("rules.many.v1")))


def test_invalid_json_and_invalid_utf8_are_serialization_errors() -> None:
    ser = JsonSerializer(REGISTRY)
    for body in (b"", b"\xff\xfe", b'{"text": "secret-value'):
        with pytest.raises(SerializationError, match="not valid JSON") as info:
            ser.decode(Message(id="1", topic="t", body=body, headers=header("rules.note.v1")))
        assert "secret" not in str(info.value)


def test_schema_errors_never_echo_payload_keys() -> None:
    ser = JsonSerializer(REGISTRY)
    with pytest.raises(SchemaError) as extra:
        ser.decode(
            Message(
                id="1",
                topic="t",
                body=b'{"text": "a", "alice@example.com": 1}',
                headers=header("rules.note.v1"),
            )
        )
    assert "alice@example.com" not in str(extra.value)
    assert "Extra inputs are not permitted" in str(extra.value)
    with pytest.raises(SchemaError) as key:
        ser.decode(
            Message(
                id="1",
                topic="t",
                body=b'{"counts": {"bob@example.com": "many"}}',
                headers=header("rules.counts.v1"),
            )
        )
    assert "bob@example.com" not in str(key.value)
    assert "counts." in str(key.value)


# --- envelope rules -------------------------------------------------------------


def test_header_values_must_be_strings() -> None:
    with pytest.raises(ConfigurationError, match="must be a string"):
        wrap(NoteV1(text="a"), headers={"x-n": 1})


def test_to_message_adds_extra_headers_after_the_attributes() -> None:
    env = wrap(NoteV1(text="a"), partition_key="p", headers={"x-a": "1"})
    msg = env.to_message("topic", b"{}", {"x-extra": "2"})
    assert (msg.id, msg.topic, msg.body, msg.key) == (env.id, "topic", b"{}", "p")
    assert msg.headers["x-extra"] == "2" and msg.headers["x-a"] == "1"
    assert msg.headers["ce-type"] == "rules.note.v1"
    assert env.to_message("topic", b"{}").headers == env.to_headers()


def test_reserved_incoming_headers_are_not_free_headers() -> None:
    ser = JsonSerializer(REGISTRY)
    msg = ser.encode(wrap(NoteV1(text="a")), topic="t")
    back = ser.decode(wire(msg, CE_Unknown="x", Sagaflow_Other="y", x_keep="z"))
    assert back.headers == {"x-keep": "z"}


def test_missing_optional_attributes_take_defaults() -> None:
    ser = JsonSerializer(REGISTRY)
    body = ser.encode_body(NoteV1(text="a"))
    before = datetime.now(UTC)
    back = ser.decode(Message(id="1", topic="t", body=body, headers=header("rules.note.v1")))
    assert back.id == "1" and back.correlation_id == "1" and back.source == ""
    assert back.datacontenttype == "application/json"
    assert back.time >= before and back.time.tzinfo is not None


# --- in-process sharing (immutability) ------------------------------------------


@pytest.mark.parametrize(
    ("event", "shared"),
    [
        (Frozen(point=Point(x=1), label="a", pair=(1, 2), maybe=3), True),
        (WithList(items=[1]), False),
        (WithMutableModel(point=Mutable(x=1)), False),
        (WithAny(value=[1]), False),
    ],
)
def test_decoded_event_is_shared_only_when_deeply_immutable(event: Event, shared: bool) -> None:
    ser = JsonSerializer(REGISTRY)
    env = wrap(event)
    msg = ser.encode(env, topic="t")
    back = ser.decode(msg)
    assert back == env
    assert (back.event is event) is shared
    # Over the wire it is always decoded afresh; another serializer never trusts it.
    assert ser.decode(wire(msg)).event is not event
    assert JsonSerializer(REGISTRY).decode(msg).event is not event
    assert JsonSerializer(REGISTRY).decode(msg) == env
