"""harvest-async: event-driven profit-harvest proposals from Redis inputs.

It only proposes; it never trades.
"""

from harvest_async.core.kernel import KernelInputError, compute
from harvest_async.core.models import Decision, MarketState, Position, RiskProposal, Theta

__version__ = "0.1.0"

__all__ = [
    "Decision",
    "KernelInputError",
    "MarketState",
    "Position",
    "RiskProposal",
    "Theta",
    "__version__",
    "compute",
]
