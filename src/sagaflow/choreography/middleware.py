"""Middleware: cross-cutting code around publishing and handling (logging, metrics, tracing).

A middleware is an object with two optional hooks; subclass `Middleware` and
override what you need::

    class Timing(Middleware):
        async def on_handle(self, ctx: HandleContext, call_next: HandleNext) -> None:
            started = time.perf_counter()
            try:
                await call_next(ctx)
            finally:
                print(ctx.envelope.type, ctx.group, time.perf_counter() - started)

* ``on_publish(envelopes, call_next)`` runs once per `EventBus.publish` or
  `EventBus.publish_many` call, before serialization. Pass the envelopes on,
  possibly replaced (``dataclasses.replace(env, traceparent=...)``); not calling
  ``call_next`` drops the publish.
* ``on_handle(ctx, call_next)`` runs once per delivery, outermost in the handler
  pipeline: around the inbox check, the in-process retries and the handler. It
  sees the final outcome: ``call_next`` returns when the event was handled (or was
  a duplicate, ``ctx.duplicate``) and raises the handler's last error otherwise.
  Re-raise it: swallowing it would ack a failed event.

Middlewares run in the order given to the bus, the first one outermost. Hooks a
subclass does not override cost nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from sagaflow.envelope import Envelope
from sagaflow.events import Event

__all__ = ["HandleContext", "HandleNext", "Middleware", "PublishNext"]


class HandleContext:
    """What a handle middleware knows about one delivery being handled.

    Attributes:
        envelope: The decoded envelope.
        group: The consumer group handling it.
        delivery_attempt: The transport's delivery count (1 on first delivery).
        attempts: Handler calls made so far during this delivery.
        duplicate: Set when the inbox found the event already handled.
    """

    __slots__ = ("attempts", "delivery_attempt", "duplicate", "envelope", "group")

    def __init__(self, envelope: Envelope[Event], group: str, delivery_attempt: int) -> None:
        self.envelope = envelope
        self.group = group
        self.delivery_attempt = delivery_attempt
        self.attempts = 0
        self.duplicate = False

    def __repr__(self) -> str:
        return (
            f"<HandleContext {self.envelope.type} id={self.envelope.id!r} group={self.group!r} "
            f"delivery={self.delivery_attempt} attempts={self.attempts}>"
        )


HandleNext = Callable[[HandleContext], Awaitable[None]]
"""The rest of the handler pipeline, as seen by `Middleware.on_handle`."""

PublishNext = Callable[[Sequence[Envelope[Event]]], Awaitable[None]]
"""The rest of the publish path, as seen by `Middleware.on_publish`."""


class Middleware:
    """Base class of bus middleware; both hooks pass through unless overridden."""

    async def on_publish(
        self, envelopes: Sequence[Envelope[Event]], call_next: PublishNext
    ) -> None:
        """Wrap a publish of ``envelopes``; call ``call_next`` to go on."""
        await call_next(envelopes)

    async def on_handle(self, ctx: HandleContext, call_next: HandleNext) -> None:
        """Wrap the handling of one delivery; call ``call_next`` to go on."""
        await call_next(ctx)


def overrides(middleware: Middleware, name: str) -> bool:
    """Return whether ``middleware`` overrides the hook ``name`` of `Middleware`."""
    return getattr(type(middleware), name) is not getattr(Middleware, name)


def chain_handle(middlewares: Sequence[Middleware], innermost: HandleNext) -> HandleNext:
    """Compose the handle hooks around ``innermost``, the first middleware outermost."""
    call = innermost
    for middleware in reversed([m for m in middlewares if overrides(m, "on_handle")]):
        call = _bind_handle(middleware, call)
    return call


def _bind_handle(middleware: Middleware, call_next: HandleNext) -> HandleNext:
    async def call(ctx: HandleContext) -> None:
        await middleware.on_handle(ctx, call_next)

    return call


def chain_publish(middlewares: Sequence[Middleware], innermost: PublishNext) -> PublishNext:
    """Compose the publish hooks around ``innermost``, the first middleware outermost."""
    call = innermost
    for middleware in reversed([m for m in middlewares if overrides(m, "on_publish")]):
        call = _bind_publish(middleware, call)
    return call


def _bind_publish(middleware: Middleware, call_next: PublishNext) -> PublishNext:
    async def call(envelopes: Sequence[Envelope[Event]]) -> None:
        await middleware.on_publish(envelopes, call_next)

    return call
