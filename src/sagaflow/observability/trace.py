"""`FlowTrace`: one flow rebuilt from the journal, as a causal tree and a timeline.

Events are linked by causation id (the event whose handling published them);
each event carries the handlings of every consumer group that received it and
its dead letters; saga entries (steps, compensations) sit in the timeline. The
renderers (`render_text` here, `sagaflow.observability.mermaid`,
`sagaflow.observability.html`) all read a `FlowTrace`.

Example:
    ``trace = FlowTrace.build(await journal.read(order_id)); print(render_text(trace))``
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sagaflow.observability.journal import EntryKind, FlowJournal, JournalEntry

__all__ = ["EventNode", "FlowTrace", "SequenceItem", "load_trace", "render_text"]

REPLY_GROUP_PREFIX = "sagaflow-replies-"
"""Reply groups of `RemoteSteps` are drawn as the orchestrating service."""

_SAGA_KINDS = frozenset(
    {
        EntryKind.SAGA_STARTED,
        EntryKind.SAGA_FINISHED,
        EntryKind.STEP_STARTED,
        EntryKind.STEP_SUCCEEDED,
        EntryKind.STEP_FAILED,
        EntryKind.COMPENSATION_STARTED,
        EntryKind.STEP_COMPENSATED,
        EntryKind.COMPENSATION_FAILED,
    }
)


def actor(entry: JournalEntry) -> str:
    """Who did what an entry records: a consumer group, or the service.

    Handlings and dead letters belong to their group; an event published inside
    a handler to that handler's group; everything else to the service (the
    orchestrating service for saga entries and remote steps' commands).
    """
    group = entry.group
    if group and not group.startswith(REPLY_GROUP_PREFIX):
        return group
    return entry.service.strip("/") or "unknown"


@dataclass(slots=True)
class EventNode:
    """One event of a flow and what became of it.

    Attributes:
        event_id: The event id.
        event_type: Its wire name (from whichever entry named it).
        publish: The publish entry, if the publisher journals.
        handlings: Every handling by every group, in time order.
        dead_letters: Groups that gave up on it.
        children: Events published while handling it.
    """

    event_id: str
    event_type: str
    publish: JournalEntry | None = None
    handlings: list[JournalEntry] = field(default_factory=list)
    dead_letters: list[JournalEntry] = field(default_factory=list)
    children: list[EventNode] = field(default_factory=list)

    @property
    def causation_id(self) -> str | None:
        """The causing event's id, from any entry that knows it."""
        for entry in (self.publish, *self.handlings, *self.dead_letters):
            if entry is not None and entry.causation_id:
                return entry.causation_id
        return None

    @property
    def at(self) -> float:
        """When it was published (or first seen)."""
        if self.publish is not None:
            return self.publish.at
        return min(e.at for e in (*self.handlings, *self.dead_letters))

    @property
    def publisher(self) -> str:
        """Who published it (see `actor`)."""
        return actor(self.publish) if self.publish is not None else "unknown"


@dataclass(frozen=True, slots=True)
class SequenceItem:
    """One row of a sequence diagram: a message between actors, or a note.

    Attributes:
        at: When.
        source: Sending actor (for a note: the actor it is over).
        target: Receiving actor, or ``None`` for a note.
        text: The label.
        failed: Drawn as a failure.
        dashed: Drawn dashed (a compensation).
    """

    at: float
    source: str
    target: str | None
    text: str
    failed: bool = False
    dashed: bool = False


@dataclass(slots=True)
class FlowTrace:
    """One flow: its entries, its events as a causal forest, its saga entries.

    Build it with `FlowTrace.build` (or `load_trace`).

    Attributes:
        correlation_id: The flow.
        entries: Every entry, oldest first.
        events: Event nodes by event id.
        roots: Events with no known cause, in time order.
        saga_entries: Saga lifecycle entries, oldest first.
    """

    correlation_id: str
    entries: list[JournalEntry]
    events: dict[str, EventNode]
    roots: list[EventNode]
    saga_entries: list[JournalEntry]

    @classmethod
    def build(cls, entries: Iterable[JournalEntry], correlation_id: str = "") -> FlowTrace:
        """Link ``entries`` (of one flow) into a trace."""
        ordered = sorted(entries, key=lambda e: e.at)
        cid = correlation_id or (ordered[0].correlation_id if ordered else "")
        events: dict[str, EventNode] = {}
        for entry in ordered:
            if entry.kind in _SAGA_KINDS or entry.event_id is None:
                continue
            node = events.get(entry.event_id)
            if node is None:
                node = events[entry.event_id] = EventNode(entry.event_id, entry.event_type or "?")
            if entry.kind is EntryKind.PUBLISH:
                node.publish = entry
            elif entry.kind is EntryKind.HANDLE:
                node.handlings.append(entry)
            else:
                node.dead_letters.append(entry)
        roots: list[EventNode] = []
        for node in sorted(events.values(), key=lambda n: n.at):
            parent = events.get(node.causation_id or "")
            (parent.children if parent is not None and parent is not node else roots).append(node)
        sagas = [e for e in ordered if e.kind in _SAGA_KINDS]
        return cls(cid, ordered, events, roots, sagas)

    # -- summary -------------------------------------------------------------------

    @property
    def start(self) -> float:
        """Time of the first entry (0 when empty)."""
        return self.entries[0].at if self.entries else 0.0

    @property
    def end(self) -> float:
        """Time the last entry ended."""
        return max((e.at + (e.duration or 0.0) for e in self.entries), default=0.0)

    def failures(self) -> list[JournalEntry]:
        """Entries that record a failure, oldest first."""
        return [e for e in self.entries if e.failed]

    def services(self) -> list[str]:
        """Services that wrote entries, in order of appearance."""
        return list(dict.fromkeys(e.service for e in self.entries if e.service))

    def compensated(self) -> list[str]:
        """Steps whose compensation completed, in order."""
        return [
            e.step for e in self.saga_entries if e.kind is EntryKind.STEP_COMPENSATED and e.step
        ]

    def outcome(self) -> str | None:
        """The saga's final status, when the flow is a finished saga."""
        for entry in reversed(self.saga_entries):
            if entry.kind is EntryKind.SAGA_FINISHED:
                return entry.outcome
        return None

    def causal_chain(self) -> list[str]:
        """Event types in causal (depth-first, time-ordered) order."""
        out: list[str] = []

        def walk(node: EventNode) -> None:
            out.append(node.event_type)
            for child in node.children:
                walk(child)

        for root in self.roots:
            walk(root)
        return out

    # -- sequence ------------------------------------------------------------------

    def sequence(self) -> list[SequenceItem]:
        """The flow as sequence-diagram rows: deliveries as messages, the rest as notes."""
        items: list[SequenceItem] = []
        for node in self.events.values():
            source = node.publisher
            for handling in node.handlings:
                lost = unrecorded_deliveries(node, handling)
                if lost:
                    text = f"{lost} earlier delivery lost (consumer crashed?)"
                    items.append(SequenceItem(handling.at, actor(handling), None, text, True))
                items.append(_delivery(node, source, handling))
            for letter in node.dead_letters:
                reason = letter.error_type or "gave up"
                items.append(
                    SequenceItem(letter.at, actor(letter), None, f"dead-lettered: {reason}", True)
                )
            if not node.handlings and not node.dead_letters and node.publish is not None:
                items.append(
                    SequenceItem(node.at, source, None, f"published {node.event_type}", False)
                )
        # Steps that sent commands show as those messages; the others ran in
        # the orchestrator's process and are drawn as calls to the step.
        remote = {n.publish.step for n in self.events.values() if n.publish and n.publish.step}
        for entry in self.saga_entries:
            items.extend(_saga_items(entry, remote))
        items.sort(key=lambda item: item.at)
        return items

    def actors(self) -> list[str]:
        """Actors of `sequence`, in order of first appearance."""
        names: dict[str, None] = {}
        for item in self.sequence():
            names.setdefault(item.source)
            if item.target is not None:
                names.setdefault(item.target)
        return list(names)


def unrecorded_deliveries(node: EventNode, handling: JournalEntry) -> int:
    """Earlier deliveries of ``node`` to ``handling``'s group that left no entry.

    A delivery count above the recorded handlings means a consumer took the
    event and never finished: its process died, or its lease ran out.
    """
    earlier = sum(
        1 for h in node.handlings if h.group == handling.group and h.attempt < handling.attempt
    )
    return max(0, handling.attempt - 1 - earlier)


def _delivery(node: EventNode, source: str, handling: JournalEntry) -> SequenceItem:
    text = node.event_type
    if handling.attempt > 1:
        text += f" (delivery {handling.attempt})"
    if handling.outcome == "duplicate":
        text += " (duplicate)"
    if handling.failed:
        text += f": {handling.error_type} after {handling.attempts} attempt(s)"
    elif handling.attempts > 1:
        text += f" ({handling.attempts} attempts)"
    return SequenceItem(handling.at, source, actor(handling), text, handling.failed)


def _saga_items(entry: JournalEntry, remote: set[str]) -> list[SequenceItem]:
    kind, step, who = entry.kind, entry.step or "?", actor(entry)
    local = entry.step is not None and entry.step not in remote and f"undo:{step}" not in remote
    if kind is EntryKind.SAGA_STARTED:
        return [SequenceItem(entry.at, who, None, f"saga {entry.detail} started")]
    if kind is EntryKind.SAGA_FINISHED:
        text = f"saga {entry.detail}: {(entry.outcome or '?').upper()}"
        return [SequenceItem(entry.at, who, None, text, entry.outcome != "completed")]
    error = f": {entry.error_type} ({entry.outcome})" if entry.error_type else ""
    if kind in (EntryKind.STEP_SUCCEEDED, EntryKind.STEP_FAILED):
        text = f"{step}{error}" if local else f"{step} {'done' if not error else 'failed'}{error}"
        target = step if local else None
        return [SequenceItem(entry.at, who, target, text, kind is EntryKind.STEP_FAILED)]
    if kind in (EntryKind.STEP_COMPENSATED, EntryKind.COMPENSATION_FAILED):
        text = f"undo {step}{error}" if local else f"{step} compensated{error}"
        target = step if local else None
        failed = kind is EntryKind.COMPENSATION_FAILED
        return [SequenceItem(entry.at, who, target, text, failed, dashed=True)]
    return []


async def load_trace(journal: FlowJournal, correlation_id: str) -> FlowTrace:
    """Read one flow from ``journal`` and build its trace."""
    return FlowTrace.build(await journal.read(correlation_id), correlation_id)


# -- text ------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.1f} ms"


def _short(event_id: str) -> str:
    return event_id[:8]


def render_text(trace: FlowTrace) -> str:
    """Render the flow for a terminal: a summary, the causal tree, the timeline.

    No payloads are shown (the journal has none); error messages are.
    """
    if not trace.entries:
        return f"flow {trace.correlation_id}: no journal entries"
    lines = [_summary(trace)]
    if trace.roots:
        lines.extend(["", "causal tree"])
    for index, root in enumerate(trace.roots):
        _tree(trace, root, "", index == len(trace.roots) - 1, lines)
    width = max(len(actor(e)) for e in trace.entries)
    what = min(max(len(_what(e)) for e in trace.entries), 40)
    lines.extend(["", "timeline"])
    lines.extend(_timeline_line(trace, e, width, what) for e in trace.entries)
    return "\n".join(lines)


def _summary(trace: FlowTrace) -> str:
    started = datetime.fromtimestamp(trace.start, UTC).isoformat(timespec="milliseconds")
    started = started.replace("+00:00", "Z")
    handled = sum(len(n.handlings) for n in trace.events.values())
    letters = sum(len(n.dead_letters) for n in trace.events.values())
    parts = [f"{len(trace.events)} events", f"{handled} handlings"] if trace.events else []
    steps = {e.step for e in trace.saga_entries if e.kind is EntryKind.STEP_STARTED}
    if steps:
        parts.insert(0, f"{len(steps)} steps")
    failures = len(trace.failures()) - letters
    if failures:
        parts.append(f"{failures} failed")
    if letters:
        parts.append(f"{letters} dead-lettered")
    if trace.compensated():
        parts.append(f"compensated: {', '.join(trace.compensated())}")
    outcome = trace.outcome()
    head = f"flow {trace.correlation_id}"
    if outcome:
        head += f": saga {outcome.upper()}"
    services = ", ".join(trace.services())
    counts = f"{', '.join(parts)}; " if parts else ""
    return f"{head}  ({counts}{_ms(trace.end - trace.start)} from {started})\nservices: {services}"


def _tree(trace: FlowTrace, node: EventNode, prefix: str, last: bool, out: list[str]) -> None:
    branch = "└─ " if last else "├─ "
    by = f"by {node.publisher}"
    if node.publish is not None and node.publish.step:
        by += f" (step {node.publish.step})"
    out.append(
        f"{prefix}{branch}{node.event_type} [{_short(node.event_id)}] {by} "
        f"+{_ms(node.at - trace.start)}"
    )
    inner = prefix + ("   " if last else "│  ")
    # Children published by a group go under that group's handling; others under the event.
    placed: set[str] = set()
    rows: list[tuple[str, list[EventNode]]] = []
    for handling in node.handlings:
        kids = [
            c
            for c in node.children
            if c.event_id not in placed
            and c.publish is not None
            and c.publish.group == handling.group
            and c.at >= handling.at
        ]
        placed.update(c.event_id for c in kids)
        rows.append((_handling_text(trace, handling, node), kids))
    for letter in node.dead_letters:
        rows.append((f"✗ {letter.group}: DEAD-LETTERED: {letter.detail}", []))
    loose = [c for c in node.children if c.event_id not in placed]
    count = len(rows) + len(loose)
    for index, (text, kids) in enumerate(rows):
        is_last = index == count - 1
        out.append(f"{inner}{'└─ ' if is_last else '├─ '}{text}")
        deeper = inner + ("   " if is_last else "│  ")
        for k, kid in enumerate(kids):
            _tree(trace, kid, deeper, k == len(kids) - 1, out)
    for k, kid in enumerate(loose):
        _tree(trace, kid, inner, len(rows) + k == count - 1, out)


def _handling_text(trace: FlowTrace, handling: JournalEntry, node: EventNode) -> str:
    mark = "✗" if handling.failed else "✓"
    where = f"{handling.group}" + (f"@{handling.service}" if handling.service else "")
    attempts = f"{handling.attempts} attempt{'s' if handling.attempts != 1 else ''}"
    delivery = f"delivery {handling.attempt}, " if handling.attempt > 1 else ""
    text = (
        f"{mark} {where}: {handling.outcome} ({delivery}{attempts}, {_ms(handling.duration)}) "
        f"+{_ms(handling.at - trace.start)}"
    )
    if handling.failed:
        text += f" {handling.error_type}: {handling.error_message}"
    lost = unrecorded_deliveries(node, handling)
    if lost:
        text += f" [{lost} earlier delivery(ies) unrecorded: the consumer died or timed out]"
    return text


def _what(entry: JournalEntry) -> str:
    if entry.kind in (EntryKind.SAGA_STARTED, EntryKind.SAGA_FINISHED):
        return f"saga {entry.detail}"
    return entry.event_type or entry.step or entry.detail or ""


def _timeline_line(trace: FlowTrace, entry: JournalEntry, width: int, what: int) -> str:
    return (
        f"  +{(entry.at - trace.start) * 1000:9.1f} ms  {actor(entry):<{width}}  "
        f"{entry.kind.value:<20} {_what(entry):<{what}}  {_detail(entry)}"
    ).rstrip()


def _detail(entry: JournalEntry) -> str:
    parts: list[str] = []
    if entry.kind is EntryKind.PUBLISH:
        parts.append(_short(entry.event_id or ""))
        if entry.causation_id:
            parts.append(f"caused by {_short(entry.causation_id)}")
    if entry.kind is EntryKind.HANDLE:
        parts.append(f"{entry.outcome}, delivery {entry.attempt}, {entry.attempts} attempt(s)")
    elif entry.attempt and entry.kind is not EntryKind.DEAD_LETTER:
        parts.append(f"attempt {entry.attempt}")
    if entry.outcome and entry.kind is not EntryKind.HANDLE:
        parts.append(entry.outcome)
    if entry.duration is not None:
        parts.append(_ms(entry.duration))
    if entry.error_type:
        parts.append(f"{entry.error_type}: {entry.error_message or ''}")
    if entry.kind is EntryKind.DEAD_LETTER and entry.detail:
        parts.append(entry.detail)
    return ", ".join(p for p in parts if p)


def chain_of(entries: Sequence[JournalEntry]) -> list[str]:
    """Event types of ``entries``' flow in causal order (see `FlowTrace.causal_chain`)."""
    return FlowTrace.build(entries).causal_chain()
