"""The balanced assignment of BASE layers by scipy's Hungarian solver: an independent reference for the routers'
exact balanced assignment (min-cost flow)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def balanced_lsa(scores: torch.Tensor) -> torch.Tensor:
    """The same optimum as :func:`balanced_exact` by scipy's ``linear_sum_assignment``: one ``[T, T]`` problem per
    group, expert ``e`` owning columns ``e*T/E .. (e+1)*T/E - 1``."""
    g, t, e = scores.shape
    per = t // e
    host = scores.detach().to("cpu", torch.float64).numpy()
    out = np.empty((g, t), dtype=np.int64)
    for i in range(g):  # one solver call per group: the solver is sequential
        rows, cols = linear_sum_assignment(np.repeat(host[i], per, axis=1), maximize=True)
        out[i, rows] = cols // per
    return torch.from_numpy(out).to(scores.device)
