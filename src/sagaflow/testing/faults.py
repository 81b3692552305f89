"""Fault injection for saga steps, compensations, event handlers and transports.

Everything here is deterministic: a `Fault` names the attempts that misbehave,
and the random variants draw from a seeded generator, so a failing test replays
exactly.

Saga steps and compensations:

    faults = {"charge_payment": Fault.raise_on(1, 2), "ship_order": Fault.timeout_on(1)}
    saga = inject_faults(
        order_saga, steps=faults, compensations={"reserve_stock": Fault.hang_on(1)}
    )

Event handlers (attempts are counted per event id):

    bus.subscribe(OrderPlaced, faulty(handler, Fault.raise_on(1)), group="inventory")

Transports (duplicates, delays, reordering, deliveries dropped before ack):

    transport = FaultyTransport(MemoryTransport(), seed=7, duplicate=0.2, drop_before_ack=0.1)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sagaflow.clock import Clock, SystemClock
from sagaflow.orchestration.context import StepContext
from sagaflow.orchestration.definition import Saga, Step, StepFunction, StepResult
from sagaflow.transports.base import Delivery, Message, Transport, TransportFeatures

__all__ = [
    "Fault",
    "FaultKind",
    "FaultyTransport",
    "InjectedFault",
    "faulty",
    "inject_faults",
]

E = TypeVar("E")


class InjectedFault(RuntimeError):
    """The error raised by an injected ``raise`` fault (unless another one is given)."""


class FaultKind(enum.StrEnum):
    """What an injected fault does to an attempt."""

    RAISE = "raise"
    """The attempt raises (a clean failure: no effect)."""
    TIMEOUT = "timeout"
    """The attempt takes effect, then sleeps far past any timeout (outcome unknown)."""
    HANG = "hang"
    """The attempt hangs before any effect until it is cancelled."""


@dataclass(frozen=True)
class Fault:
    """Which attempts of one callable misbehave, and how.

    Attributes:
        attempts: Attempt numbers (1-based) to fault, with the fault for each.
        error: The exception raised by RAISE faults (default `InjectedFault`).
        probability: For random faults: the chance that any attempt faults.
        kinds: For random faults: the kinds to choose from.
        seed: For random faults: the generator's seed.
    """

    attempts: Mapping[int, FaultKind] = field(default_factory=dict)
    error: BaseException | None = None
    probability: float = 0.0
    kinds: tuple[FaultKind, ...] = (FaultKind.RAISE,)
    seed: int = 0

    @classmethod
    def raise_on(cls, *attempts: int, error: BaseException | None = None) -> Fault:
        """Raise ``error`` (default `InjectedFault`) on these attempts."""
        return cls(attempts=dict.fromkeys(attempts, FaultKind.RAISE), error=error)

    @classmethod
    def timeout_on(cls, *attempts: int) -> Fault:
        """Take effect, then sleep past the timeout, on these attempts."""
        return cls(attempts=dict.fromkeys(attempts, FaultKind.TIMEOUT))

    @classmethod
    def hang_on(cls, *attempts: int) -> Fault:
        """Hang (without effect) until cancelled, on these attempts."""
        return cls(attempts=dict.fromkeys(attempts, FaultKind.HANG))

    @classmethod
    def always(
        cls, kind: FaultKind = FaultKind.RAISE, *, error: BaseException | None = None
    ) -> Fault:
        """Fault every attempt."""
        return cls(probability=1.0, kinds=(kind,), error=error)

    @classmethod
    def random(
        cls,
        probability: float,
        *,
        seed: int,
        kinds: Sequence[FaultKind] = (FaultKind.RAISE,),
        error: BaseException | None = None,
    ) -> Fault:
        """Fault each attempt with ``probability``, reproducibly from ``seed``."""
        return cls(probability=probability, kinds=tuple(kinds), seed=seed, error=error)

    def decide(self, attempt: int, key: str = "") -> FaultKind | None:
        """Return the fault for ``attempt`` (of the call identified by ``key``), if any."""
        if attempt in self.attempts:
            return self.attempts[attempt]
        if self.probability <= 0:
            return None
        rng = random.Random(f"{self.seed}:{key}:{attempt}")
        if rng.random() >= self.probability:
            return None
        return rng.choice(self.kinds)

    def exception(self, where: str, attempt: int) -> BaseException:
        """The exception a RAISE fault throws."""
        if self.error is not None:
            return self.error
        return InjectedFault(f"injected fault in {where} (attempt {attempt})")


_FOREVER = 10**9


async def _misbehave(kind: FaultKind, fault: Fault, where: str, attempt: int, clock: Clock) -> None:
    """Apply a fault that strikes before the call (RAISE, HANG)."""
    if kind is FaultKind.RAISE:
        raise fault.exception(where, attempt)
    if kind is FaultKind.HANG:
        await asyncio.Event().wait()


def _wrap_step_function(
    function: StepFunction, is_async: bool, fault: Fault, where: str, clock: Clock
) -> Callable[[StepContext[Any]], Awaitable[StepResult]]:
    async def wrapped(ctx: StepContext[Any]) -> StepResult:
        kind = fault.decide(ctx.attempt, f"{ctx.saga_id}:{where}")
        if kind is not None and kind is not FaultKind.TIMEOUT:
            await _misbehave(kind, fault, where, ctx.attempt, clock)
        if is_async:
            result: StepResult = await function(ctx)  # type: ignore[misc]
        else:
            result = await asyncio.to_thread(function, ctx)  # type: ignore[arg-type]
        if kind is FaultKind.TIMEOUT:
            await clock.sleep(_FOREVER)  # the effect happened; the reply never comes
        return result

    wrapped.__name__ = getattr(function, "__name__", "step")
    return wrapped


def inject_faults(
    saga: Saga[Any],
    *,
    steps: Mapping[str, Fault] | None = None,
    compensations: Mapping[str, Fault] | None = None,
    clock: Clock | None = None,
) -> Saga[Any]:
    """Return a copy of ``saga`` whose named actions and compensations misbehave.

    The copy has the same name, version and resolved retry policies, so it runs
    (and recovers) exactly like the original apart from the injected faults.

    Args:
        saga: The definition to copy.
        steps: Faults for step actions, by step name.
        compensations: Faults for compensations, by step name.
        clock: The clock TIMEOUT faults sleep on (use the orchestrator's).

    Raises:
        KeyError: A name is not a step of ``saga``.
    """
    clock = clock or SystemClock()
    steps = dict(steps or {})
    compensations = dict(compensations or {})
    names = {step.name for step in saga.steps()}
    unknown = (set(steps) | set(compensations)) - names
    if unknown:
        raise KeyError(f"not steps of saga {saga.name!r}: {sorted(unknown)}")

    def rebuild(step: Step) -> Step:
        changes: dict[str, Any] = {}
        if step.name in steps:
            changes["action"] = _wrap_step_function(
                step.action, step.action_is_async, steps[step.name], step.name, clock
            )
        if step.name in compensations and step.compensate is not None:
            changes["compensate"] = _wrap_step_function(
                step.compensate,
                step.compensate_is_async,
                compensations[step.name],
                f"{step.name}:compensate",
                clock,
            )
        return dataclasses.replace(step, **changes) if changes else step

    return saga.map_steps(rebuild)


def faulty(
    handler: Callable[[E], Awaitable[object]],
    fault: Fault,
    *,
    clock: Clock | None = None,
) -> Callable[[E], Awaitable[object]]:
    """Wrap an async event handler so chosen attempts fail, time out or hang.

    Attempts are counted per event id (across in-process retries and
    redeliveries), so ``Fault.raise_on(1, 2)`` fails the first two tries of
    every event.
    """
    from sagaflow.choreography.context import current_envelope

    clock = clock or SystemClock()
    counts: dict[str, int] = {}
    name = getattr(handler, "__name__", "handler")

    @functools.wraps(handler)
    async def wrapped(event: E) -> object:
        envelope = current_envelope()
        event_id = envelope.id if envelope is not None else str(id(event))
        attempt = counts[event_id] = counts.get(event_id, 0) + 1
        kind = fault.decide(attempt, f"{name}:{event_id}")
        if kind is not None and kind is not FaultKind.TIMEOUT:
            await _misbehave(kind, fault, name, attempt, clock)
        result = await handler(event)
        if kind is FaultKind.TIMEOUT:
            await clock.sleep(_FOREVER)
        return result

    return wrapped


class FaultyTransport:
    """A `Transport` wrapper that duplicates, delays, reorders or drops deliveries.

    All choices come from one seeded generator. A *dropped* delivery is one whose
    consumer "dies" before acking: it is handed back (``nack``) and the broker
    delivers it again, exactly what happens when a process crashes mid-handle.

    Args:
        inner: The real transport.
        seed: Seed of every random choice.
        duplicate: Chance that a published message is published twice.
        delay: Chance that a delivery is held back by ``delay_seconds``.
        delay_seconds: How long a delayed delivery waits (on ``clock``).
        reorder: Chance that a delivery is held until the next one has gone first.
        drop_before_ack: Chance that a delivery is lost before its handler runs.
        clock: Time source for delays.
    """

    def __init__(
        self,
        inner: Transport,
        *,
        seed: int = 0,
        duplicate: float = 0.0,
        delay: float = 0.0,
        delay_seconds: float = 0.05,
        reorder: float = 0.0,
        drop_before_ack: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self.inner = inner
        self.rng = random.Random(seed)
        self.duplicate = duplicate
        self.delay = delay
        self.delay_seconds = delay_seconds
        self.reorder = reorder
        self.drop_before_ack = drop_before_ack
        self.clock = clock or SystemClock()
        self.counts = {"duplicated": 0, "delayed": 0, "reordered": 0, "dropped": 0}

    @property
    def features(self) -> TransportFeatures:
        """The inner transport's features, less ordering when reordering is on."""
        features = self.inner.features
        if self.reorder > 0 or self.delay > 0:
            return dataclasses.replace(features, ordered=False)
        return features

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish, sending some messages twice."""
        out: list[Message] = []
        for message in messages:
            out.append(message)
            if self.rng.random() < self.duplicate:
                self.counts["duplicated"] += 1
                out.append(message)
        await self.inner.publish(out)

    async def subscribe(self, topic: str, *, group: str) -> AsyncIterator[Delivery]:
        """Deliver from the inner transport, misbehaving as configured."""
        queue: asyncio.Queue[Delivery | None] = asyncio.Queue()
        pump = asyncio.ensure_future(self._pump(topic, group, queue))
        held: Delivery | None = None
        try:
            while True:
                if held is None:
                    delivery = await queue.get()
                else:
                    try:  # a held delivery goes out after the next one, or after a pause
                        delivery = await asyncio.wait_for(queue.get(), self.delay_seconds)
                    except TimeoutError:
                        yield held
                        held = None
                        continue
                if delivery is None:
                    break
                if held is None and self.rng.random() < self.reorder:
                    self.counts["reordered"] += 1
                    held = delivery
                    continue
                yield delivery
                if held is not None:
                    yield held
                    held = None
            if held is not None:
                yield held
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _pump(self, topic: str, group: str, queue: asyncio.Queue[Delivery | None]) -> None:
        try:
            async for delivery in self.inner.subscribe(topic, group=group):
                if self.rng.random() < self.drop_before_ack:
                    self.counts["dropped"] += 1  # its consumer "died" before acking
                    await delivery.nack()
                    continue
                if self.rng.random() < self.delay:
                    self.counts["delayed"] += 1
                    await self.clock.sleep(self.delay_seconds)
                await queue.put(delivery)
        finally:
            queue.put_nowait(None)

    async def declare(self, topic: str, *, group: str) -> None:
        """Pass `declare` through when the inner transport has it."""
        declare = getattr(self.inner, "declare", None)
        if declare is not None:
            await declare(topic, group=group)

    async def close(self) -> None:
        """Close the inner transport."""
        await self.inner.close()
