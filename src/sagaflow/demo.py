"""Entry point of ``sagaflow demo``: the e-commerce example (see `sagaflow.examples.ecommerce`)."""

from sagaflow.examples.ecommerce.demo import run_demo

__all__ = ["run_demo"]
