"""Dead letters: events a consumer group gave up on, kept with the reason, for replay.

The bus dead-letters a delivery when it cannot be decoded (hostile or corrupt
input), when its handler raised a non-retryable error, or when it failed on every
delivery up to the redelivery limit. The bus first stores a `DeadLetter` in its
`DeadLetterStore` (with the raw message, the reason, the error as data and the
counts), then settles the delivery with the transport's ``dead_letter`` so that
the broker never redelivers it. `EventBus.replay` runs a stored letter through
its group's handler again and removes it on success.

Errors are stored as data (``{"type": ..., "message": ...}``), never as pickled
objects, and never rebuilt from module names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypedDict, runtime_checkable

from sagaflow.transports.base import Message

__all__ = ["DeadLetter", "DeadLetterStore", "ErrorData", "MemoryDeadLetterStore", "error_data"]

_MAX_ERROR_MESSAGE = 2000


class ErrorData(TypedDict):
    """An error kept as data: its class path and its message (truncated)."""

    type: str
    message: str


def error_data(error: BaseException) -> ErrorData:
    """Return ``error`` as data: ``{"type": "module.Class", "message": str(error)}``."""
    cls = type(error)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(error)[:_MAX_ERROR_MESSAGE],
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One message a consumer group gave up on.

    Attributes:
        id: ``"<group>/<message id>"``; dead-lettering the same message for the same
            group again replaces the letter.
        group: The consumer group that gave up.
        topic: The topic the message came from.
        message: The raw message, exactly as delivered (never decoded again here).
        reason: Why it was dead-lettered, for humans.
        error: The last error as data, when there was one.
        event_type: The ``ce-type`` header, when present.
        deliveries: How many times the transport delivered it to the group.
        attempts: How many times the handler ran during the last delivery
            (0 when the message could not be decoded).
        time: When it was dead-lettered (seconds since the epoch).
    """

    id: str
    group: str
    topic: str
    message: Message
    reason: str
    error: ErrorData | None
    event_type: str | None
    deliveries: int
    attempts: int
    time: float


@runtime_checkable
class DeadLetterStore(Protocol):
    """Where the bus keeps dead letters. Task-safe; durable implementations may follow.

    Letters are listed oldest first.
    """

    async def add(self, letter: DeadLetter) -> None:
        """Store ``letter``, replacing any letter with the same id."""
        ...

    async def get(self, letter_id: str) -> DeadLetter | None:
        """Return the letter with ``letter_id``, or ``None``."""
        ...

    async def list(
        self, *, group: str | None = None, limit: int | None = None
    ) -> Sequence[DeadLetter]:
        """Return stored letters, oldest first, optionally of one group only."""
        ...

    async def remove(self, letter_id: str) -> bool:
        """Delete a letter; return whether it existed."""
        ...


class MemoryDeadLetterStore:
    """Dead letters kept in a dictionary, oldest first; lost when the process ends."""

    __slots__ = ("_letters",)

    def __init__(self) -> None:
        self._letters: dict[str, DeadLetter] = {}

    async def add(self, letter: DeadLetter) -> None:
        """Store ``letter`` (a replaced letter moves to the end)."""
        self._letters.pop(letter.id, None)
        self._letters[letter.id] = letter

    async def get(self, letter_id: str) -> DeadLetter | None:
        """Return the letter with ``letter_id``, or ``None``."""
        return self._letters.get(letter_id)

    async def list(
        self, *, group: str | None = None, limit: int | None = None
    ) -> Sequence[DeadLetter]:
        """Return letters oldest first, optionally of one ``group``, at most ``limit``."""
        letters = [d for d in self._letters.values() if group is None or d.group == group]
        return letters if limit is None else letters[:limit]

    async def remove(self, letter_id: str) -> bool:
        """Delete a letter; return whether it existed."""
        return self._letters.pop(letter_id, None) is not None

    def __len__(self) -> int:
        return len(self._letters)
