"""The public libraries' own routing functions, called on moeroute's logits one routing group at a time.

Each adapter takes logits ``[G, T, E]`` and returns what the library decided as a dispatch map (bool ``[G, T, E]``)
and combine weights (``[G, T, E]``, zero where not dispatched), the form both sides are compared in. The libraries
are imported on first use (``pip install -e ".[crosscheck]"``, with ``DS_BUILD_OPS=0 DS_ACCELERATOR=cpu`` for
DeepSpeed on a CPU machine); :func:`missing` names what is not installed.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from typing import Any, Iterator, Optional

import torch

MEGATRON_SCORE = {"softmax": "softmax", "sigmoid": "sigmoid", "sqrt_softplus": "sqrtsoftplus"}


def missing(module: str) -> Optional[str]:
    """Why ``module`` cannot be imported (``None``: it can)."""
    try:
        _import(module)
    except Exception as exc:  # ImportError, or a library failing at import on this machine
        return f"{module} is not usable here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return None


def _import(module: str) -> Any:
    if module.startswith("deepspeed"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Megatron warns that Transformer Engine and Apex are absent
        return importlib.import_module(module)


def megatron_utils() -> Any:
    """``megatron.core.transformer.moe.moe_utils``."""
    return _import("megatron.core.transformer.moe.moe_utils")


MEGATRON_LM_ENV = "MOEROUTE_MEGATRON_LM"
"""Environment variable naming a Megatron-LM source checkout: functions the installed megatron-core lacks (QB's
``qb_dual_update`` arrived after 0.16, and megatron-core 0.17+ needs Python >= 3.12) are then read from its
``megatron/core/transformer/moe/moe_utils.py``."""


_SOURCE_NEEDS = {"topk_routing_with_score_function": ("group_limited_topk",)}
"""Functions of moe_utils.py that call others of the same file: compiled together."""


def megatron_function(name: str, parameter: Optional[str] = None) -> Optional[Any]:
    """``moe_utils.<name>`` (one that takes ``parameter``, if given) from the installed megatron-core, else from the
    Megatron-LM checkout named by :data:`MEGATRON_LM_ENV` (that function's definition and the few it calls, compiled
    on their own, with Transformer Engine and batch-invariant mode off), else ``None``."""
    import inspect

    installed = getattr(megatron_utils(), name, None) if missing("megatron.core") is None else None
    if installed is not None and (parameter is None or parameter in inspect.signature(installed).parameters):
        return installed
    root = os.environ.get(MEGATRON_LM_ENV)
    if not root:
        return None
    path = os.path.join(root, "megatron/core/transformer/moe/moe_utils.py")
    return _functions_from_source(path, (name, *_SOURCE_NEEDS.get(name, ()))).get(name)


def _functions_from_source(path: str, names: tuple[str, ...]) -> dict[str, Any]:
    import ast
    import typing

    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except OSError:
        return {}
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    namespace: dict[str, Any] = {
        "torch": torch, **{n: getattr(typing, n) for n in ("Tuple", "Optional", "List", "Union")},
        "HAVE_TE": False, "fused_topk_with_score_function": None, "is_te_min_version": lambda *a, **kw: False,
        "is_batch_invariant_mode_enabled": lambda: False,
    }
    exec(compile(ast.Module(body=found, type_ignores=[]), path, "exec"), namespace)  # noqa: S102
    return {n: namespace[n] for n in names if n in namespace}


def megatron_has(name: str, parameter: Optional[str] = None) -> bool:
    """Whether ``moe_utils.<name>`` can be had (:func:`megatron_function`)."""
    return megatron_function(name, parameter) is not None


def megatron_supports_score(score: str) -> bool:
    """Whether the installed megatron-core knows the score function (sqrtsoftplus arrived after 0.16)."""
    try:
        megatron_utils().topk_routing_with_score_function(torch.zeros(1, 2), 1, score_function=MEGATRON_SCORE[score])
    except ValueError:
        return False
    return True


def megatron_topk_function(score: str) -> Optional[Any]:
    """``topk_routing_with_score_function`` that knows ``score``: the installed one, or Megatron-LM's
    (:func:`megatron_function`) for a score function the installed megatron-core lacks."""
    if megatron_supports_score(score):
        return megatron_utils().topk_routing_with_score_function
    return megatron_function("topk_routing_with_score_function", "precomputed_indices")


def _dense(rows: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(rows)


def megatron_topk(
    logits: torch.Tensor,
    k: int,
    capacity_factor: Optional[float],
    *,
    score: str = "softmax",
    pre_softmax: bool = True,
    groups: Optional[int] = None,
    group_topk: Optional[int] = None,
    scaling: Optional[float] = None,
    drop_policy: str = "probs",
    bias: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Megatron-Core's ``topk_routing_with_score_function`` then (with a capacity factor)
    ``apply_router_token_dropping``, per group: ``(routing_map, routing_probs)`` ``[G, T, E]``."""
    mu = megatron_utils()
    topk = megatron_topk_function(score)
    maps, probs = [], []
    for group in logits:
        p, m = topk(
            group.clone(), k, use_pre_softmax=pre_softmax, num_groups=groups, group_topk=group_topk,
            scaling_factor=scaling, score_function=MEGATRON_SCORE[score], expert_bias=bias,
        )
        if capacity_factor is not None:
            p, m = mu.apply_router_token_dropping(p, m, router_topk=k, capacity_factor=capacity_factor,
                                                  drop_policy=drop_policy)
        maps.append(m)
        probs.append(p)
    return _dense(maps), _dense(probs)


@contextlib.contextmanager
def _single_process_all_reduce() -> Iterator[None]:
    """Megatron's bias update all-reduces the loads over its TP x DP x CP group; in one process that is the
    identity, so the collective and the group lookup are replaced by no-ops while it runs."""
    from unittest import mock

    mu = megatron_utils()
    with mock.patch.object(torch.distributed, "all_reduce", lambda *a, **kw: None), \
            mock.patch.object(mu.parallel_state, "get_tensor_and_data_parallel_group", lambda *a, **kw: None):
        yield


def megatron_expert_bias_stream(
    logits: torch.Tensor,
    k: int,
    capacity_factor: Optional[float],
    *,
    score: str = "sigmoid",
    rate: float = 1e-3,
    update_every: int = 1,
    drop_policy: str = "probs",
    groups: Optional[int] = None,
    group_topk: Optional[int] = None,
    scaling: Optional[float] = None,
    bias: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron-Core's aux-loss-free routing over a stream of groups, as its router and
    ``finalize_model_grads`` run it on one rank: each group routed with the current ``expert_bias``, its routing
    map after token dropping added to ``local_tokens_per_expert``, and every ``update_every`` groups (a global
    batch) ``get_updated_expert_bias``. Returns the maps, probs and the final bias."""
    mu = megatron_utils()
    e = logits.shape[2]
    bias = torch.zeros(e) if bias is None else bias.clone().float()
    tokens = torch.zeros(e, dtype=torch.float32)
    count = 0
    maps, probs = [], []
    for group in logits:
        m, p = megatron_topk(group.unsqueeze(0), k, capacity_factor, score=score, groups=groups,
                             group_topk=group_topk, scaling=scaling, drop_policy=drop_policy, bias=bias)
        maps.append(m[0])
        probs.append(p[0])
        tokens += m[0].sum(dim=0)
        count += 1
        if update_every and count == update_every:
            with _single_process_all_reduce():
                bias = mu.get_updated_expert_bias(tokens, bias, rate)
            tokens.zero_()
            count = 0
    return _dense(maps), _dense(probs), bias


def megatron_qb_stream(logits: torch.Tensor, k: int, *, ema: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron-Core's quantile balancing over a stream of groups on one rank, one group per global batch:
    ``qb_dual_update`` with the current ``qb_beta``, the probs from ``topk_routing_with_score_function`` at those
    indices (softmax, ``pre_softmax=True``), then the update of ``_update_router_qb_beta`` (EMA, re-centred). Needs
    ``qb_dual_update`` (:func:`megatron_function`). Returns the routing maps and probs ``[G, T, E]`` and the final
    beta."""
    qb_dual_update = megatron_function("qb_dual_update")
    topk = megatron_function("topk_routing_with_score_function", "precomputed_indices")
    beta = torch.zeros(logits.shape[2])
    maps, probs = [], []
    for group in logits:
        indices, local = qb_dual_update(group.float(), k, beta, update_beta=True)
        p, m = topk(group.clone(), k, use_pre_softmax=True, precomputed_indices=indices)
        maps.append(m)
        probs.append(p)
        new = ema * beta + (1.0 - ema) * local
        beta = new - new.mean(dim=-1, keepdim=True)
    return _dense(maps), _dense(probs), beta


def deepspeed_gate(logits: torch.Tensor, k: int, capacity_factor: float, drop_policy: str = "position") -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSpeed's gating per group with token dropping: ``top1gating(use_rts=False)`` for ``k = 1``,
    ``top2gating(top2_2nd_expert_sampling=False)`` for ``k = 2`` (``drop_policy="top2"``) or ``topkgating``
    (``drop_policy="position"`` / ``"probs"``): ``(dispatch map, combine weights)`` ``[G, T, E]``."""
    sm = _import("deepspeed.moe.sharded_moe")
    maps, weights = [], []
    for group in logits:
        x = group.clone()
        if drop_policy == "top1":
            _, combine, dispatch, _ = sm.top1gating(x, capacity_factor, 1, use_rts=False)
        elif drop_policy == "top2":
            _, combine, dispatch, _ = sm.top2gating(x, capacity_factor, 1, top2_2nd_expert_sampling=False)
        else:
            _, combine, dispatch, _ = sm.topkgating(x, k, capacity_factor, 1, drop_policy=drop_policy)
        maps.append(dispatch.any(dim=-1))
        weights.append(combine.sum(dim=-1))
    return _dense(maps), _dense(weights)


HF_ROUTERS = {
    # name: (module, router class, config class, config keywords for E experts and top-k)
    "mixtral": ("transformers.models.mixtral.modeling_mixtral", "MixtralTopKRouter", "MixtralConfig",
                lambda e, k: {"num_local_experts": e, "num_experts_per_tok": k}),
    "qwen2_moe": ("transformers.models.qwen2_moe.modeling_qwen2_moe", "Qwen2MoeTopKRouter", "Qwen2MoeConfig",
                  lambda e, k: {"num_experts": e, "num_experts_per_tok": k, "norm_topk_prob": False}),
    "olmoe": ("transformers.models.olmoe.modeling_olmoe", "OlmoeTopKRouter", "OlmoeConfig",
              lambda e, k: {"num_experts": e, "num_experts_per_tok": k, "norm_topk_prob": False}),
    "qwen3_moe": ("transformers.models.qwen3_moe.modeling_qwen3_moe", "Qwen3MoeTopKRouter", "Qwen3MoeConfig",
                  lambda e, k: {"num_experts": e, "num_experts_per_tok": k, "norm_topk_prob": True}),
    "deepseek_v3": ("transformers.models.deepseek_v3.modeling_deepseek_v3", "DeepseekV3TopkRouter",
                    "DeepseekV3Config",
                    lambda e, k: {"n_routed_experts": e, "num_experts_per_tok": k, "n_group": 4,
                                  "topk_group": max(1, k // 2), "norm_topk_prob": True,
                                  "routed_scaling_factor": 2.5}),
}
"""The Hugging Face routers compared with ``dropless``: a tiny random config each (offline), the gate weight set
to the identity so that the router's logits are moeroute's logits exactly."""


def hf_router(name: str, logits: torch.Tensor, k: int, bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hugging Face ``name`` router (see :data:`HF_ROUTERS`) on each group: ``(map, weights)`` ``[G, T, E]``.
    ``bias`` sets DeepSeek-V3's ``e_score_correction_bias``."""
    module, cls, config_cls, keywords = HF_ROUTERS[name]
    transformers = _import("transformers")
    e = logits.shape[2]
    config = getattr(transformers, config_cls)(hidden_size=e, num_attention_heads=4, num_key_value_heads=4,
                                                 **keywords(e, k))
    router = getattr(_import(module), cls)(config)
    maps, weights = [], []
    with torch.no_grad():
        router.weight.copy_(torch.eye(e))
        if bias is not None:
            router.e_score_correction_bias.copy_(bias)
        for group in logits:
            got_logits, w, idx = router(group.clone())
            if not torch.equal(got_logits, group):
                raise RuntimeError(f"{name}: the identity gate changed the logits")
            t = group.shape[0]
            maps.append(torch.zeros(t, e, dtype=torch.bool).scatter(1, idx, True))
            weights.append(torch.zeros(t, e).scatter(1, idx, w.float()))
    return _dense(maps), _dense(weights)
