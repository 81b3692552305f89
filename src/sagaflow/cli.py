"""The ``sagaflow`` command.

    sagaflow sagas list   --store URL [--status STATUS] [--limit N] [--json]
    sagaflow sagas show   SAGA_ID --store URL [--json]
    sagaflow sagas retry  SAGA_ID --store URL          (try the failed compensation/step again)
    sagaflow sagas resume SAGA_ID --store URL          (same as retry)
    sagaflow sagas skip   SAGA_ID --reason TEXT --store URL
    sagaflow trace CORRELATION_ID --journal URL [--format text|mermaid|html|svg] [-o FILE]
    sagaflow flows stalled --journal URL --expect "A -> B within 5m [unless C,D]" ...
    sagaflow flows list --journal URL [--since 1h] [--failed]
    sagaflow flows prune --journal URL --older-than 7d
    sagaflow topology MODULE:ATTR [--format text|mermaid] [--entry TYPE ...] [--strict]
    sagaflow diagram MODULE:ATTR [--store URL --saga-id ID]   (a saga as a Mermaid flowchart)

Operator commands only write to the saga log and release the lease: the next
worker that claims the saga (``Orchestrator.work`` / ``recover``) continues it
with the saga's code. The store URL may also come from ``SAGAFLOW_STORE``, the
journal URL from ``SAGAFLOW_JOURNAL``.

Exit codes: 0 success; 1 the saga does not allow it (not found, not parked), the
flow has no journal entry, stalled flows or topology problems were found;
2 bad usage or configuration (unknown option, bad URL, missing extra);
3 the store or journal could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

from sagaflow._cli_common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ErrorRule,
    guard,
    resource_command,
)
from sagaflow._version import __version__
from sagaflow.errors import (
    ConcurrencyError,
    ConfigurationError,
    SagaNotFoundError,
    SagaStateError,
    StoreError,
    StoreUnavailableError,
)
from sagaflow.orchestration.operator import resume_parked
from sagaflow.orchestration.records import SagaStatus
from sagaflow.orchestration.render import render_timeline
from sagaflow.orchestration.store import SagaStore

__all__ = ["main"]

OPERATOR = f"sagaflow-cli@{os.uname().nodename}" if hasattr(os, "uname") else "sagaflow-cli"


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the command line; exits with one of the documented codes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        sys.exit(EXIT_USAGE)
    sys.exit(args.handler(args))


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="sagaflow",
        description="Run the sagaflow demo, operate sagas in a saga store, and see flows.",
    )
    parser.add_argument("--version", action="version", version=f"sagaflow {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_demo(commands)
    _add_sagas(commands)
    from sagaflow.observability._cli import add_observability_commands

    add_observability_commands(commands)
    return parser


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the e-commerce order example and print a timeline",
        description="Run the e-commerce order flow and print what happened.",
    )
    demo.add_argument(
        "--style",
        choices=("orchestration", "choreography", "both"),
        default="both",
        help="which coordination style to run (default: both)",
    )
    demo.add_argument(
        "--fail",
        action="append",
        default=[],
        metavar="FAILURE",
        help="inject a failure: out-of-stock, card-declined, shipping-down, crash (repeatable)",
    )
    demo.add_argument(
        "--transport",
        metavar="URL",
        help="run the services as separate processes over this broker URL "
        "(redis://, nats://, amqp://, postgresql://); default: in one process",
    )
    demo.add_argument(
        "--store", metavar="URL", help="saga store URL (default: a temporary SQLite file)"
    )
    demo.add_argument(
        "--journal",
        metavar="URL",
        help="flow journal URL every process writes to (default: a SQLite file in the "
        "temporary directory, kept so that `sagaflow trace` can read it)",
    )
    demo.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    try:
        from sagaflow.demo import run_demo
    except ImportError as exc:  # pragma: no cover - the demo ships with the package
        print(f"sagaflow: the demo is not available: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return _guard(
        lambda: run_demo(
            style=args.style,
            failures=args.fail,
            transport=args.transport,
            store=args.store,
            journal=args.journal,
        )
    )


def _add_sagas(commands: Any) -> None:
    sagas = commands.add_parser(
        "sagas",
        help="list, show and operate sagas in a store",
        description="Inspect and operate sagas. Operator commands write to the log; "
        "a worker running the saga's code continues the saga.",
    )
    actions = sagas.add_subparsers(title="actions", metavar="ACTION", required=True)

    def with_store(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "--store",
            default=os.environ.get("SAGAFLOW_STORE"),
            metavar="URL",
            help="saga store URL: sqlite:///file.db, postgresql://..., memory:// "
            "(default: $SAGAFLOW_STORE)",
        )
        return sub

    listing = with_store(actions.add_parser("list", help="list sagas, newest first"))
    listing.add_argument("--status", choices=[s.value for s in SagaStatus])
    listing.add_argument(
        "--limit",
        type=_positive_int,
        default=50,
        metavar="N",
        help="list at most N sagas (default: 50)",
    )
    listing.add_argument("--json", action="store_true", help="print JSON lines")
    listing.set_defaults(handler=_with_store(_list))

    show = with_store(actions.add_parser("show", help="show a saga's whole log"))
    show.add_argument("saga_id")
    show.add_argument("--json", action="store_true", help="print the log as JSON")
    show.set_defaults(handler=_with_store(_show))

    for name, text in (
        ("retry", "try a parked saga's failed compensation (or step) again"),
        ("resume", "resume a parked saga where it stopped (same as retry)"),
    ):
        sub = with_store(actions.add_parser(name, help=text))
        sub.add_argument("saga_id")
        sub.set_defaults(handler=_with_store(_resume))

    skip = with_store(
        actions.add_parser("skip", help="skip a parked saga's failed compensation, with a reason")
    )
    skip.add_argument("saga_id")
    skip.add_argument("--reason", required=True, help="why; recorded in the saga log")
    skip.set_defaults(handler=_with_store(_skip))


def _positive_int(text: str) -> int:
    """Parse a count of at least 1 (argparse reports the error and exits with 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _open_store(url: str) -> SagaStore:
    # Imported here: the store drivers load only for the commands that use a store.
    from sagaflow.stores import open_store

    return open_store(url)


_ERRORS: tuple[ErrorRule, ...] = (
    ((SagaNotFoundError, SagaStateError, ConcurrencyError), EXIT_REFUSED, "{exc}"),
    (ConfigurationError, EXIT_USAGE, "{exc}"),
    (StoreUnavailableError, EXIT_UNAVAILABLE, "store unavailable: {exc}"),
    (StoreError, EXIT_UNAVAILABLE, "store error: {exc}"),
)


def _with_store(
    action: Callable[[SagaStore, argparse.Namespace], Awaitable[int]],
) -> Callable[[argparse.Namespace], int]:
    return resource_command(
        action,
        url=lambda args: args.store,
        missing="--store URL is required (or set SAGAFLOW_STORE)",
        open_resource=_open_store,
        rules=_ERRORS,
    )


def _guard(body: Callable[[], int]) -> int:
    """Turn sagaflow errors into a message on stderr and an exit code."""
    return guard(body, _ERRORS)


async def _list(store: SagaStore, args: argparse.Namespace) -> int:
    status = SagaStatus(args.status) if args.status else None
    summaries = await store.list_sagas(status=status, limit=args.limit)
    if args.json:
        for s in summaries:
            print(
                json.dumps(
                    {
                        "saga_id": s.saga_id,
                        "saga": s.saga_name,
                        "status": s.status.value,
                        "version": s.version,
                        "updated_at": s.updated_at,
                        "owner": s.owner,
                    }
                )
            )
        return EXIT_OK
    if not summaries:
        print("no sagas")
        return EXIT_OK
    print(f"{'SAGA ID':<36} {'SAGA':<20} {'STATUS':<13} {'RECORDS':>7}  OWNER")
    for s in summaries:
        owner = s.owner or "-"
        print(f"{s.saga_id:<36} {s.saga_name:<20} {s.status.value:<13} {s.version:>7}  {owner}")
    return EXIT_OK


async def _show(store: SagaStore, args: argparse.Namespace) -> int:
    log = await store.load(args.saga_id)
    if args.json:
        print(
            json.dumps(
                {
                    "saga_id": log.saga_id,
                    "saga": log.saga_name,
                    "definition_version": log.definition_version,
                    "status": log.status.value,
                    "records": [r.to_json_dict() for r in log.records],
                },
                indent=2,
                default=str,
            )
        )
        return EXIT_OK
    print(render_timeline(log.saga_id, log.status, log.records, saga_name=log.saga_name))
    return EXIT_OK


async def _resume(store: SagaStore, args: argparse.Namespace) -> int:
    _, log = await resume_parked(store, args.saga_id, owner=OPERATOR, lease=30.0)
    print(f"saga {log.saga_id} is {log.status.value}; a worker will continue it")
    return EXIT_OK


async def _skip(store: SagaStore, args: argparse.Namespace) -> int:
    _, log = await resume_parked(
        store, args.saga_id, owner=OPERATOR, lease=30.0, skip_reason=args.reason
    )
    print(f"skipped; saga {log.saga_id} is {log.status.value}; a worker will continue it")
    return EXIT_OK


if __name__ == "__main__":
    main()
