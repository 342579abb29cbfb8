"""The routing contract is enforced by the framework: a router returns slots, the registry builds the Routing from
the problem's own k and capacity and checks it; what a router does differently it declares when it registers."""

from __future__ import annotations

import textwrap

import pytest
import torch

from moeroute import MoeRouteError, RoutingInvariantError, Slots, route
from moeroute.core.errors import RouterFailure
from moeroute.experiments.cli import main
from moeroute.routers import register_router, router_entry

from conftest import seeded_logits


def test_over_capacity_plugin_is_refused_with_one_line(tmp_path, capsys, scratch_routers):
    plugin = tmp_path / "greedy_plugin.py"
    plugin.write_text(textwrap.dedent("""
        import torch
        from moeroute.routers import register_router

        @register_router("everyone_to_zero", description="sends every token to experts 0..k-1, ignoring C")
        def everyone_to_zero(x, opts):
            return torch.arange(x.k).expand(x.groups, x.tokens, x.k).clone()
    """))
    code = main(["--plugin", str(plugin), "eval", "--synthetic", "gauss", "--tokens", "64", "--experts", "8",
                 "--router", "everyone_to_zero", "--cf", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("moeroute: routing refused: everyone_to_zero: an expert took 64 tokens, capacity is 16")


def test_a_router_cannot_skip_the_capacity_check_by_reporting_none(scratch_routers):
    # The old contract trusted Routing.capacity from the router; now the problem's capacity is the one checked.
    @register_router("claims_no_capacity")
    def claims_no_capacity(x, opts):
        return Slots(torch.zeros(x.groups, x.tokens, x.k, dtype=torch.long).add_(torch.arange(x.k)))

    with pytest.raises(RoutingInvariantError, match="capacity is"):
        route(seeded_logits(1, 32, 4), "claims_no_capacity", k=2, capacity_factor=1.0)
    # Declared dropless, the same slots are accepted and checked without a capacity.
    scratch_routers.remove("claims_no_capacity")
    register_router("claims_no_capacity", capacity="ignored")(claims_no_capacity)
    assert route(seeded_logits(1, 32, 4), "claims_no_capacity", k=2, capacity_factor=1.0).capacity is None


def test_plugin_raising_valueerror_is_one_line(tmp_path, capsys, scratch_routers):
    plugin = tmp_path / "raising.py"
    plugin.write_text(textwrap.dedent("""
        from moeroute.routers import register_router

        @register_router("raiser")
        def raiser(x, opts):
            raise ValueError("bad luck\\nsecond line")
    """))
    code = main(["--plugin", str(plugin), "eval", "--synthetic", "gauss", "--tokens", "16", "--router", "raiser"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["moeroute: error: router 'raiser' failed: ValueError: bad luck"]
    with pytest.raises(RouterFailure) as info:
        route(seeded_logits(1, 16, 4), "raiser")
    assert isinstance(info.value.__cause__, ValueError)  # the original is chained for --traceback / debuggers


@pytest.mark.parametrize(
    "returned, message",
    [
        (lambda x: "nonsense", "must return Slots or a long"),
        (lambda x: torch.zeros(x.groups, x.tokens, x.k), "long \\[G, T, R\\] tensor, got torch.float32"),
        (lambda x: torch.zeros(x.groups, x.tokens + 1, x.k, dtype=torch.long), "do not match the problem"),
        (lambda x: torch.full((x.groups, x.tokens, x.k + 1), -1, dtype=torch.long), "R=3, the problem has k=2"),
        (lambda x: torch.zeros(x.groups, x.tokens, x.k, dtype=torch.long), "same expert twice"),
        (lambda x: torch.full((x.groups, x.tokens, x.k), 9, dtype=torch.long), "out of range"),
    ],
)
def test_malformed_slots_are_refused(returned, message, scratch_routers):
    register_router("malformed")(lambda x, opts: returned(x))
    with pytest.raises(RoutingInvariantError, match=message):
        route(seeded_logits(1, 8, 4), "malformed", k=2, capacity_factor=None)


def test_preconditions_are_declared_and_refused_up_front():
    assert router_entry("base").requires is not None
    with pytest.raises(MoeRouteError, match="base: routes one expert per token \\(k=1\\), got k=2"):
        route(seeded_logits(1, 32, 4), "base", k=2)
    with pytest.raises(MoeRouteError, match="expert_choice: needs a capacity factor"):
        route(seeded_logits(1, 32, 4), "expert_choice", capacity_factor=None)


def test_declarations_of_the_builtin_routers():
    assert router_entry("dropless").capacity == "ignored"
    assert router_entry("expert_choice").experts_per_token == "any"
    assert router_entry("gshard").capacity == "enforced" and router_entry("gshard").experts_per_token == "k"


def test_state_goes_in_and_comes_out(scratch_routers):
    @register_router("counter")
    def counter(x, opts):
        seen = x.state.get("calls", torch.zeros(()))
        experts = torch.full((x.groups, x.tokens, x.k), -1, dtype=torch.long)
        return Slots(experts, state={"calls": seen + 1})

    first = route(seeded_logits(1, 8, 4), "counter")
    second = route(seeded_logits(1, 8, 4), "counter", state=first.state)
    assert float(first.state["calls"]) == 1.0 and float(second.state["calls"]) == 2.0
