"""Helpers shared by the saga stores: record encoding, status bookkeeping, names.

Every store keeps record ``data`` as JSON, so every store (the memory one
included) hands back the same shapes: a ``datetime`` written comes back as an ISO
string, a tuple as a list, a pydantic model as a dict. Encoding happens in the
caller's task, before any database work, so an unserializable value fails fast
with `SerializationError` and never leaves half a write behind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic_core

from sagaflow._urls import mask_url
from sagaflow.errors import ConfigurationError, SerializationError
from sagaflow.orchestration.records import RecordKind, SagaRecord, SagaStatus, status_after

__all__ = [
    "ACTIVE_STATUSES",
    "check_create_records",
    "decode_data",
    "encode_data",
    "encode_records",
    "mask_url",
    "normalize_data",
    "saga_name_of",
    "status_change",
    "validate_identifier",
]

# Statuses `claim` hands out: the saga still has work to do.
ACTIVE_STATUSES: tuple[SagaStatus, ...] = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")


def normalize_data(data: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Return ``data`` as plain JSON-compatible Python (what a load gives back).

    NaN and infinities become ``None`` because JSON has no spelling for them.

    Raises:
        SerializationError: ``data`` holds a value that has no JSON form.
    """
    if data is None:
        return None
    try:
        result: dict[str, Any] = pydantic_core.to_jsonable_python(dict(data), inf_nan_mode="null")
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise SerializationError(f"saga record data is not JSON-serializable: {exc}") from exc
    return result


def encode_data(data: Mapping[str, Any] | None) -> str | None:
    """Encode record ``data`` as JSON text (``None`` stays ``None``).

    Raises:
        SerializationError: ``data`` holds a value that has no JSON form.
    """
    if data is None:
        return None
    try:
        return pydantic_core.to_json(dict(data), inf_nan_mode="null").decode()
    except (pydantic_core.PydanticSerializationError, TypeError, ValueError) as exc:
        raise SerializationError(f"saga record data is not JSON-serializable: {exc}") from exc


def encode_records(records: Sequence[SagaRecord]) -> str:
    """Encode records as one JSON array of ``{kind, step, attempt, at, data}`` objects.

    ``data`` is itself JSON *text* (a string inside the array), so that a
    database unpacking the array hands it over untouched: PostgreSQL would
    otherwise refuse an escaped NUL character while unpacking.

    Raises:
        SerializationError: Some record data has no JSON form.
    """
    rows = [
        {
            "kind": RecordKind(r.kind).value,
            "step": r.step,
            "attempt": int(r.attempt),
            "at": float(r.at),
            "data": encode_data(r.data),
        }
        for r in records
    ]
    return pydantic_core.to_json(rows).decode()


def decode_data(text: str | bytes | None) -> dict[str, Any] | None:
    """Decode JSON text written by `encode_data`."""
    if text is None:
        return None
    result: dict[str, Any] = pydantic_core.from_json(text)
    return result


def status_change(records: Sequence[SagaRecord]) -> SagaStatus | None:
    """Return the status ``records`` force, or ``None`` if they leave it unchanged.

    Lets a store update its status column in one statement without reading the
    current status first. The trick: if the records change the status, the result
    of `status_after` no longer depends on the starting status, so starting from
    two different statuses gives the same answer.
    """
    from_running = status_after(SagaStatus.RUNNING, records)
    from_compensating = status_after(SagaStatus.COMPENSATING, records)
    return from_running if from_running is from_compensating else None


def saga_name_of(records: Sequence[SagaRecord]) -> str:
    """Return the definition name recorded in the first (``SAGA_STARTED``) record.

    Anything but a string there (no name recorded) gives ``""``.
    """
    name = (records[0].data or {}).get("saga", "")
    return name if isinstance(name, str) else ""


def check_create_records(records: Sequence[SagaRecord]) -> None:
    """Refuse to create a saga with an empty log.

    Raises:
        ConfigurationError: ``records`` is empty.
    """
    if not records:
        raise ConfigurationError("create() needs at least one record")


def validate_identifier(value: str, what: str) -> str:
    """Return ``value`` if it is safe to splice into SQL as a name, else raise.

    Raises:
        ConfigurationError: ``value`` is not a plain identifier.
    """
    if not _IDENTIFIER.match(value):
        raise ConfigurationError(
            f"{what} {value!r} must be letters, digits and underscores, "
            "not starting with a digit, at most 48 characters"
        )
    return value
