"""Seeing flows: the flow journal, traces, diagrams, topology checks, stall detection.

The public names of this package:

* `FlowJournal`, `JournalEntry`, `EntryKind`, `MemoryJournal`, `open_journal`,
  `JournalWriter`: the journal and its entries (`SqliteJournal` and
  `PostgresJournal` live in `sagaflow.observability.sqlite` / `.postgres`).
* `Journaling`: writes the journal from a bus (middleware, dead letters) and an
  orchestrator (``journaling.hooks``).
* `FlowTrace`, `load_trace`, `render_text`, `render_html`: one flow rebuilt.
* `sequence_diagram`, `saga_flowchart`, `topology_graph`: Mermaid sources.
* `Topology`, `TopologyReport`, `TopologyError`: the choreography's wiring and its check.
* `Expectation`, `StalledFlow`, `find_stalled`, `StallWatcher`: flows that missed a deadline.
* `OpenTelemetry` (in `sagaflow.observability.otel`, extra ``otel``): spans.
"""

from sagaflow.observability.html import render_html
from sagaflow.observability.journal import (
    EntryKind,
    FlowJournal,
    FlowSummary,
    JournalEntry,
    JournalWriter,
    MemoryJournal,
    open_journal,
)
from sagaflow.observability.mermaid import saga_flowchart, sequence_diagram, topology_graph
from sagaflow.observability.recorder import Journaling
from sagaflow.observability.topology import Topology, TopologyError, TopologyReport
from sagaflow.observability.trace import FlowTrace, load_trace, render_text

__all__ = [
    "EntryKind",
    "FlowJournal",
    "FlowSummary",
    "FlowTrace",
    "JournalEntry",
    "JournalWriter",
    "Journaling",
    "MemoryJournal",
    "Topology",
    "TopologyError",
    "TopologyReport",
    "load_trace",
    "open_journal",
    "render_html",
    "render_text",
    "saga_flowchart",
    "sequence_diagram",
    "topology_graph",
]
