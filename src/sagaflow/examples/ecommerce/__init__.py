"""The e-commerce order flow, built in both coordination styles on the same services.

* `services`: inventory, payment, shipping and notification services with their
  own small state, idempotent by key, and failure switches.
* `orchestrated`: an order saga (reserve stock, charge payment, ship, notify) run
  by an `Orchestrator`, with compensations (release stock, refund).
* `choreographed`: the same flow as services reacting to events on an `EventBus`,
  with choreographed compensation (payment failed: inventory releases the stock).
* `demo`: runs a scenario in either or both styles and prints what happened.

Copy from here: every module is short and uses only sagaflow's public API.
"""
