"""Hostile or corrupt messages are dead-lettered with a reason; the consumer keeps going."""

from __future__ import annotations

import pytest

from sagaflow.serialization import HmacSigner, JsonSerializer
from sagaflow.transports.base import Message

from ._support import REGISTRY, OrderPlaced, make_bus, memory

TOPIC = "t.order.placed.v1"
KEY = b"s" * 32


def raw(body: bytes, **headers: str) -> Message:
    base = {"ce-id": "evil-1", "ce-type": TOPIC, "ce-specversion": "1.0"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return Message(id=base["ce-id"], topic=TOPIC, body=body, headers=base)


CASES = [
    ("malformed JSON", raw(b'{"order_id": '), "not valid JSON"),
    ("wrong types", raw(b'{"order_id": 5, "total": "lots"}'), "does not match"),
    ("not an object", raw(b"[]"), "does not match"),
    ("unknown field", raw(b'{"order_id": "1", "admin": true}'), "does not match"),
    ("unknown type", raw(b"{}", ce_type="t.nobody.v1"), "no event class"),
    ("missing type", Message(id="x", topic=TOPIC, body=b"{}", headers={}), "ce-type"),
    ("missing id", raw(b'{"order_id": "1"}', ce_id=""), "ce-id"),
    ("oversized", raw(b'{"order_id": "' + b"x" * 5000 + b'"}'), "exceeds the limit"),
    ("bad time", raw(b'{"order_id": "1"}', ce_time="noon"), "ce-time"),
]


@pytest.mark.parametrize(("name", "message", "reason"), CASES, ids=[c[0] for c in CASES])
async def test_hostile_message_is_dead_lettered(name: str, message: Message, reason: str) -> None:
    if name == "missing id":
        headers = {k: v for k, v in message.headers.items() if k != "ce-id"}
        message = Message(id="no-id", topic=TOPIC, body=message.body, headers=headers)
    handled: list[str] = []
    bus = make_bus(serializer=JsonSerializer(REGISTRY, max_size=4096))
    async with bus:
        bus.subscribe(OrderPlaced, lambda e: handled.append(e.order_id), group="g")
        await bus.start()
        await memory(bus).publish([message])
        await bus.publish(OrderPlaced(order_id="after"))  # the consumer keeps running
        await bus.join()
        [letter] = await bus.dead_letters.list()
    assert handled == ["after"]
    assert letter.reason.startswith("undecodable message")
    assert reason in letter.reason
    assert letter.attempts == 0
    assert letter.message.body == message.body
    assert letter.error is not None
    assert bus.stats.undecodable == 1
    assert [d.message.id for d in memory(bus).dead_letters()] == [message.id]


async def test_error_messages_do_not_echo_payloads() -> None:
    bus = make_bus()
    async with bus:
        bus.subscribe(OrderPlaced, lambda e: None, group="g")
        await bus.start()
        await memory(bus).publish([raw(b'{"order_id": 1, "total": "hunter2-secret"}')])
        await bus.join()
        [letter] = await bus.dead_letters.list()
    assert "hunter2" not in letter.reason
    assert letter.error is not None
    assert "hunter2" not in letter.error["message"]


async def test_bad_signatures_are_dead_lettered_undecoded() -> None:
    signed = JsonSerializer(REGISTRY, signer=HmacSigner({"k1": KEY}))
    forger = JsonSerializer(REGISTRY, signer=HmacSigner({"k1": b"f" * 32}))
    handled: list[str] = []
    bus = make_bus(serializer=signed)
    async with bus:
        bus.subscribe(OrderPlaced, lambda e: handled.append(e.order_id), group="g")
        await bus.start()
        forged = forger.encode(bus.envelope(OrderPlaced(order_id="forged")), topic=TOPIC)
        unsigned = JsonSerializer(REGISTRY).encode(
            bus.envelope(OrderPlaced(order_id="plain")), topic=TOPIC
        )
        garbage = raw(b"\xff\xfe not json", sagaflow_key_id="k1", sagaflow_signature="ab")
        await memory(bus).publish([forged, unsigned, garbage])
        await bus.publish(OrderPlaced(order_id="genuine"))
        await bus.join()
        letters = await bus.dead_letters.list()
    assert handled == ["genuine"]
    assert len(letters) == 3
    assert all("SignatureError" in letter.reason for letter in letters)
