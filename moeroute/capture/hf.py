"""Record the router logits of a Hugging Face transformers MoE causal LM (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE,
DeepSeek-V3 style) over a text, one ``[N, E]`` float32 tensor per MoE layer (``layer0``, ``layer1``, ... by the
model's layer index), and the routing settings of the model's config (:func:`routing_config`).

Offline by construction: ``HF_HUB_OFFLINE`` is set before transformers is imported, and the model is either a
local directory (weights if it has them, otherwise a random init from its ``config.json``) or a config JSON file
(random init, seeded). transformers is an optional dependency (the ``capture`` extra), imported only here.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from moeroute.core.errors import MoeRouteError

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Router modules: ``...layers.<i>....gate`` (Mixtral, Qwen2-MoE, OLMoE, DeepSeek) or ``....router``. A dot before
# the name keeps out ``shared_expert_gate`` (Qwen2-MoE's one-output gate of its shared expert).
_ROUTER_NAME = re.compile(r"layers\.(\d+)\..*\.(gate|router)$")
_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _transformers() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise MoeRouteError(
            "moeroute capture needs transformers: pip install 'moeroute[capture]' (or pip install transformers)"
        ) from None
    transformers.logging.set_verbosity_error()
    return transformers


def num_experts(config: Any) -> int:
    """The number of routed experts a transformers config declares."""
    for key in _EXPERT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    raise MoeRouteError(f"model config ({type(config).__name__}) declares no experts ({', '.join(_EXPERT_KEYS)}): not an MoE model")


# Models whose router scores are sigmoid(logits) although their config names no score function.
_SIGMOID_MODELS = ("deepseek_v3", "glm4_moe", "dots1")
# Models that always renormalise the top-k weights (no config switch).
_ALWAYS_RENORMALISE = ("mixtral", "minimax", "jamba")


def routing_config(config: Any) -> dict[str, Any]:
    """What routing needs from a transformers config: experts per token ``k``, the score function (``softmax`` or
    ``sigmoid``), group-limited routing (``groups`` = ``n_group``, ``group_topk`` = ``topk_group``), whether the
    top-k weights are renormalised (``norm_topk_prob``) and the routed scaling factor. Unknown values are left out."""
    model_type = str(getattr(config, "model_type", ""))
    out: dict[str, Any] = {"model_type": model_type}
    k = getattr(config, "num_experts_per_tok", None) or getattr(config, "moe_topk", None)
    if isinstance(k, int) and k > 0:
        out["k"] = k
    score = getattr(config, "scoring_func", None)
    out["score"] = str(score) if score else ("sigmoid" if model_type in _SIGMOID_MODELS else "softmax")
    groups, group_topk = getattr(config, "n_group", None), getattr(config, "topk_group", None)
    if isinstance(groups, int) and groups > 0:
        out["groups"] = groups
        if isinstance(group_topk, int) and group_topk > 0:
            out["group_topk"] = group_topk
    norm = getattr(config, "norm_topk_prob", None)
    if isinstance(norm, bool):
        out["renormalize"] = norm
    elif model_type in _ALWAYS_RENORMALISE:
        out["renormalize"] = True
    scaling = getattr(config, "routed_scaling_factor", None)
    out["routed_scaling"] = float(scaling) if isinstance(scaling, (int, float)) else 1.0
    return out


def load_model(model: str, seed: int = 0) -> tuple[Any, Optional[Any]]:
    """The causal LM named by ``model`` (a local directory or a config JSON file) in eval mode, and its tokenizer
    when the directory has one (else ``None``)."""
    tf = _transformers()
    path = Path(model)
    if not path.exists():
        raise MoeRouteError(f"model not found: {model} (give a local model directory or a config JSON file)")
    torch.manual_seed(seed)  # the random init of a config-only model is part of the experiment: seed it
    tokenizer = None
    try:
        if path.is_file():
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise MoeRouteError(f"{model}: not a readable config JSON ({exc})") from None
            if not isinstance(raw, dict) or "model_type" not in raw:
                raise MoeRouteError(f"{model}: a config JSON needs a 'model_type' (e.g. mixtral, qwen2_moe, olmoe)")
            config = tf.AutoConfig.for_model(raw.pop("model_type"), **raw)
            net = tf.AutoModelForCausalLM.from_config(config)
        else:
            if not (path / "config.json").is_file():
                raise MoeRouteError(f"{model}: no config.json in this directory")
            if any((path / f).is_file() for f in _WEIGHT_FILES):
                net = tf.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
            else:
                net = tf.AutoModelForCausalLM.from_config(tf.AutoConfig.from_pretrained(str(path), local_files_only=True))
            try:
                tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            except Exception:  # no tokenizer files: fall back to bytes (see tokenize)
                tokenizer = None
    except MoeRouteError:
        raise
    except Exception as exc:  # transformers raises many types (ValueError, OSError, KeyError) for a bad model
        raise MoeRouteError(f"{model}: cannot build the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    net.eval()
    num_experts(net.config)
    return net, tokenizer


def tokenize(text: str, tokenizer: Optional[Any], vocab_size: int) -> torch.Tensor:
    """Token ids ``[N]``: the model's tokenizer, or (a config-only model has none) the UTF-8 bytes modulo the
    vocabulary size, which keeps real text structure (repeated words repeat ids) without any download."""
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long) % vocab_size


def _router_modules(net: Any, experts: int) -> dict[int, Any]:
    found: dict[int, Any] = {}
    for name, module in net.named_modules():
        match = _ROUTER_NAME.search(name)
        if match and int(match.group(1)) not in found:
            found[int(match.group(1))] = module
    return found


def _first_tensor(output: Any) -> Optional[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


@torch.no_grad()
def capture_router_logits(net: Any, ids: torch.Tensor, max_length: int = 512) -> dict[str, torch.Tensor]:
    """Run ``net`` over token ids ``[N]`` in consecutive windows of ``max_length`` and return every MoE layer's
    router logits, ``{"layer<i>": float32 [N, E]}``.

    Forward hooks on the router modules give the true layer index (dense layers of a mixed model are skipped);
    a model whose routers are not found that way is asked for ``output_router_logits=True`` instead (keys then
    count the MoE layers in order).
    """
    experts = num_experts(net.config)
    if ids.numel() == 0:
        raise MoeRouteError("the text gives no tokens")
    per_layer: dict[int, list[torch.Tensor]] = {}

    def hook_for(layer: int):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            logits = _first_tensor(output)
            if logits is not None and logits.shape[-1] == experts:
                per_layer.setdefault(layer, []).append(logits.detach().reshape(-1, experts).float().cpu())
        return hook

    handles = [m.register_forward_hook(hook_for(i)) for i, m in _router_modules(net, experts).items()]
    try:
        for start in range(0, ids.numel(), max_length):
            window = ids[start:start + max_length][None]
            seen = sum(len(v) for v in per_layer.values())
            out = net(input_ids=window, output_router_logits=not handles, use_cache=False)
            if handles and sum(len(v) for v in per_layer.values()) == seen:
                raise MoeRouteError("found router modules but they produced no [tokens, E] logits")
            if not handles:
                logits = getattr(out, "router_logits", None)
                if not logits:
                    raise MoeRouteError(f"{type(net).__name__} returns no router logits: not a supported MoE model")
                for i, layer in enumerate(logits):
                    per_layer.setdefault(i, []).append(layer.detach().reshape(-1, experts).float().cpu())
    finally:
        for h in handles:
            h.remove()
    result = {f"layer{i}": torch.cat(chunks).contiguous() for i, chunks in sorted(per_layer.items())}
    for name, tensor in result.items():
        if tensor.shape[0] != ids.numel():
            raise MoeRouteError(f"{name}: captured {tensor.shape[0]} rows for {ids.numel()} tokens")
    return result


def save_tensors(tensors: dict[str, torch.Tensor], out: str, metadata: Optional[dict[str, str]] = None) -> None:
    """Write ``tensors`` to ``out`` (``.safetensors`` or ``.pt``) atomically: a temp file, then a rename."""
    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise MoeRouteError(f"{out}: the output must end in .safetensors or .pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".partial.{os.getpid()}")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata=metadata)
        else:
            torch.save(tensors, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
