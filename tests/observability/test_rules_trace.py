"""Rules of FlowTrace and its renderers (text, Mermaid, SVG/HTML) no other test exercised.

Each test builds a flow from hand-written journal entries, so that one rule of
`sagaflow.observability.trace` / `.mermaid` / `.html` is checked in isolation.
"""

from __future__ import annotations

import re

from sagaflow.observability import (
    EntryKind,
    FlowTrace,
    JournalEntry,
    render_html,
    render_text,
    saga_flowchart,
    sequence_diagram,
)
from sagaflow.observability.html import sequence_svg
from sagaflow.observability.mermaid import step_states
from sagaflow.observability.trace import chain_of
from sagaflow.orchestration.records import RecordKind, SagaRecord


def e(kind: EntryKind, at: float, **fields: object) -> JournalEntry:
    return JournalEntry(correlation_id="f", kind=kind, at=at, **fields)  # type: ignore[arg-type]


def handle(at: float, event_id: str, group: str, **fields: object) -> JournalEntry:
    values: dict[str, object] = {
        "event_type": "t.a",
        "attempt": 1,
        "attempts": 1,
        "outcome": "acked",
    }
    values.update(fields)
    return e(EntryKind.HANDLE, at, event_id=event_id, group=group, **values)


def test_an_event_whose_publisher_does_not_journal_starts_at_its_first_handling():
    # No publish entry: the node is timed by its earliest handling or dead letter.
    trace = FlowTrace.build(
        [
            handle(5.0, "x", "late-group"),
            e(EntryKind.DEAD_LETTER, 3.0, event_id="x", event_type="t.a", group="early"),
        ]
    )
    node = trace.events["x"]
    assert node.at == 3.0
    assert node.publisher == "unknown"
    assert trace.roots == [node]
    assert "t.a [x] by unknown +0.0 ms" in render_text(trace)


def test_dead_letters_are_attached_shown_and_counted_apart_from_failures():
    trace = FlowTrace.build(
        [
            e(EntryKind.PUBLISH, 1.0, service="orders", event_id="ev1", event_type="t.a"),
            handle(
                1.1,
                "ev1",
                "pay",
                attempts=3,
                outcome="failed",
                error_type="Boom",
                error_message="no",
            ),
            e(
                EntryKind.DEAD_LETTER,
                1.2,
                service="payment",
                event_id="ev1",
                event_type="t.a",
                group="pay",
                attempt=1,
                attempts=3,
                outcome="dead_lettered",
                error_type="Boom",
                error_message="no",
                detail="failed 3 times; giving up",
            ),
            # A dead letter that says nothing of its error still counts as one.
            e(EntryKind.DEAD_LETTER, 1.3, event_id="ev1", event_type="t.a", group="audit"),
        ]
    )
    node = trace.events["ev1"]
    assert [d.group for d in node.dead_letters] == ["pay", "audit"]
    text = render_text(trace)
    # One failed handling; the two dead letters are counted on their own.
    assert "(1 events, 1 handlings, 1 failed, 2 dead-lettered;" in text
    assert "✗ pay: DEAD-LETTERED: failed 3 times; giving up" in text
    timeline = [line for line in text.splitlines() if "dead_letter" in line]
    assert timeline[0].endswith("dead_lettered, Boom: no, failed 3 times; giving up")
    diagram = sequence_diagram(trace)
    assert "Note over a_pay: ✗ dead-lettered: Boom" in diagram
    assert "Note over a_audit: ✗ dead-lettered: gave up" in diagram


def test_an_event_nobody_handled_is_a_note_over_its_publisher():
    trace = FlowTrace.build(
        [e(EntryKind.PUBLISH, 1.0, service="orders", event_id="ev1", event_type="t.lonely")]
    )
    assert [(i.source, i.target, i.text) for i in trace.sequence()] == [
        ("orders", None, "published t.lonely")
    ]
    assert "Note over a_orders: published t.lonely" in sequence_diagram(trace)


def test_delivery_labels_say_redelivery_duplicate_and_in_process_retries():
    trace = FlowTrace.build(
        [
            e(EntryKind.PUBLISH, 1.0, service="orders", event_id="ev1", event_type="t.a"),
            handle(1.1, "ev1", "a", attempts=3),
            handle(1.2, "ev1", "b", attempt=2, outcome="duplicate"),
            handle(1.3, "ev1", "c", attempts=2, outcome="failed", error_type="Boom"),
        ]
    )
    texts = [i.text for i in trace.sequence() if i.target is not None]
    assert texts == [
        "t.a (3 attempts)",
        "t.a (delivery 2) (duplicate)",
        "t.a: Boom after 2 attempt(s)",
    ]
    diagram = sequence_diagram(trace)
    assert "a_orders-xa_c: t.a: Boom after 2 attempt(s)" in diagram
    # b's first delivery left no entry: the trace says so.
    assert "Note over a_b: ✗ 1 earlier delivery lost (consumer crashed?)" in diagram


def test_a_remote_steps_command_names_its_step_and_local_steps_are_calls():
    trace = FlowTrace.build(
        [
            e(EntryKind.SAGA_STARTED, 1.0, service="orders", detail="order"),
            e(EntryKind.STEP_STARTED, 1.1, service="orders", step="charge", attempt=1),
            e(
                EntryKind.PUBLISH,
                1.2,
                service="orders",
                event_id="cmd1",
                event_type="shop.cmd.charge.v1",
                step="charge",
            ),
            handle(1.3, "cmd1", "payment", event_type="shop.cmd.charge.v1"),
            e(EntryKind.STEP_SUCCEEDED, 1.4, service="orders", step="charge", attempt=1),
            e(EntryKind.STEP_STARTED, 1.5, service="orders", step="local", attempt=1),
            e(EntryKind.STEP_SUCCEEDED, 1.6, service="orders", step="local", attempt=1),
            e(EntryKind.SAGA_FINISHED, 1.7, service="orders", detail="order", outcome="completed"),
        ]
    )
    assert "shop.cmd.charge.v1 [cmd1] by orders (step charge)" in render_text(trace)
    rows = [(i.source, i.target, i.text) for i in trace.sequence()]
    assert ("orders", None, "charge done") in rows  # remote: a note
    assert ("orders", "local", "local") in rows  # local: a call to the step
    assert rows[-1] == ("orders", None, "saga order: COMPLETED")
    assert not trace.sequence()[-1].failed


def test_children_published_outside_any_handling_hang_under_the_event():
    # "loose" was published by a group that recorded no handling of its cause.
    trace = FlowTrace.build(
        [
            e(EntryKind.PUBLISH, 1.0, service="s", event_id="root", event_type="t.root"),
            handle(1.1, "root", "g1", event_type="t.root"),
            e(
                EntryKind.PUBLISH,
                1.2,
                event_id="kid",
                event_type="t.kid",
                causation_id="root",
                group="g1",
            ),
            e(
                EntryKind.PUBLISH,
                1.3,
                event_id="loose",
                event_type="t.loose",
                causation_id="root",
                group="other",
            ),
        ]
    )
    lines = render_text(trace).split("\n\ntimeline")[0].splitlines()
    tree = lines[lines.index("causal tree") + 1 :]
    assert tree[0].startswith("└─ t.root [root]")
    assert tree[1].startswith("   ├─ ✓ g1: acked (1 attempt, ")
    assert tree[2].startswith("   │  └─ t.kid [kid]")
    assert tree[3].startswith("   └─ t.loose [loose]")
    assert trace.causal_chain() == ["t.root", "t.kid", "t.loose"]


def test_chain_of_is_the_causal_order_of_entries():
    entries = [
        e(EntryKind.PUBLISH, 2.0, event_id="b", event_type="t.b", causation_id="a"),
        e(EntryKind.PUBLISH, 1.0, event_id="a", event_type="t.a"),
        e(EntryKind.PUBLISH, 3.0, event_id="c", event_type="t.c", causation_id="a"),
    ]
    assert chain_of(entries) == ["t.a", "t.b", "t.c"]


def test_a_flow_without_events_or_steps_still_has_a_clean_summary():
    # A saga that has only started (no step yet): nothing to count.
    trace = FlowTrace.build([e(EntryKind.SAGA_STARTED, 1.0, service="orders", detail="order")])
    head = render_text(trace).splitlines()[0]
    assert head.startswith("flow f  (0.0 ms from 1970-01-01T00:00:01.000Z)"), head


# -- SVG / HTML ---------------------------------------------------------------------------------


def test_svg_notes_are_escaped_and_kept_clear_of_the_time_labels():
    trace = FlowTrace.build(
        [
            e(EntryKind.SAGA_STARTED, 1.0, service="<orders>", detail="x" * 80),
            e(EntryKind.PUBLISH, 1.1, service="<orders>", event_id="e", event_type="t.<b>"),
        ]
    )
    svg = sequence_svg(trace)
    assert "<orders>" not in svg and "t.<b>" not in svg
    assert "&lt;orders&gt;" in svg and "published t.&lt;b&gt;" in svg
    note_boxes = re.findall(r'<rect x="(\d+)" y="\d+" width="(\d+)" height="20"', svg)
    assert len(note_boxes) == 2
    for left, _ in note_boxes:
        assert int(left) >= 64  # right of the "+12ms" labels
    # A long text is clipped to the note.
    assert "x" * 80 not in svg and "…" in svg


def test_svg_a_group_handling_its_own_event_is_a_loop():
    # The publisher's actor is its group: handling by the same group loops back.
    trace = FlowTrace.build(
        [
            e(EntryKind.PUBLISH, 1.0, event_id="e", event_type="t.self", group="g"),
            handle(1.1, "e", "g", event_type="t.self"),
        ]
    )
    [item] = trace.sequence()
    assert item.source == item.target == "g"
    svg = sequence_svg(trace)
    assert re.search(r'<path d="M\d+,\d+ h30 v12 h-30"[^>]*marker-end="url\(#ok\)"', svg)


def test_svg_compensation_calls_are_dashed_and_failures_crossed():
    trace = FlowTrace.build(
        [
            e(EntryKind.SAGA_STARTED, 1.0, service="orders", detail="order"),
            e(EntryKind.STEP_SUCCEEDED, 1.1, service="orders", step="reserve", attempt=1),
            e(EntryKind.STEP_COMPENSATED, 1.2, service="orders", step="reserve", attempt=1),
            e(
                EntryKind.COMPENSATION_FAILED,
                1.3,
                service="orders",
                step="charge",
                attempt=1,
                outcome="final",
                error_type="RefundError",
            ),
        ]
    )
    svg = sequence_svg(trace)
    dashed = re.findall(r'<line [^>]*stroke-dasharray="5 3"[^>]*marker-end="url\(#(\w+)\)"', svg)
    assert dashed == ["ok", "bad"]
    assert "undo charge: RefundError (final)" in svg
    diagram = sequence_diagram(trace)
    assert "a_orders--xa_charge: undo charge: RefundError (final)" in diagram
    assert "a_orders-->>a_reserve: undo reserve" in diagram


def test_html_marks_failed_rows_and_the_saga_badge():
    trace = FlowTrace.build(
        [
            e(EntryKind.SAGA_STARTED, 1.0, service="orders", detail="order"),
            e(
                EntryKind.STEP_FAILED,
                1.1,
                service="orders",
                step="s",
                attempt=1,
                outcome="final",
                error_type="Boom",
                error_message="<b>x</b>",
            ),
            e(EntryKind.SAGA_FINISHED, 1.2, service="orders", detail="order", outcome="failed"),
        ]
    )
    page = render_html(trace)
    assert '<span class="badge failed">saga FAILED</span>' in page
    assert page.count('<tr class="bad">') == 2  # the failed step and the parked saga
    assert "Boom: &lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page


# -- saga flowchart -----------------------------------------------------------------------------


def test_step_states_failed_compensation_and_skipped_compensation():
    records = [
        SagaRecord(RecordKind.STEP_STARTED, "a", 1),
        SagaRecord(RecordKind.STEP_COMPLETED, "a", 1),
        SagaRecord(RecordKind.STEP_STARTED, "b", 1),
        SagaRecord(RecordKind.STEP_COMPLETED, "b", 1),
        SagaRecord(RecordKind.STEP_STARTED, "c", 1),
        SagaRecord(RecordKind.STEP_FAILED, "c", 1, data={"final": False}),
        SagaRecord(RecordKind.COMPENSATION_FAILED, "b", 1, data={"final": False}),
        SagaRecord(RecordKind.COMPENSATION_FAILED, "a", 1, data={"final": True}),
        SagaRecord(RecordKind.COMPENSATION_SKIPPED, "b", 0, data={"reason": "ops"}),
    ]
    # A retried failure leaves the step running; only a final compensation failure fails it.
    assert step_states(records) == {"a": "failed", "b": "skipped", "c": "running"}


def test_flowchart_draws_skipped_steps_grey():
    from pydantic import BaseModel

    from sagaflow import Saga, Step

    class S(BaseModel):
        pass

    async def act(ctx: object) -> None:
        return None

    saga = Saga("s", state=S, steps=[Step("a", act, compensate=act)])
    chart = saga_flowchart(
        saga,
        [
            SagaRecord(RecordKind.STEP_COMPLETED, "a", 1),
            SagaRecord(RecordKind.COMPENSATION_SKIPPED, "a", 0, data={"reason": "ops"}),
        ],
    )
    assert "    class s_a skipped" in chart
    assert "s_a -.->|undo| u_a" in chart  # skipped is not compensated: no bold edge
