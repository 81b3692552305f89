r"""One service of the order flow as its own process, over a real broker.

    python -m sagaflow.examples.ecommerce.service payment \\
        --style choreography --transport redis://127.0.0.1:6379/0 --prefix demo1

The process prints ``READY`` once subscribed, answers state requests (so the
demo can show every service's end state), and stops cleanly on SIGTERM. With
``--fail crash`` the payment service kills itself on its first request (while
holding the unacknowledged message); the demo restarts it and the broker
redelivers the message to the new process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from sagaflow.choreography import EventBus
from sagaflow.events import Event
from sagaflow.examples.ecommerce import choreographed, commands
from sagaflow.examples.ecommerce.services import Failures, Payments, Services
from sagaflow.observability.journal import open_journal
from sagaflow.observability.recorder import Journaling
from sagaflow.transports.base import Transport

__all__ = ["SERVICES", "ServiceState", "StateRequested", "demo_transport", "main"]

SERVICES = ("inventory", "payment", "shipping", "notification")
CRASH_EXIT_CODE = 70


class StateRequested(Event, type="shop.demo.state-requested.v1"):
    """The demo asks every service for its state."""

    request_id: str


class ServiceState(Event, type="shop.demo.service-state.v1"):
    """A service's answer: its part of the end state."""

    request_id: str
    service: str
    state: dict[str, Any]


def demo_transport(url: str) -> Transport:
    """Open a transport for ``url`` with short redelivery timers (a demo wants speed)."""
    scheme = url.partition("://")[0].lower()
    if scheme in ("redis", "rediss"):
        from sagaflow.transports.redis import RedisStreamsTransport

        return RedisStreamsTransport(url, claim_min_idle=1.0, claim_interval=0.5)
    if scheme in ("nats", "tls"):
        from sagaflow.transports.nats import NatsJetStreamTransport

        return NatsJetStreamTransport(url, ack_wait=2.0)
    if scheme in ("amqp", "amqps"):
        import importlib

        rabbitmq = importlib.import_module("sagaflow.transports.rabbitmq")
        transport: Transport = rabbitmq.RabbitMQTransport(url)
        return transport
    if scheme in ("postgresql", "postgres"):
        from sagaflow.transports.postgres import PostgresTransport

        return PostgresTransport(url, lease=2.0, poll_interval=0.2)
    from sagaflow.errors import ConfigurationError

    raise ConfigurationError(
        f"unsupported transport URL scheme {scheme!r}: use redis://, nats://, amqp:// "
        "or postgresql://"
    )


def prefixed(prefix: str) -> Any:
    """Topic naming that keeps each demo run's topics apart."""
    return lambda name: f"{prefix}.{name}"


def _state_of(name: str, services: Services) -> dict[str, Any]:
    snap = services.snapshot()
    parts = {
        "inventory": ("stock", "reservations"),
        "payment": ("charges", "refunds"),
        "shipping": ("shipments",),
        "notification": ("notifications",),
    }[name]
    return {key: snap[key] for key in parts}


class _CrashingPayments(Payments):
    """Kills the whole process on its first request (once per demo run)."""

    marker: Path | None = None

    async def charge(self, order_id: str, amount_cents: int) -> str:
        if self.marker is not None and not self.marker.exists():
            self.marker.touch()
            os._exit(CRASH_EXIT_CODE)  # a real crash: no cleanup, no ack
        return await super().charge(order_id, amount_cents)


async def serve(args: argparse.Namespace) -> None:
    """Run one service until SIGTERM."""
    failures = Failures.parse(args.fail)
    crash = failures.crash
    failures.crash = False  # the in-process stand-in for a crash is not used here
    services = Services(failures)
    if crash and args.name == "payment":
        crashing = _CrashingPayments(failures=failures)
        crashing.marker = Path(args.crash_marker) if args.crash_marker else None
        services.payments = crashing
    journaling = Journaling(open_journal(args.journal), service=args.name) if args.journal else None
    bus = EventBus(
        demo_transport(args.transport),
        source=f"/{args.name}",
        topic_for=prefixed(args.prefix),
        on_unrouted=lambda envelope: None,  # other processes subscribe to what we publish
        middleware=[journaling] if journaling is not None else [],
        on_dead_letter=journaling.on_dead_letter if journaling is not None else None,
    )
    if args.style == "choreography":
        choreographed.wire(bus, services, only={args.name})
    else:
        commands.serve_commands(bus, services, args.name)

    @bus.handler(StateRequested, group=f"state-{args.name}")
    async def report(event: StateRequested) -> None:
        await bus.publish(
            ServiceState(
                request_id=event.request_id, service=args.name, state=_state_of(args.name, services)
            )
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with bus:
        print("READY", flush=True)
        await stop.wait()
    if journaling is not None:
        await journaling.close()


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description="Run one service of the e-commerce demo.")
    parser.add_argument("name", choices=SERVICES)
    parser.add_argument("--style", choices=("orchestration", "choreography"), required=True)
    parser.add_argument("--transport", required=True, metavar="URL")
    parser.add_argument("--prefix", required=True, help="topic prefix of this demo run")
    parser.add_argument("--fail", action="append", default=[])
    parser.add_argument("--crash-marker", help="file that marks the crash as done")
    parser.add_argument("--journal", metavar="URL", help="flow journal to record into")
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
