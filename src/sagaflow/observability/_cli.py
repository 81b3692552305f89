"""The observability commands of ``sagaflow``: trace, flows stalled, topology, diagram.

Kept apart from `sagaflow.cli` so that the CLI's core stays small; `sagaflow.cli`
registers them. See `sagaflow.cli` for the exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sagaflow._cli_common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ErrorRule,
    resource_command,
)
from sagaflow.errors import (
    ConfigurationError,
    MissingDependencyError,
    SagaflowError,
    SagaNotFoundError,
    StoreError,
    StoreUnavailableError,
)
from sagaflow.observability.journal import FlowJournal, open_journal

__all__ = ["add_observability_commands"]


def add_observability_commands(commands: Any) -> None:
    """Add ``trace``, ``flows``, ``topology`` and ``diagram`` to the CLI's subparsers."""
    _add_trace(commands)
    _add_flows(commands)
    _add_topology(commands)
    _add_diagram(commands)


def _with_journal(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--journal",
        default=os.environ.get("SAGAFLOW_JOURNAL"),
        metavar="URL",
        help="flow journal URL: sqlite:///file.db, postgresql://... (default: $SAGAFLOW_JOURNAL)",
    )


def _add_trace(commands: Any) -> None:
    sub = commands.add_parser(
        "trace",
        help="show one flow from the journal: causal tree, timeline, diagrams",
        description="Rebuild one flow (a correlation id; a saga id for sagas) from the flow "
        "journal: which service and group handled what, when, attempts, failures, "
        "compensations.",
    )
    sub.add_argument("correlation_id")
    _with_journal(sub)
    sub.add_argument(
        "--format",
        choices=("text", "mermaid", "html", "svg"),
        default="text",
        help="text (default), Mermaid sequence diagram source, standalone HTML page, "
        "or the page's SVG sequence diagram alone",
    )
    sub.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    sub.set_defaults(handler=_journal_command(_trace))


def _add_flows(commands: Any) -> None:
    flows = commands.add_parser("flows", help="check flows recorded in the journal")
    actions = flows.add_subparsers(title="actions", metavar="ACTION", required=True)
    stalled = actions.add_parser(
        "stalled",
        help="list flows that missed an expectation (exit 1 if any)",
        description="List flows where an event did not follow another in time, e.g. "
        "--expect 'shop.order.placed.v1 -> shop.payment.captured.v1 within 5m "
        "unless shop.payment.failed.v1,shop.inventory.rejected.v1'.",
    )
    _with_journal(stalled)
    stalled.add_argument(
        "--expect",
        action="append",
        required=True,
        metavar="SPEC",
        help="'AFTER -> EXPECTED within N[ms|s|m|h] [unless E1,E2]' (repeatable)",
    )
    stalled.add_argument(
        "--horizon", type=float, default=86_400.0, help="seconds to look back (default: a day)"
    )
    stalled.set_defaults(handler=_journal_command(_stalled))
    listing = actions.add_parser(
        "list",
        help="list recent flows, most recent first",
        description="List the flows with journal entries in the last --since (default 1h).",
    )
    _with_journal(listing)
    listing.add_argument("--since", default="1h", metavar="DURATION", help="e.g. 15m, 2h, 7d")
    listing.add_argument("--failed", action="store_true", help="only flows with a failure")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(handler=_journal_command(_list_flows))
    prune = actions.add_parser(
        "prune",
        help="delete journal entries older than a duration",
        description="Delete entries older than --older-than (e.g. 7d, 12h); the journal is "
        "diagnostics: keep what you need to debug.",
    )
    _with_journal(prune)
    prune.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 7d, 12h, 30m")
    prune.set_defaults(handler=_journal_command(_prune))


def _add_topology(commands: Any) -> None:
    sub = commands.add_parser(
        "topology",
        help="check or draw a choreography's topology (exit 1 on problems)",
        description="Load MODULE:ATTR (an EventBus, a Topology, or a function returning "
        "either), report events nobody consumes and handlers waiting for events nobody "
        "emits, or draw it.",
    )
    sub.add_argument("target", metavar="MODULE:ATTR")
    sub.add_argument("--format", choices=("text", "mermaid"), default="text")
    sub.add_argument(
        "--entry",
        action="append",
        default=[],
        metavar="TYPE",
        help="an event type published from outside handlers (repeatable)",
    )
    sub.add_argument("--strict", action="store_true", help="fail on undeclared emits too")
    sub.set_defaults(handler=_topology)


def _add_diagram(commands: Any) -> None:
    sub = commands.add_parser(
        "diagram",
        help="draw a saga definition as a Mermaid flowchart",
        description="Load MODULE:ATTR (a Saga, or a function returning one) and print it as "
        "a Mermaid flowchart; with --store and --saga-id, colour it with that instance's state.",
    )
    sub.add_argument("target", metavar="MODULE:ATTR")
    sub.add_argument("--store", default=os.environ.get("SAGAFLOW_STORE"), metavar="URL")
    sub.add_argument("--saga-id", metavar="ID", help="overlay this instance's state")
    sub.add_argument("-o", "--output", metavar="FILE")
    sub.set_defaults(handler=_diagram)


# -- running ------------------------------------------------------------------------------


def _emit(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
    else:
        print(text)


_JOURNAL_ERRORS: tuple[ErrorRule, ...] = (
    ((ConfigurationError, MissingDependencyError), EXIT_USAGE, "{exc}"),
    ((OSError, SagaflowError), EXIT_UNAVAILABLE, "journal unavailable: {exc}"),
    # Driver errors (sqlite3, psycopg) have no common base.
    (Exception, EXIT_UNAVAILABLE, "journal error: {type}: {exc}"),
)


def _journal_command(
    action: Callable[[FlowJournal, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    return resource_command(
        action,
        url=lambda args: args.journal,
        missing="--journal URL is required (or set SAGAFLOW_JOURNAL)",
        open_resource=open_journal,
        rules=_JOURNAL_ERRORS,
    )


async def _trace(journal: FlowJournal, args: argparse.Namespace) -> int:
    from sagaflow.observability.trace import load_trace

    trace = await load_trace(journal, args.correlation_id)
    if not trace.entries:
        print(f"sagaflow: no journal entry for flow {args.correlation_id!r}", file=sys.stderr)
        return EXIT_REFUSED
    if args.format == "mermaid":
        from sagaflow.observability.mermaid import sequence_diagram

        text = sequence_diagram(trace)
    elif args.format == "html":
        from sagaflow.observability.html import render_html

        text = render_html(trace)
    elif args.format == "svg":
        from sagaflow.observability.html import sequence_svg

        text = sequence_svg(trace)
    else:
        from sagaflow.observability.trace import render_text

        text = render_text(trace)
    _emit(text, args.output)
    return EXIT_OK


async def _stalled(journal: FlowJournal, args: argparse.Namespace) -> int:
    from sagaflow.observability.stalled import Expectation, find_stalled

    expectations = [Expectation.parse(spec) for spec in args.expect]
    stalled = await find_stalled(journal, expectations, horizon=args.horizon)
    for flow in stalled:
        print(flow)
    if not stalled:
        print("no stalled flows")
    return EXIT_REFUSED if stalled else EXIT_OK


async def _list_flows(journal: FlowJournal, args: argparse.Namespace) -> int:
    import time
    from datetime import UTC, datetime

    from sagaflow.observability.stalled import parse_duration

    since = time.time() - parse_duration(args.since)
    flows = await journal.flows(since=since, failed_only=args.failed, limit=args.limit)
    if not flows:
        print("no flows")
        return EXIT_OK
    print(f"{'CORRELATION ID':<38} {'LAST ENTRY (UTC)':<24} {'ENTRIES':>7} {'FAILURES':>8}")
    for flow in flows:
        last = datetime.fromtimestamp(flow.last, UTC).isoformat(timespec="milliseconds")
        print(f"{flow.correlation_id:<38} {last[:23]:<24} {flow.entries:>7} {flow.failures:>8}")
    return EXIT_OK


async def _prune(journal: FlowJournal, args: argparse.Namespace) -> int:
    import time

    from sagaflow.observability.stalled import parse_duration

    removed = await journal.prune(before=time.time() - parse_duration(args.older_than))
    print(f"deleted {removed} journal entries older than {args.older_than}")
    return EXIT_OK


def _load(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"expected MODULE:ATTR, got {target!r}")
    # Let the current directory's modules be found, as `python -m` does.
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load {target!r}: {exc}") from exc
    return obj() if callable(obj) and not isinstance(obj, type) else obj


def _topology(args: argparse.Namespace) -> int:
    from sagaflow.choreography.bus import EventBus
    from sagaflow.observability.mermaid import topology_graph
    from sagaflow.observability.topology import Topology

    try:
        loaded = _load(args.target)
        if isinstance(loaded, EventBus):
            loaded = Topology.from_bus(loaded)
        if not isinstance(loaded, Topology):
            raise ConfigurationError(f"{args.target} is not an EventBus or a Topology")
    except ConfigurationError as exc:
        print(f"sagaflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.entry:
        loaded = Topology(loaded.handlers, loaded.entry_points | set(args.entry), loaded.external)
    report = loaded.check(strict=args.strict)
    if args.format == "mermaid":
        print(topology_graph(loaded))
    else:
        print(report)
    return EXIT_OK if report.ok else EXIT_REFUSED


def _diagram(args: argparse.Namespace) -> int:
    from sagaflow.observability.mermaid import saga_flowchart
    from sagaflow.orchestration.definition import Saga

    try:
        saga = _load(args.target)
        if not isinstance(saga, Saga):
            raise ConfigurationError(f"{args.target} is not a Saga")
        records = None
        if args.saga_id:
            if not args.store:
                raise ConfigurationError("--saga-id needs --store URL (or SAGAFLOW_STORE)")
            records = asyncio.run(_records(args.store, args.saga_id))
    except ConfigurationError as exc:
        print(f"sagaflow: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreUnavailableError as exc:
        print(f"sagaflow: store unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except SagaNotFoundError as exc:
        print(f"sagaflow: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except StoreError as exc:  # the store answered, but not with a saga log
        print(f"sagaflow: store error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except SagaflowError as exc:
        print(f"sagaflow: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    _emit(saga_flowchart(saga, records), args.output)
    return EXIT_OK


async def _records(url: str, saga_id: str) -> Any:
    from sagaflow.stores import open_store

    store = open_store(url)
    try:
        return (await store.load(saga_id)).records
    finally:
        await store.close()
