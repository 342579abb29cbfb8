"""The exception types users see. Bad input raises :class:`MoeRouteError`, whose message names the problem in one
line; the command line prints it and exits with status 2."""


class MoeRouteError(ValueError):
    """Bad input or an impossible request (shape, NaN, k > E, infeasible capacity, bad file, unknown router)."""


class RouterFailure(MoeRouteError):
    """A router raised an unexpected exception (a bug, or a plugin's own error); the original is chained."""


class RoutingInvariantError(AssertionError):
    """A routing broke an invariant (a token got an expert twice, an expert exceeded C): a bug, not a data point."""
