"""Assertions on flows recorded in a flow journal.

Run the flow with a `Journaling` on the bus and/or orchestrator, then::

    trace = await assert_flow(journaling, order_id, [OrderPlaced, InventoryReserved, PaymentFailed])

`assert_flow` checks that the events form a causal chain (each caused by the
handling of the one before) and, optionally, the saga outcome, the
compensated steps, the groups that handled events and the absence of dead
letters. On failure the `AssertionError` carries the rendered trace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from sagaflow.events import Event
from sagaflow.observability.journal import FlowJournal
from sagaflow.observability.recorder import Journaling
from sagaflow.observability.trace import EventNode, FlowTrace, load_trace, render_text

__all__ = ["assert_flow", "check_flow"]

EventRef = type[Event] | str


def _wire(item: EventRef) -> str:
    if isinstance(item, str):
        return item
    return str(item.event_type or item.__qualname__)


def _has_chain(nodes: Iterable[EventNode], chain: Sequence[str]) -> bool:
    """Whether a path of parent→child events matches ``chain``, starting anywhere."""
    for node in nodes:
        if node.event_type == chain[0] and _follows(node, chain[1:]):
            return True
        if _has_chain(node.children, chain):
            return True
    return False


def _follows(node: EventNode, rest: Sequence[str]) -> bool:
    if not rest:
        return True
    return any(c.event_type == rest[0] and _follows(c, rest[1:]) for c in node.children)


def check_flow(
    trace: FlowTrace,
    chain: Sequence[EventRef] = (),
    *,
    exact: bool = False,
    outcome: str | None = None,
    compensated: Sequence[str] | None = None,
    handled_by: Mapping[EventRef, Iterable[str]] | None = None,
    dead_letters: int | None = None,
) -> FlowTrace:
    """Check a built trace; raise `AssertionError` (with the rendered trace) on a mismatch.

    Args:
        trace: The flow.
        chain: Event classes or wire names, each caused by the one before.
        exact: The flow's whole causal order (`FlowTrace.causal_chain`) must
            equal ``chain``: no other event happened.
        outcome: The saga's final status (``completed``, ``compensated``, ``failed``).
        compensated: The steps compensated, in order.
        handled_by: For an event type, the groups that must have handled it
            successfully.
        dead_letters: The number of dead letters expected.

    Returns:
        The trace, for further checks.
    """
    problems: list[str] = []
    wanted = [_wire(item) for item in chain]
    if not trace.entries:
        problems.append("the journal has no entry for this flow")
    elif exact and trace.causal_chain() != wanted:
        problems.append(f"causal order {trace.causal_chain()} != expected {wanted}")
    elif wanted and not _has_chain(trace.roots, wanted):
        problems.append(f"no causal chain {' -> '.join(wanted)}")
    if outcome is not None and trace.outcome() != outcome:
        problems.append(f"saga outcome {trace.outcome()!r} != expected {outcome!r}")
    if compensated is not None and trace.compensated() != list(compensated):
        problems.append(f"compensated {trace.compensated()} != expected {list(compensated)}")
    for item, groups in (handled_by or {}).items():
        name = _wire(item)
        done = {
            h.group or ""
            for node in trace.events.values()
            if node.event_type == name
            for h in node.handlings
            if not h.failed
        }
        missing = set(groups) - done
        if missing:
            problems.append(f"{name} not handled by {sorted(missing)} (handled by {sorted(done)})")
    if dead_letters is not None:
        count = sum(len(n.dead_letters) for n in trace.events.values())
        if count != dead_letters:
            problems.append(f"{count} dead letter(s), expected {dead_letters}")
    if problems:
        raise AssertionError(
            f"flow {trace.correlation_id}: " + "; ".join(problems) + "\n\n" + render_text(trace)
        )
    return trace


async def assert_flow(
    journal: FlowJournal | Journaling,
    correlation_id: str,
    chain: Sequence[EventRef] = (),
    *,
    exact: bool = False,
    outcome: str | None = None,
    compensated: Sequence[str] | None = None,
    handled_by: Mapping[EventRef, Iterable[str]] | None = None,
    dead_letters: int | None = None,
) -> FlowTrace:
    """Read one flow from ``journal`` and `check_flow` it.

    Given a `Journaling`, its buffered entries are written first.

    Args:
        journal: A journal, or the `Journaling` writing to it.
        correlation_id: The flow (the saga id for a saga).
        chain: See `check_flow`, like the other arguments.
        exact: See `check_flow`.
        outcome: See `check_flow`.
        compensated: See `check_flow`.
        handled_by: See `check_flow`.
        dead_letters: See `check_flow`.
    """
    if isinstance(journal, Journaling):
        await journal.flush()
        journal = journal.journal
    trace = await load_trace(journal, correlation_id)
    return check_flow(
        trace,
        chain,
        exact=exact,
        outcome=outcome,
        compensated=compensated,
        handled_by=handled_by,
        dead_letters=dead_letters,
    )
