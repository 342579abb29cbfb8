"""The one exception type users see for bad input: its message names the problem in one line."""


class MoeRouteError(ValueError):
    """Bad input or an impossible request (shape, NaN, k > E, infeasible capacity, bad file, unknown router)."""


class RoutingInvariantError(AssertionError):
    """A router broke an invariant (a token got an expert twice, an expert exceeded C): a bug, not a data point."""
