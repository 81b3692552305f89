"""sagaflow: sagas for asyncio services, orchestrated or choreographed.

The public API is what ``__all__`` lists; everything else is private.
"""

from sagaflow._version import __version__
from sagaflow.clock import Clock, SystemClock
from sagaflow.retry import RetryPolicy

__all__ = [
    "Clock",
    "RetryPolicy",
    "SystemClock",
    "__version__",
]
