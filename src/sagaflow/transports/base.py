"""The `Transport` and `Delivery` protocols: moving bytes and headers between services.

Transports know nothing of events: they move `Message` values (a body of bytes and
string headers) on named topics. Typed events, envelopes and serialization live
one layer up, in the event bus. Every transport passes the transport contract
suite in `sagaflow.testing` and declares what it can do in `TransportFeatures`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from sagaflow.errors import ConfigurationError

__all__ = [
    "Delivery",
    "Message",
    "Transport",
    "TransportFeatures",
    "validate_name",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")


def validate_name(kind: str, name: str) -> str:
    """Check that a topic or group name is safe for keys, subjects and routing keys.

    Allowed: letters, digits, ``_``, ``-`` and ``.``, starting with a letter or digit,
    at most 200 characters. Wildcards (``*``, ``>``, ``#``), spaces and colons are
    refused because brokers give them meaning.

    Returns:
        ``name`` unchanged.

    Raises:
        ConfigurationError: The name is not safe.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"invalid {kind} name {name!r}: use 1-200 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class Message:
    """What a transport carries: an opaque body plus string headers.

    Attributes:
        id: Unique message id (the event id); brokers use it to deduplicate publishes.
        topic: Destination topic (validated with `validate_name`).
        body: The payload bytes (already serialized, maybe signed).
        headers: String headers carried alongside (type, correlation id, ...).
        key: Partition key; messages with equal keys keep their order where the
            transport is ordered.
    """

    id: str
    topic: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportFeatures:
    """What a transport guarantees; the contract suite reads these flags.

    Attributes:
        persistent: Messages survive a restart of the broker.
        ordered: Within one topic, one consumer group sees messages in publish order
            (at least per partition key) when nothing is redelivered.
        competing_consumers: Consumers in one group share the messages.
        native_delay: ``nack(delay=...)`` is done by the broker (not by a sleeping task).
        native_dead_letter: Dead letters live in the broker (a DLQ stream or queue).
        max_payload: Largest body in bytes the transport accepts.
    """

    persistent: bool
    ordered: bool
    competing_consumers: bool
    native_delay: bool
    native_dead_letter: bool
    max_payload: int


@runtime_checkable
class Delivery(Protocol):
    """One delivery of a message to one consumer of a group.

    Exactly one of `ack`, `nack` or `dead_letter` settles a delivery; settling twice
    is a no-op. An unsettled delivery is redelivered (to this or another consumer of
    the group) once its consumer stops or dies.
    """

    @property
    def message(self) -> Message:
        """The delivered message."""
        ...

    @property
    def attempt(self) -> int:
        """How many times this message has been delivered to this group (1 the first time)."""
        ...

    async def ack(self) -> None:
        """Settle successfully: the message is not delivered to this group again."""
        ...

    async def nack(self, *, delay: float = 0.0) -> None:
        """Settle unsuccessfully: redeliver to the group after ``delay`` seconds."""
        ...

    async def dead_letter(self, reason: str) -> None:
        """Move the message to the dead-letter place with ``reason``; never redelivered."""
        ...


@runtime_checkable
class Transport(Protocol):
    """Publishes messages to topics and delivers them to consumer groups.

    Contract shared by every implementation:

    * **At-least-once.** A published message is delivered to every consumer group
      subscribed to its topic (fan-out across groups) and to one consumer within a
      group (competing consumers), again and again until it is acked or
      dead-lettered. Groups see messages published after they first subscribed.
    * **Publish.** When `publish` returns, the broker has accepted every message
      (confirmed and, where ``features.persistent``, persisted); otherwise it raises
      `PublishError` or `TransportUnavailableError` and the caller may retry (the
      message id deduplicates where the broker can).
    * **Size.** A body larger than ``features.max_payload`` raises
      `MessageTooLargeError` before anything is sent.
    * **Task safety.** `publish` may be called from many tasks at once.
    * **close()** is idempotent. It ends every subscription's iterator cleanly;
      deliveries not yet settled are redelivered later. Calls after close raise
      `TransportClosedError`.
    * **Consumers stopping.** Closing a subscription's iterator (``aclose()``) gives
      its unsettled deliveries back to the group, like a consumer dying.

    Optional method, not part of the protocol check: ``async def declare(topic,
    *, group)`` creates the group (stream group, durable consumer, bound queue)
    so that it keeps every message published from then on, before anyone
    iterates. `EventBus.start` calls it when present; the contract suite's
    ``prepare_group`` hook does too.
    """

    @property
    def features(self) -> TransportFeatures:
        """What this transport guarantees (read by the contract suite and the bus)."""
        ...

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` (in order) and return once the broker accepted them."""
        ...

    def subscribe(self, topic: str, *, group: str) -> AsyncIterator[Delivery]:
        """Iterate deliveries of ``topic`` for consumer ``group``.

        The group (and whatever the broker needs for it) is created on first use.
        The iterator ends when the transport is closed or the iteration is cancelled.
        """
        ...

    async def close(self) -> None:
        """Stop all subscriptions and release connections; idempotent."""
        ...
