"""The envelope being handled, visible to the handler and to what it publishes.

While a handler runs, `current_envelope()` returns the envelope of the event it is
handling (also inside sync handlers, which run in a worker thread with a copy of
the context). `EventBus.publish` reads it to give new events the same
correlation id and the handled event's id as causation id.
"""

from __future__ import annotations

from contextvars import ContextVar

from sagaflow.envelope import Envelope
from sagaflow.events import Event

__all__ = ["current_envelope"]

CURRENT: ContextVar[Envelope[Event] | None] = ContextVar("sagaflow_current_envelope", default=None)


def current_envelope() -> Envelope[Event] | None:
    """Return the envelope of the event being handled, or ``None`` outside a handler."""
    return CURRENT.get()
