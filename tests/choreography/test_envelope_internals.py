from __future__ import annotations

import dataclasses
import uuid

from sagaflow.envelope import _FIELDS, Envelope, new_event_id


def test_fast_constructor_follows_field_order() -> None:
    assert tuple(f.name for f in dataclasses.fields(Envelope)) == _FIELDS


def test_event_ids_are_uuid4_and_unique() -> None:
    ids = {new_event_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in list(ids)[:50]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert str(parsed) == value
