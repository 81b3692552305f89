"""Exit codes and error handling shared by the ``sagaflow`` commands (private)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

ErrorRule = tuple[type[Exception] | tuple[type[Exception], ...], int, str]
"""``(exception types, exit code, message template)``; the template may use ``{exc}``
(the error) and ``{type}`` (its class name)."""


class _Closable(Protocol):
    async def close(self) -> None: ...


R = TypeVar("R", bound=_Closable)


def guard(body: Callable[[], int], rules: Sequence[ErrorRule]) -> int:
    """Run ``body``; turn an error into a message on stderr and an exit code.

    Args:
        body: The command; returns its exit code.
        rules: Tried in order; the first whose types match the error decides the
            exit code and the message (printed after ``sagaflow: ``). An error no
            rule matches propagates.

    Returns:
        ``body``'s exit code, or the code of the matching rule.
    """
    try:
        return body()
    except Exception as exc:
        for types, code, template in rules:
            if isinstance(exc, types):
                message = template.format(exc=exc, type=type(exc).__name__)
                print(f"sagaflow: {message}", file=sys.stderr)
                return code
        raise


def resource_command(
    action: Callable[[R, argparse.Namespace], Awaitable[int]],
    *,
    url: Callable[[argparse.Namespace], str | None],
    missing: str,
    open_resource: Callable[[str], R],
    rules: Sequence[ErrorRule],
) -> Callable[[argparse.Namespace], int]:
    """Build a handler that opens a store or journal, runs ``action`` on it and closes it.

    Args:
        action: The command proper.
        url: Reads the resource URL from the parsed arguments.
        missing: Message printed (exit code `EXIT_USAGE`) when there is no URL.
        open_resource: Opens the resource from its URL; called inside the event loop
            and under ``rules``, so a bad URL is reported like any other error.
        rules: Error handling, as for `guard`.

    Returns:
        The handler: parsed arguments in, exit code out.
    """

    def handler(args: argparse.Namespace) -> int:
        address = url(args)
        if not address:
            print(f"sagaflow: {missing}", file=sys.stderr)
            return EXIT_USAGE

        async def run() -> int:
            resource = open_resource(address)
            try:
                return await action(resource, args)
            finally:
                await resource.close()

        return guard(lambda: asyncio.run(run()), rules)

    return handler
