"""The comparisons: one moeroute spec against one library function that implements the same rule, group by group.

A group counts as identical when both sides dispatch exactly the same (token, expert) pairs; the weight difference
is the largest ``|w_moeroute - w_library|`` over the identical groups (``0.0``: bit-identical weights). A few
comparisons are marked ``equivalent=False``: the library's rule has no exact equivalent in moeroute (Megatron's
``position`` policy and DeepSpeed's ``top1gating`` keep whichever tokens ``torch.topk`` returns among equal 0/1
entries), and they are measured to document how far apart the two are (docs/crosscheck.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from moeroute.core.errors import MoeRouteError
from moeroute.crosscheck import libraries as lib
from moeroute.routers import route

LibraryRun = Callable[..., tuple]
"""``(logits [G, T, E], k, capacity_factor) -> (map, weights)`` or ``(map, weights, state)``; ``weights`` may be
``None`` (not compared)."""


@dataclass(frozen=True)
class Comparison:
    """One moeroute spec (``spec(k)``, ``None`` where the comparison does not apply at that ``k``) against one
    library call. ``capacity``: compared with a capacity factor (``False``: without one). ``state``: the router state
    both sides start from (e.g. a DeepSeek-V3 expert bias), as a function of ``E``."""

    name: str
    library: str
    spec: Callable[[int], Optional[str]]
    run: LibraryRun
    capacity: bool = True
    equivalent: bool = True
    needs: Callable[[], Optional[str]] = field(default=lambda: None)
    state: Optional[Callable[[int], dict[str, torch.Tensor]]] = None
    note: str = ""

    def unavailable(self) -> Optional[str]:
        """Why this comparison cannot run here (``None``: it can)."""
        return lib.missing(self.library) or self.needs()


@dataclass
class Outcome:
    """What one comparison found on a set of groups."""

    name: str
    identical: int = 0
    compared: int = 0
    max_weight_diff: float = 0.0
    weights_compared: bool = True
    state_identical: Optional[bool] = None
    differing: list[int] = field(default_factory=list)
    skipped: Optional[str] = None

    def add(self, other: "Outcome") -> "Outcome":
        self.identical += other.identical
        self.compared += other.compared
        self.max_weight_diff = max(self.max_weight_diff, other.max_weight_diff)
        self.weights_compared = self.weights_compared and other.weights_compared
        if other.state_identical is not None:
            self.state_identical = other.state_identical and self.state_identical is not False
        return self


def run_comparison(c: Comparison, logits: torch.Tensor, k: int, capacity_factor: Optional[float]) -> Outcome:
    """Route ``logits`` ``[G, T, E]`` with both sides of ``c`` at ``k`` (and ``capacity_factor`` when ``c``
    compares with a capacity) and count the identical groups."""
    why = c.unavailable()
    spec = c.spec(k)
    if why or spec is None:
        return Outcome(c.name, skipped=why or f"not applicable at k={k}")
    cf = capacity_factor if c.capacity else None
    state = c.state(logits.shape[2]) if c.state is not None else None
    try:
        ours = route(logits, spec, k=k, capacity_factor=cf, state=state)
    except MoeRouteError as exc:
        return Outcome(c.name, skipped=str(exc))
    theirs = c.run(logits, k, cf)
    our_map, our_w = ours.dispatch_mask(), ours.combine_weights()
    out = Outcome(c.name, compared=logits.shape[0], weights_compared=theirs[1] is not None)
    for g in range(logits.shape[0]):
        if torch.equal(our_map[g], theirs[0][g]):
            out.identical += 1
            if theirs[1] is not None:
                diff = (our_w[g].double() - theirs[1][g].double()).abs().max()
                out.max_weight_diff = max(out.max_weight_diff, float(diff))
        else:
            out.differing.append(g)
    if len(theirs) > 2:
        out.state_identical = all(torch.equal(ours.state[key], value) for key, value in theirs[2].items())
    return out


# ------------------------------------------------------------------ the comparisons


def _from(k_min: int, spec: str) -> Callable[[int], Optional[str]]:
    return lambda k: spec if k >= k_min else None


def _megatron(**kw) -> LibraryRun:
    return lambda logits, k, cf: lib.megatron_topk(logits, k, cf, **kw)


def _megatron_grouped(**kw) -> LibraryRun:
    return lambda logits, k, cf: lib.megatron_topk(logits, k, cf, groups=4, group_topk=2, **kw)


def _stream(**kw) -> LibraryRun:
    def run(logits: torch.Tensor, k: int, cf: Optional[float]) -> tuple:
        maps, probs, bias = lib.megatron_expert_bias_stream(logits, k, cf, **kw)
        return maps, probs, {"bias": bias}

    return run


def _qb(logits: torch.Tensor, k: int, cf: Optional[float]) -> tuple:
    maps, probs, beta = lib.megatron_qb_stream(logits, k)
    return maps, probs, {"beta": beta}


def _needs_megatron(name: str) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        if lib.missing("megatron.core") or (lib.megatron_has(name) and lib.megatron_has("topk_routing_with_score_function", "precomputed_indices")):
            return None
        return (f"megatron-core has no {name} here (it arrived in Megatron-LM after 0.16; megatron-core 0.17+ needs "
                f"Python >= 3.12): set {lib.MEGATRON_LM_ENV} to a Megatron-LM checkout")

    return check


def _needs_megatron_score(score: str) -> Callable[[], Optional[str]]:
    def check() -> Optional[str]:
        if lib.missing("megatron.core") or lib.megatron_topk_function(score) is not None:
            return None
        return (f"megatron-core has no {lib.MEGATRON_SCORE[score]} score function here (added after 0.16): set "
                f"{lib.MEGATRON_LM_ENV} to a Megatron-LM checkout")

    return check


def _hf(name: str) -> LibraryRun:
    return lambda logits, k, cf: lib.hf_router(name, logits, k)


def _deepseek_bias(e: int) -> dict[str, torch.Tensor]:
    return {"bias": torch.randn(e, generator=torch.Generator().manual_seed(1)) * 0.05}


def _hf_deepseek_biased(logits: torch.Tensor, k: int, cf: Optional[float]) -> tuple:
    return lib.hf_router("deepseek_v3", logits, k, bias=_deepseek_bias(logits.shape[2])["bias"])


DSV3 = "score=sigmoid,groups=4,group_topk={m},scaling=2.5"

COMPARISONS: list[Comparison] = [
    Comparison("gshard probs, pre_softmax=true", "megatron.core", _from(1, "gshard:drop_policy=probs"),
               _megatron(pre_softmax=True, drop_policy="probs")),
    Comparison("gshard probs, pre_softmax=false", "megatron.core",
               _from(2, "gshard:drop_policy=probs,pre_softmax=false"), _megatron(pre_softmax=False, drop_policy="probs"),
               note="k=1 excluded: Megatron refuses pre_softmax=false there (every prob is 1)"),
    Comparison("gshard probs, sigmoid", "megatron.core", _from(1, "gshard:drop_policy=probs,score=sigmoid"),
               _megatron(score="sigmoid", drop_policy="probs")),
    Comparison("gshard probs, scaling 2.5", "megatron.core", _from(1, "gshard:drop_policy=probs,scaling=2.5"),
               _megatron(scaling=2.5, drop_policy="probs")),
    Comparison("gshard probs, group-limited 4/2, pre_softmax=false", "megatron.core",
               _from(2, "gshard:drop_policy=probs,pre_softmax=false,groups=4,group_topk=2"),
               _megatron_grouped(pre_softmax=False, drop_policy="probs")),
    Comparison("gshard probs, sigmoid, group-limited 4/2, scaling 2.5", "megatron.core",
               _from(2, "gshard:drop_policy=probs,score=sigmoid,groups=4,group_topk=2,scaling=2.5"),
               _megatron_grouped(score="sigmoid", scaling=2.5, drop_policy="probs")),
    Comparison("gshard probs, sqrt_softplus", "megatron.core", _from(1, "gshard:drop_policy=probs,score=sqrt_softplus"),
               _megatron(score="sqrt_softplus", drop_policy="probs"), needs=_needs_megatron_score("sqrt_softplus")),
    Comparison("dropless, pre_softmax=false", "megatron.core", _from(2, "dropless:pre_softmax=false"),
               _megatron(pre_softmax=False), capacity=False),
    Comparison("dropless, sigmoid, group-limited 4/2", "megatron.core",
               _from(2, "dropless:score=sigmoid,groups=4,group_topk=2"), _megatron_grouped(score="sigmoid"),
               capacity=False),
    Comparison("gshard position vs Megatron position", "megatron.core", _from(1, "gshard"),
               _megatron(drop_policy="position"), equivalent=False,
               note="Megatron keeps the tokens torch.topk picks among equal 0/1 entries, not the first comers"),
    Comparison("aux_free mode=megatron, update_every=4 (stream)", "megatron.core",
               _from(1, "aux_free:mode=megatron,score=sigmoid,drop_policy=probs,update_every=4"),
               _stream(update_every=4)),
    Comparison("aux_free mode=megatron, group-limited, rate 0.01 (stream)", "megatron.core",
               _from(2, "aux_free:mode=megatron,score=sigmoid,drop_policy=probs,groups=4,group_topk=2,rate=0.01"),
               _stream(update_every=1, rate=0.01, groups=4, group_topk=2)),
    Comparison("qb (stream)", "megatron.core", _from(1, "qb"), _qb, capacity=False,
               needs=_needs_megatron("qb_dual_update")),
    Comparison("gshard order=token vs topkgating position", "deepspeed",
               _from(1, "gshard:order=token,renormalize=true"),
               lambda logits, k, cf: lib.deepspeed_gate(logits, k, cf, "position")),
    Comparison("gshard probs vs topkgating probs", "deepspeed", _from(1, "gshard:drop_policy=probs,renormalize=true"),
               lambda logits, k, cf: lib.deepspeed_gate(logits, k, cf, "probs")),
    Comparison("gshard order=rank vs top2gating", "deepspeed",
               lambda k: "gshard:renormalize=true" if k == 2 else None,
               lambda logits, k, cf: lib.deepspeed_gate(logits, k, cf, "top2"),
               note="second expert without Gumbel sampling (top2_2nd_expert_sampling=False)"),
    Comparison("gshard vs top1gating(use_rts=False)", "deepspeed", lambda k: "gshard" if k == 1 else None,
               lambda logits, k, cf: lib.deepspeed_gate(logits, k, cf, "top1"), equivalent=False,
               note="top1gating keeps the tokens torch.topk picks among equal 0/1 entries"),
    Comparison("dropless:renormalize=true vs Mixtral", "transformers", _from(1, "dropless:renormalize=true"),
               _hf("mixtral"), capacity=False),
    Comparison("dropless vs Qwen2-MoE", "transformers", _from(1, "dropless"), _hf("qwen2_moe"), capacity=False),
    Comparison("dropless vs OLMoE", "transformers", _from(1, "dropless"), _hf("olmoe"), capacity=False),
    Comparison("dropless:renormalize=true vs Qwen3-MoE", "transformers", _from(1, "dropless:renormalize=true"),
               _hf("qwen3_moe"), capacity=False),
    Comparison("dropless sigmoid group-limited vs DeepSeek-V3", "transformers",
               lambda k: "dropless:" + DSV3.format(m=k // 2) if k >= 2 else None, _hf("deepseek_v3"), capacity=False,
               note="HF scores a group by its top-2, Megatron by its top k/group_topk: equal with group_topk = k/2"),
    Comparison("aux_free mode=megatron (fixed bias) vs DeepSeek-V3", "transformers",
               lambda k: "aux_free:mode=megatron,update_every=0," + DSV3.format(m=k // 2) if k >= 2 else None,
               _hf_deepseek_biased, capacity=False, state=_deepseek_bias,
               note="the bias (e_score_correction_bias) enters selection only"),
]
"""Every comparison, in the order of the table in docs/crosscheck.md."""


def comparison(name: str) -> Comparison:
    for c in COMPARISONS:
        if c.name == name:
            return c
    raise MoeRouteError(f"unknown comparison {name!r}")
