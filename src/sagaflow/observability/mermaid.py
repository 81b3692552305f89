"""Mermaid diagrams: a flow's sequence, a saga definition, a choreography topology.

Each function returns Mermaid source text (paste it into a Markdown page, a
GitHub comment or https://mermaid.live):

* `sequence_diagram` — one flow from the journal: deliveries between services
  and groups, failures crossed out, saga steps and compensations as notes;
* `saga_flowchart` — a `Saga` definition: steps with their kind, compensations,
  parallel stages; optionally coloured with one instance's state from its log;
* `topology_graph` — which group handles which event and what it emits.

Labels hold names, types and error types only: never payloads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sagaflow.observability.topology import Topology
from sagaflow.observability.trace import FlowTrace
from sagaflow.orchestration.definition import Saga, Step, StepKind
from sagaflow.orchestration.records import RecordKind, SagaRecord

__all__ = ["saga_flowchart", "sequence_diagram", "step_states", "topology_graph"]

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_TEXT_UNSAFE = re.compile(r"[;#\n\r\"<>{}|]")
_MAX_LABEL = 90


def _id(name: str, prefix: str = "") -> str:
    return prefix + _ID_UNSAFE.sub("_", name)


def _text(text: str) -> str:
    """Make ``text`` safe inside a Mermaid label (no statement breaks, no markup)."""
    clean = _TEXT_UNSAFE.sub(" ", text).strip()
    return clean if len(clean) <= _MAX_LABEL else clean[: _MAX_LABEL - 1] + "…"


# -- flows -------------------------------------------------------------------------------


def sequence_diagram(trace: FlowTrace) -> str:
    """Render one flow as a Mermaid ``sequenceDiagram``.

    Each delivery of an event to a group is an arrow from the publisher (``-x``
    when the handling failed); dead letters, saga steps and compensations are
    notes over the actor concerned.
    """
    lines = ["sequenceDiagram"]
    for name in trace.actors():
        lines.append(f"    participant {_id(name, 'a_')} as {_text(name)}")
    for item in trace.sequence():
        source = _id(item.source, "a_")
        if item.target is None:
            lines.append(f"    Note over {source}: {'✗ ' if item.failed else ''}{_text(item.text)}")
        else:
            arrow = ("--" if item.dashed else "-") + ("x" if item.failed else ">>")
            lines.append(f"    {source}{arrow}{_id(item.target, 'a_')}: {_text(item.text)}")
    return "\n".join(lines)


# -- saga definitions ----------------------------------------------------------------------

_STATE_STYLES = {
    "completed": "fill:#d4edda,stroke:#28a745",
    "failed": "fill:#f8d7da,stroke:#dc3545",
    "compensated": "fill:#fff3cd,stroke:#d39e00",
    "running": "fill:#cce5ff,stroke:#0069d9",
    "skipped": "fill:#eeeeee,stroke:#999999",
}


def step_states(records: Sequence[SagaRecord]) -> dict[str, str]:
    """Each step's last state in a saga log: running, completed, failed, compensated, skipped."""
    states: dict[str, str] = {}
    for record in records:
        if record.step is None:
            continue
        kind = record.kind
        if kind is RecordKind.STEP_STARTED:
            states[record.step] = "running"
        elif kind is RecordKind.STEP_COMPLETED:
            states[record.step] = "completed"
        elif kind is RecordKind.STEP_FAILED:
            final = (record.data or {}).get("final", True)
            states[record.step] = "failed" if final else "running"
        elif kind is RecordKind.COMPENSATION_COMPLETED:
            states[record.step] = "compensated"
        elif kind is RecordKind.COMPENSATION_FAILED and (record.data or {}).get("final"):
            states[record.step] = "failed"
        elif kind is RecordKind.COMPENSATION_SKIPPED:
            states[record.step] = "skipped"
    return states


def _fn_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _step_node(step: Step) -> str:
    kind = step.kind.value
    label = f"{_text(step.name)}<br/><small>{kind}</small>"
    if step.kind is StepKind.PIVOT:
        return f'{_id(step.name, "s_")}{{{{"{label}"}}}}'
    if step.kind is StepKind.RETRIABLE:
        return f'{_id(step.name, "s_")}(["{label}"])'
    return f'{_id(step.name, "s_")}["{label}"]'


def saga_flowchart(saga: Saga[Any], records: Sequence[SagaRecord] | None = None) -> str:
    """Render a saga definition as a Mermaid ``flowchart``.

    Steps run left to right (compensatable as boxes, the pivot as a hexagon,
    retriable steps as stadiums); parallel stages are subgraphs; each
    compensation hangs under its step on a dotted ``undo`` edge. With
    ``records`` (one instance's log), steps are coloured by their last state
    (`step_states`) and the compensation edges that ran are drawn bold.
    """
    lines = ["flowchart LR", f'    start(("{_text(saga.name)} v{saga.version}"))']
    previous = ["start"]
    for index, stage in enumerate(saga.stages):
        ids = [_id(step.name, "s_") for step in stage]
        if len(stage) > 1:
            lines.append(f'    subgraph p{index}["parallel"]')
            lines.extend(f"        {_step_node(step)}" for step in stage)
            lines.append("    end")
        else:
            lines.append(f"    {_step_node(stage[0])}")
        lines.extend(f"    {a} --> {b}" for a in previous for b in ids)
        previous = ids
    lines.append('    finish(("done"))')
    lines.extend(f"    {a} --> finish" for a in previous)
    states = step_states(records) if records is not None else {}
    for step in saga.steps():
        if step.compensate is not None:
            undo = _id(step.name, "u_")
            edge = "==>" if states.get(step.name) == "compensated" else "-.->"
            lines.append(f'    {undo}[/"undo: {_text(_fn_name(step.compensate))}"/]')
            lines.append(f"    {_id(step.name, 's_')} {edge}|undo| {undo}")
    if states:
        for state, style in _STATE_STYLES.items():
            lines.append(f"    classDef {state} {style}")
        for name, state in states.items():
            lines.append(f"    class {_id(name, 's_')} {state}")
    return "\n".join(lines)


# -- topology ----------------------------------------------------------------------------------


def topology_graph(topology: Topology) -> str:
    """Render a choreography as a Mermaid ``flowchart``: events (rounded) and groups (boxes).

    An arrow event → group means the group handles it; group → event means the
    group's handler declared it emits it. Unconsumed events and unemitted waits
    (see `Topology.check`) are drawn red.
    """
    lines = ["flowchart LR"]
    events: dict[str, None] = {}
    for handler in topology.handlers:
        events.update(dict.fromkeys(handler.consumes))
        events.update(dict.fromkeys(handler.emits or ()))
    events.update(dict.fromkeys(sorted(topology.entry_points)))
    for name in events:
        lines.append(f'    {_id(name, "e_")}(["{_text(name)}"])')
    groups: dict[str, None] = dict.fromkeys(h.group for h in topology.handlers)
    for group in groups:
        lines.append(f'    {_id(group, "g_")}["{_text(group)}"]')
    edges: dict[str, None] = {}
    for handler in topology.handlers:
        group_id = _id(handler.group, "g_")
        for name in handler.consumes:
            edges.setdefault(f"    {_id(name, 'e_')} --> {group_id}")
        for name in handler.emits or ():
            edges.setdefault(f"    {group_id} -.-> {_id(name, 'e_')}")
    lines.extend(edges)
    report = topology.check()
    bad = [name for name, _ in report.unconsumed] + [name for _, name in report.unemitted]
    if bad:
        lines.append("    classDef problem fill:#f8d7da,stroke:#dc3545")
        lines.append(f"    class {','.join(dict.fromkeys(_id(n, 'e_') for n in bad))} problem")
    if topology.entry_points:
        lines.append("    classDef entry fill:#cce5ff,stroke:#0069d9")
        entries = ",".join(_id(n, "e_") for n in sorted(topology.entry_points))
        lines.append(f"    class {entries} entry")
    return "\n".join(lines)
