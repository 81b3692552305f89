"""Every exception sagaflow raises, in one tree.

Catch ``SagaflowError`` to catch them all; catch a branch to handle one kind of
trouble. Each error carries its context as attributes (saga id, step, attempt,
versions) so that callers never parse messages. ``retryable`` says whether doing
the same thing again may succeed (a lost connection) or cannot (a bad
definition); retry policies and transports read it.

```
SagaflowError
├── ConfigurationError ............ a definition or option is invalid; fix the code
│   ├── MissingDependencyError .... an optional client is not installed; names the extra
│   └── DuplicateEventTypeError ... two event classes claim one wire name
├── NonRetryableError ............. raise from a step or handler to fail without retrying
├── SerializationError ............ a message cannot be encoded or decoded
│   ├── MessageTooLargeError ...... over the size limit (checked before decoding)
│   ├── SignatureError ............ HMAC signature missing, unknown key or mismatch
│   ├── UnknownEventTypeError ..... no event class registered for a wire name
│   └── SchemaError ............... payload does not validate against the event class
├── SagaError ..................... something went wrong inside a saga run
│   ├── StepFailedError ........... a step failed beyond its retry policy
│   ├── StepTimeoutError .......... one attempt of a step exceeded its timeout
│   ├── CompensationFailedError ... a compensation failed beyond its retry policy
│   ├── SagaDeadlineExceededError . the saga ran past its deadline
│   ├── SagaCancelledError ........ the saga was cancelled by its caller
│   ├── SagaStateError ............ the saga is not in a state that allows the operation
│   └── DefinitionMismatchError ... recovery found a log written by another definition
├── StoreError .................... a saga store (or other durable store) failed
│   ├── StoreUnavailableError ..... the database could not be reached (retryable)
│   ├── ConcurrencyError .......... optimistic concurrency check failed
│   │   └── FencedError ........... the writer's lease was taken over by another owner
│   ├── SagaNotFoundError ......... no saga with that id
│   ├── SagaAlreadyExistsError .... a saga with that id was already started
│   └── SchemaVersionError ........ the database schema is newer than this code knows
└── TransportError ................ a transport failed
    ├── TransportUnavailableError . the broker could not be reached (retryable)
    ├── PublishError .............. the broker refused or did not confirm a publish
    └── TransportClosedError ...... the transport was used after close()
```
"""

from __future__ import annotations

__all__ = [
    "CompensationFailedError",
    "ConcurrencyError",
    "ConfigurationError",
    "DefinitionMismatchError",
    "DuplicateEventTypeError",
    "FencedError",
    "MessageTooLargeError",
    "MissingDependencyError",
    "NonRetryableError",
    "PublishError",
    "SagaAlreadyExistsError",
    "SagaCancelledError",
    "SagaDeadlineExceededError",
    "SagaError",
    "SagaStateError",
    "SagaNotFoundError",
    "SagaflowError",
    "SchemaError",
    "SchemaVersionError",
    "SerializationError",
    "SignatureError",
    "StepFailedError",
    "StepTimeoutError",
    "StoreError",
    "StoreUnavailableError",
    "TransportClosedError",
    "TransportError",
    "TransportUnavailableError",
    "UnknownEventTypeError",
]


class SagaflowError(Exception):
    """Root of every error raised by sagaflow.

    Attributes:
        retryable: Whether repeating the failed operation may succeed.
    """

    retryable: bool = False


# --- configuration -------------------------------------------------------------------


class ConfigurationError(SagaflowError, ValueError):
    """A definition, option or argument is invalid; the message says what to fix."""


class MissingDependencyError(ConfigurationError, ImportError):
    """An optional client library is not installed.

    Attributes:
        package: The missing importable module.
        extra: The sagaflow extra that installs it (``pip install "sagaflow[extra]"``).
    """

    def __init__(self, package: str, extra: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f'{package!r} is not installed; install it with: pip install "sagaflow[{extra}]"'
        )


class DuplicateEventTypeError(ConfigurationError):
    """Two different event classes were registered under one wire name.

    Attributes:
        type_name: The contested wire name.
    """

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(message)


# --- user-raised ---------------------------------------------------------------------


class NonRetryableError(SagaflowError):
    """Raise from a step, compensation or handler to fail at once, without retries.

    Every `RetryPolicy` gives up on it regardless of its predicates.
    """


# --- serialization -------------------------------------------------------------------


class SerializationError(SagaflowError):
    """A message could not be encoded or decoded."""


class MessageTooLargeError(SerializationError):
    """A message is larger than the configured limit.

    Attributes:
        size: The message size in bytes.
        limit: The configured maximum in bytes.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"message of {size} bytes exceeds the limit of {limit} bytes")


class SignatureError(SerializationError):
    """A signed message failed verification; its payload was not decoded."""


class UnknownEventTypeError(SerializationError):
    """No event class is registered under a wire name.

    Attributes:
        type_name: The unknown wire name.
    """

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        # The name comes off the wire: a hostile one must not bloat logs and letters.
        shown = (
            type_name if len(type_name) <= 200 else f"{type_name[:200]}... ({len(type_name)} chars)"
        )
        super().__init__(f"no event class is registered for type {shown!r}")


class SchemaError(SerializationError):
    """A payload does not validate against its event class or state model."""


# --- sagas ---------------------------------------------------------------------------


class SagaError(SagaflowError):
    """Something went wrong while running a saga.

    Attributes:
        saga_id: The saga instance, when known.
        step: The step concerned, when there is one.
        attempt: The attempt number (1-based), when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        saga_id: str | None = None,
        step: str | None = None,
        attempt: int | None = None,
    ) -> None:
        self.saga_id = saga_id
        self.step = step
        self.attempt = attempt
        super().__init__(message)


class StepFailedError(SagaError):
    """A step failed and its retry policy gave up; the cause is chained."""


class StepTimeoutError(SagaError):
    """One attempt of a step or compensation exceeded its timeout.

    Its outcome is unknown: the effect may have happened.
    """

    retryable = True


class CompensationFailedError(SagaError):
    """A compensation failed beyond its retry policy; the saga is parked as FAILED."""


class SagaDeadlineExceededError(SagaError):
    """The saga did not finish its forward path before its deadline."""


class SagaCancelledError(SagaError):
    """The saga's caller cancelled it; its compensations ran."""


class SagaStateError(SagaError):
    """The saga is not in a state that allows the operation (e.g. resuming one not parked).

    Attributes:
        status: The saga's current status, as a string.
    """

    def __init__(self, message: str, *, saga_id: str, status: str) -> None:
        self.status = status
        super().__init__(message, saga_id=saga_id)


class DefinitionMismatchError(SagaError):
    """A saga log was written by a definition that the given one cannot continue.

    Attributes:
        expected: ``name@version`` recorded in the log.
        actual: ``name@version`` of the definition offered.
    """

    def __init__(self, message: str, *, saga_id: str, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(message, saga_id=saga_id)


# --- stores --------------------------------------------------------------------------


class StoreError(SagaflowError):
    """A store operation failed."""


class StoreUnavailableError(StoreError):
    """The store's database could not be reached; the operation may be retried."""

    retryable = True


class ConcurrencyError(StoreError):
    """An optimistic concurrency check failed: someone else wrote first.

    Attributes:
        saga_id: The saga concerned.
        expected_version: The version the writer based its change on.
        actual_version: The version found in the store, when known.
    """

    def __init__(
        self,
        saga_id: str,
        *,
        expected_version: int | None = None,
        actual_version: int | None = None,
        message: str | None = None,
    ) -> None:
        self.saga_id = saga_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        super().__init__(
            message
            or f"saga {saga_id!r}: expected version {expected_version}, found {actual_version}"
        )


class FencedError(ConcurrencyError):
    """The writer's lease on a saga has passed to another owner; it must stop.

    Attributes:
        fencing_token: The token the writer presented.
        current_token: The token now in force.
    """

    def __init__(self, saga_id: str, *, fencing_token: int, current_token: int) -> None:
        self.fencing_token = fencing_token
        self.current_token = current_token
        super().__init__(
            saga_id,
            message=(
                f"saga {saga_id!r}: fencing token {fencing_token} is stale "
                f"(current {current_token}); another worker owns this saga"
            ),
        )


class SagaNotFoundError(StoreError, KeyError):
    """No saga with this id exists in the store.

    Attributes:
        saga_id: The id looked up.
    """

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"no saga with id {saga_id!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class SagaAlreadyExistsError(StoreError):
    """A saga with this id was already started.

    Attributes:
        saga_id: The contested id.
    """

    def __init__(self, saga_id: str) -> None:
        self.saga_id = saga_id
        super().__init__(f"a saga with id {saga_id!r} already exists")


class SchemaVersionError(StoreError):
    """The database holds a schema newer than this version of sagaflow knows.

    Attributes:
        found: The schema version in the database.
        supported: The newest version this code supports.
    """

    def __init__(self, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(
            f"database schema version {found} is newer than supported version {supported}; "
            "upgrade sagaflow"
        )


# --- transports ----------------------------------------------------------------------


class TransportError(SagaflowError):
    """A transport operation failed."""


class TransportUnavailableError(TransportError):
    """The broker could not be reached; the operation may be retried."""

    retryable = True


class PublishError(TransportError):
    """The broker refused a message or did not confirm it."""

    retryable = True


class TransportClosedError(TransportError):
    """The transport was used after `close()`."""
