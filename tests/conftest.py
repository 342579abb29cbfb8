"""Shared test helpers: seeded logits and the invariant checks every router must pass."""

from __future__ import annotations

import pytest
import torch

# Tests run many tiny ops; one thread avoids thread start-up costs and contention on 2-core CI machines.
torch.set_num_threads(1)


def seeded_logits(groups: int, tokens: int, experts: int, seed: int = 0, skew: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    bias = torch.randn(experts, generator=gen) * skew
    return torch.randn(groups, tokens, experts, generator=gen) + bias


@pytest.fixture
def scratch_routers():
    """The router registry, restored after the test: routers a test registers do not leak into later tests."""
    from moeroute.routers import ROUTERS

    saved = ROUTERS.snapshot()
    yield ROUTERS
    ROUTERS.restore(saved)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Caches the CLI writes (the `moeroute routers` listing) go to a folder of this test session."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
