"""Remote steps: the orchestrator sends a typed command and awaits the service's reply.

With remote steps the orchestrator still owns the order of the saga while the
services run in other processes, reached over any transport through an
`EventBus`:

    remote = RemoteSteps(bus)

    Step(
        "reserve_stock",
        remote.call(
            lambda ctx: ReserveStock(order_id=ctx.state.order_id, sku=ctx.state.sku),
            success=StockReserved,
            failure=StockRejected,
            updates=lambda reply: {"reservation_id": reply.reservation_id},
        ),
        compensate=remote.call(lambda ctx: ReleaseStock(order_id=...), success=StockReleased),
        timeout=10,
    )

and on the service side:

    @command_handler(bus, ReserveStock, group="inventory")
    async def reserve(command: ReserveStock) -> StockReserved | StockRejected: ...

How it works: the command is published with the saga id as correlation id and
the step's idempotency key in the ``idempotency-key`` header. The reply is
matched to the waiting step by its causation id (the command's event id), which
the bus sets for every event published while handling the command. A *success*
reply completes the step; a *failure* reply fails it cleanly (no retry, nothing
to undo); no reply before the step's ``timeout`` leaves the outcome unknown, so
the step is retried or compensated like any other. Because the service
deduplicates by idempotency key and answers a repeated command with the reply it
gave the first time, retries and recovery after a crash are safe.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from sagaflow.choreography.bus import EventBus
from sagaflow.choreography.context import current_envelope
from sagaflow.errors import ConfigurationError, NonRetryableError, SagaError
from sagaflow.events import Event
from sagaflow.orchestration.context import StepContext
from sagaflow.orchestration.definition import StepResult

__all__ = [
    "IDEMPOTENCY_HEADER",
    "MemoryReplyCache",
    "RemoteStepRejected",
    "RemoteSteps",
    "ReplyCache",
    "command_handler",
]

IDEMPOTENCY_HEADER = "idempotency-key"
"""Header carrying the step's idempotency key on every command."""

C = TypeVar("C", bound=Event)
R = TypeVar("R", bound=Event)


class RemoteStepRejected(NonRetryableError, SagaError):
    """The service answered a command with a failure reply; the step failed cleanly.

    Attributes:
        reply: The failure reply event.
    """

    def __init__(self, message: str, *, reply: Event, saga_id: str, step: str) -> None:
        self.reply = reply
        super().__init__(message, saga_id=saga_id, step=step)


class RemoteSteps:
    """Makes step actions that call services over an `EventBus`.

    Create one per orchestrator process. Replies are received by a consumer
    group unique to this instance, so every instance sees every reply and keeps
    the ones it waits for.

    Args:
        bus: The bus connected to the services' transport.
        group: The reply group; default ``sagaflow-replies-<random>``.
    """

    def __init__(self, bus: EventBus, *, group: str | None = None) -> None:
        self.bus = bus
        self.group = group or f"sagaflow-replies-{uuid.uuid4().hex[:12]}"
        self._waiting: dict[str, asyncio.Future[Event]] = {}
        self._subscribed: set[type[Event]] = set()

    def call(
        self,
        command: Callable[[StepContext[Any]], Event],
        *,
        success: type[R],
        failure: type[Event] | tuple[type[Event], ...] = (),
        updates: Callable[[R], StepResult] | None = None,
    ) -> Callable[[StepContext[Any]], Awaitable[StepResult]]:
        """Return a step action (or compensation) that sends a command and awaits its reply.

        Args:
            command: Builds the command event from the step context.
            success: The reply event type that means "done".
            failure: Reply types that mean "refused" (the step fails cleanly).
            updates: Turns the success reply into state updates (default: none).

        Returns:
            An async callable to pass as a `Step` action or compensation. Give the
            step a ``timeout``: without one, a lost reply waits forever.
        """
        failures = failure if isinstance(failure, tuple) else (failure,)
        reply_types: tuple[type[Event], ...] = (success, *failures)
        for reply_type in reply_types:
            self._listen(reply_type)

        async def remote_action(ctx: StepContext[Any]) -> StepResult:
            reply = await self._send(ctx, command(ctx))
            if isinstance(reply, success):
                return updates(reply) if updates is not None else None
            raise RemoteStepRejected(
                f"{type(reply).__name__}: {_describe(reply)}",
                reply=reply,
                saga_id=ctx.saga_id,
                step=ctx.step,
            )

        remote_action.__name__ = f"remote_{getattr(success, '__name__', 'call')}"
        return remote_action

    def _listen(self, reply_type: type[Event]) -> None:
        if reply_type in self._subscribed:
            return
        if not (isinstance(reply_type, type) and issubclass(reply_type, Event)):
            raise ConfigurationError(f"reply types must be Event classes, got {reply_type!r}")
        self._subscribed.add(reply_type)
        self.bus.subscribe(reply_type, self._on_reply, group=self.group)

    async def _send(self, ctx: StepContext[Any], command: Event) -> Event:
        envelope = self.bus.envelope(
            command,
            correlation_id=ctx.saga_id,
            subject=ctx.saga_id,
            key=ctx.saga_id,
            headers={IDEMPOTENCY_HEADER: ctx.idempotency_key},
        )
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiting[envelope.id] = future
        try:
            await self.bus.publish_many([envelope])
            return await future
        finally:
            self._waiting.pop(envelope.id, None)

    async def _on_reply(self, reply: Event) -> None:
        envelope = current_envelope()
        if envelope is None or envelope.causation_id is None:
            return
        future = self._waiting.get(envelope.causation_id)
        if future is not None and not future.done():
            future.set_result(reply)


def _describe(reply: Event) -> str:
    fields = reply.model_dump(mode="json")
    for name in ("reason", "message", "error"):
        if name in fields:
            return str(fields[name])
    return str(fields)


class ReplyCache(Protocol):
    """Where a command handler keeps the reply it gave for each idempotency key."""

    async def get(self, key: str) -> Event | None:
        """Return the reply stored for ``key``, if any."""
        ...

    async def put(self, key: str, reply: Event) -> None:
        """Remember ``reply`` for ``key``."""
        ...


class MemoryReplyCache:
    """An in-process `ReplyCache` bounded to the most recent ``capacity`` keys.

    A service that must answer repeats across restarts should keep replies in its
    own database, in the same transaction as its state change.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._replies: OrderedDict[str, Event] = OrderedDict()
        self._capacity = capacity

    async def get(self, key: str) -> Event | None:
        """Return the cached reply for ``key``."""
        return self._replies.get(key)

    async def put(self, key: str, reply: Event) -> None:
        """Cache ``reply``, evicting the oldest keys past capacity."""
        self._replies[key] = reply
        self._replies.move_to_end(key)
        while len(self._replies) > self._capacity:
            self._replies.popitem(last=False)


def command_handler(
    bus: EventBus,
    command_type: type[C],
    *,
    group: str,
    cache: ReplyCache | None = None,
    **subscribe_options: Any,
) -> Callable[[Callable[[C], Awaitable[Event]]], Callable[[C], Awaitable[Event]]]:
    """Turn an async function into a service's command handler that replies.

    The function receives the command and returns the reply event (success or
    failure); the helper publishes it, correlated with the command. A command
    repeated with the same idempotency key gets the cached first reply again,
    without calling the function. Raising (a transient error) lets the bus retry
    and redeliver as for any handler.

    Args:
        bus: The service's bus.
        command_type: The command event class.
        group: The service's consumer group (instances of a service share it).
        cache: Replies by idempotency key (default: a `MemoryReplyCache`).
        **subscribe_options: Passed to `EventBus.subscribe` (retry, concurrency...).
    """
    replies: ReplyCache = cache if cache is not None else MemoryReplyCache()

    def decorate(function: Callable[[C], Awaitable[Event]]) -> Callable[[C], Awaitable[Event]]:
        async def handle(command: C) -> None:
            envelope = current_envelope()
            headers: Mapping[str, str] = envelope.headers if envelope is not None else {}
            key = headers.get(IDEMPOTENCY_HEADER)
            reply = await replies.get(key) if key else None
            if reply is None:
                reply = await function(command)
                if not isinstance(reply, Event):
                    raise ConfigurationError(
                        f"command handler {function.__name__} must return a reply Event, "
                        f"got {type(reply).__name__}"
                    )
                if key:
                    await replies.put(key, reply)
            await bus.publish(reply)

        handle.__name__ = getattr(function, "__name__", "command_handler")
        bus.subscribe(command_type, handle, group=group, **subscribe_options)
        return function

    return decorate
