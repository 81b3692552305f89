"""Choreography: services react to typed events and emit their own, with no coordinator.

The public names of this package:

* `EventBus` publishes events and runs handlers through the reliable pipeline
  (tracing/middleware → inbox dedupe → in-process retry → handler; then
  redelivery with delay, capped; then dead-letter with the reason).
* `Subscription`, `BusStats`: what `EventBus.subscribe` returns, and its counters.
* `Inbox` / `MemoryInbox`: per-group dedupe of handled event ids.
* `DeadLetter`, `DeadLetterStore` / `MemoryDeadLetterStore`, `ErrorData`: parked events.
* `Middleware`, `HandleContext`, `HandleNext`, `PublishNext`: cross-cutting hooks.
* `current_envelope()`: the envelope of the event being handled.
"""

from sagaflow.choreography.bus import DEFAULT_REDELIVERY, EventBus
from sagaflow.choreography.context import current_envelope
from sagaflow.choreography.dead_letters import (
    DeadLetter,
    DeadLetterStore,
    ErrorData,
    MemoryDeadLetterStore,
)
from sagaflow.choreography.inbox import Inbox, MemoryInbox
from sagaflow.choreography.middleware import HandleContext, HandleNext, Middleware, PublishNext
from sagaflow.choreography.subscription import BusStats, Subscription

__all__ = [
    "DEFAULT_REDELIVERY",
    "BusStats",
    "DeadLetter",
    "DeadLetterStore",
    "ErrorData",
    "EventBus",
    "HandleContext",
    "HandleNext",
    "Inbox",
    "MemoryDeadLetterStore",
    "MemoryInbox",
    "Middleware",
    "PublishNext",
    "Subscription",
    "current_envelope",
]
