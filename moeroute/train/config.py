"""The training ablation's configuration: a TOML file of tables ``[model]``, ``[data]``, ``[train]``, ``[output]``,
``[capture]``, a list ``[[arm]]`` and optional ``[profile.NAME.<table>]`` overrides (``--quick`` = ``quick``).

Every table is parsed into a frozen dataclass with :func:`moeroute.core.options.build_options`, so an unknown key or a
value of the wrong type is refused with one line that names the table and the file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Optional

from moeroute.core.config_files import read_config_file
from moeroute.core.device import DEVICE_HELP
from moeroute.core.errors import MoeRouteError
from moeroute.core.options import build_options


@dataclass(frozen=True)
class ModelConfig:
    """A byte-level decoder-only LM whose every block is attention + an MoE feed-forward layer.

    ``capacity_factor`` sets ``C = ceil(cf * k * T / E)`` per routing group, where a group is one sequence
    (``T = data.seq_len``); ``none`` = no capacity. ``aux_loss_coef`` scales the GShard balance loss
    ``E * sum_e m_e c_e`` (the paper's code: 0.01), whose statistics are taken over ``balance_scope``: each routing
    group (``group``, the default), the rank's micro-batch (``micro_batch``) or, for ``c_e``, the global batch over
    data-parallel ranks and micro-batches (``global``: Qwen's global-batch loss, Megatron's ``global_aux_loss``).
    ``z_loss_coef`` scales ST-MoE's router z-loss ``mean(logsumexp(logits)^2)`` (0 = off; ST-MoE uses 0.001).
    See docs/training.md.
    """

    d_model: int = 128
    layers: int = 2
    heads: int = 4
    experts: int = 16
    k: int = 2
    expert_hidden: int = 256
    capacity_factor: Optional[float] = 1.0
    aux_loss_coef: float = 0.01
    balance_scope: Literal["group", "micro_batch", "global"] = "group"
    z_loss_coef: float = 0.0
    vocab: int = 256

    def validate(self) -> None:
        for name in ("d_model", "layers", "heads", "experts", "k", "expert_hidden", "vocab"):
            if getattr(self, name) < 1:
                raise MoeRouteError(f"[model] {name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise MoeRouteError(f"[model] d_model={self.d_model} is not divisible by heads={self.heads}")
        if self.k > self.experts:
            raise MoeRouteError(f"[model] k={self.k} is larger than experts={self.experts}")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise MoeRouteError(f"[model] capacity_factor must be > 0 or 'none', got {self.capacity_factor}")
        for name in ("aux_loss_coef", "z_loss_coef"):
            if not getattr(self, name) >= 0:
                raise MoeRouteError(f"[model] {name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class DataConfig:
    """``text``: a UTF-8/byte file to train on (empty = the CPython documentation bundled as ``pydoc_data``).
    ``val_fraction`` of the corpus, in blocks of ``block_bytes`` spread evenly through it, is held out.
    ``batch_size`` is the global batch (sequences per optimizer step over all data-parallel ranks and
    micro-batches), so a run on N processes sees the same tokens as a run on one."""

    text: str = ""
    seq_len: int = 512
    batch_size: int = 4
    val_fraction: float = 0.1
    block_bytes: int = 4096
    val_sequences: int = 16

    def validate(self) -> None:
        for name in ("seq_len", "batch_size", "block_bytes", "val_sequences"):
            if getattr(self, name) < 1:
                raise MoeRouteError(f"[data] {name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.val_fraction < 1:
            raise MoeRouteError(f"[data] val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimisation and the SoftTopk schedule ``t = max(start - (start - end) * step / anneal_steps, end)``
    (the paper: 4 -> 1 over 30000 steps; ``t = 1`` at evaluation). ``micro_batches``: gradient accumulation, the
    global batch is cut into ``micro_batches`` forward/backward passes per rank before each optimizer step."""

    steps: int = 2000
    micro_batches: int = 1
    lr: float = 3e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    softtopk_start: float = 4.0
    softtopk_end: float = 1.0
    softtopk_anneal_steps: int = 30000
    threads: int = 0
    device: str = "cpu"

    def validate(self) -> None:
        for name in ("steps", "micro_batches"):
            if getattr(self, name) < 1:
                raise MoeRouteError(f"[train] {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise MoeRouteError(f"[train] lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.eval_every < 1 or self.softtopk_anneal_steps < 1:
            raise MoeRouteError("[train] warmup_steps must be >= 0, eval_every and softtopk_anneal_steps >= 1")
        if self.threads < 0:
            raise MoeRouteError(f"[train] threads must be >= 0 (0 = torch's default), got {self.threads}")
        if not (self.device in ("cpu", "auto", "mps") or self.device.split(":")[0] == "cuda"):
            raise MoeRouteError(f"[train] device must be {DEVICE_HELP}; got {self.device!r}")


@dataclass(frozen=True)
class OutputConfig:
    """Where a run writes: ``results`` (per-step CSV logs and the summary), ``reports`` (figures), ``report``
    (the Markdown summary), ``checkpoints`` (one ``.pt`` per run, beside a copy of its log); ``note``: a paragraph
    for the report (e.g. what scale this profile is); ``title``: the report's heading (empty: chosen from the
    arms); ``baselines``: the arms every other arm is compared with, paired by seed (empty: the GShard + softmax
    arm, else the first arm); all these comparisons form one family for the multiple-comparison correction."""

    results: str = "results/train"
    reports: str = "reports/train"
    report: str = "reports/TRAINING.md"
    checkpoints: str = "runs/train"
    note: str = ""
    title: str = ""
    baselines: tuple[str, ...] = ()


@dataclass(frozen=True)
class CaptureConfig:
    """After training, record the gate logits ``[N, E]`` of every MoE layer of run (``arm``, ``seed``) on
    ``sequences`` validation sequences into ``path`` (safetensors, keys ``layer0``, ``layer1``, ...)."""

    arm: str = ""
    seed: int = 0
    sequences: int = 16
    path: str = ""


@dataclass(frozen=True)
class Arm:
    """One arm of the ablation: a router spec (any registered router) and a combine-weight operator; optionally
    its own router losses (``aux_loss_coef``, ``balance_scope``, ``z_loss_coef``; unset = the ``[model]`` value),
    e.g. an auxiliary-loss-free arm without the balance loss."""

    name: str = ""
    router: str = "gshard"
    weights: str = "softmax"
    aux_loss_coef: Optional[float] = None
    balance_scope: Optional[Literal["group", "micro_batch", "global"]] = None
    z_loss_coef: Optional[float] = None

    def model_config(self, model: ModelConfig) -> ModelConfig:
        """``model`` with this arm's own router losses, if it sets any."""
        own = {k: getattr(self, k) for k in ("aux_loss_coef", "balance_scope", "z_loss_coef")
               if getattr(self, k) is not None}
        if not own:
            return model
        changed = replace(model, **own)
        changed.validate()
        return changed

    @property
    def own_losses(self) -> str:
        """The losses this arm sets for itself, as ``key=value`` text (empty: the config's)."""
        return ", ".join(f"{k}={getattr(self, k)}" for k in ("aux_loss_coef", "balance_scope", "z_loss_coef")
                         if getattr(self, k) is not None)

    @property
    def spec(self) -> str:
        return self.router

    @property
    def uses_softtopk(self) -> bool:
        return self.weights == "softtopk"


@dataclass(frozen=True)
class AblationConfig:
    model: ModelConfig
    data: DataConfig
    train: OptimConfig
    output: OutputConfig
    capture: CaptureConfig
    arms: tuple[Arm, ...]
    seeds: tuple[int, ...]
    source: str = ""
    profile: str = ""

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise MoeRouteError(f"no arm named {name!r} in {self.source or 'the config'} (arms: {', '.join(a.name for a in self.arms)})")


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs: the shared tables, one arm and one seed (saved in its checkpoint)."""

    model: ModelConfig
    data: DataConfig
    train: OptimConfig
    arm: Arm
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arm.name}_seed{self.seed}"


def training_refusal(arm: Arm) -> Optional[str]:
    """Why ``arm``'s router cannot train as configured (``None``: it can; a bad spec raises its own one line).

    A stateful router with a ``step_update`` (aux_free, qb, ...) must leave its state alone inside a call
    (``update_every=0``): the trainer then updates it once per optimizer step from statistics reduced over the
    data-parallel ranks, as Megatron-Core does. An update inside the call would move the state group by group
    through each rank's own share of the batch (so results would depend on the number of processes), and on top
    of that the step update would apply a second time."""
    from moeroute.routers import bind_router

    bound = bind_router(arm.router, weights=arm.weights)
    every = getattr(bound.options, "update_every", 0)
    if bound.entry.step_update is not None and every:
        name = bound.entry.name
        return (f"router {name!r} updates its state every {every} group(s) inside a call; in training the state is "
                f"updated once per optimizer step over all ranks: add update_every=0 to its spec")
    return None


_TABLES = {"model": ModelConfig, "data": DataConfig, "train": OptimConfig, "output": OutputConfig, "capture": CaptureConfig}
_TOP_KEYS = set(_TABLES) | {"arm", "seeds", "profile"}


def _table(raw: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise MoeRouteError(f"{where}: [{name}] must be a table")
    return value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_config(raw: dict[str, Any], source: str = "config", profile: Optional[str] = None) -> AblationConfig:
    """Build an :class:`AblationConfig` from a parsed TOML dict, applying ``[profile.<profile>]`` on top."""
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise MoeRouteError(f"{source}: unknown table or key {unknown[0]!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    profiles = _table(raw, "profile", source)
    if profile:
        if profile not in profiles:
            raise MoeRouteError(f"{source}: no profile {profile!r} (profiles: {', '.join(sorted(profiles)) or 'none'})")
        raw = _merge({k: v for k, v in raw.items() if k != "profile"}, profiles[profile])
        unknown = sorted(set(raw) - _TOP_KEYS)
        if unknown:
            raise MoeRouteError(f"{source}: [profile.{profile}] sets unknown table or key {unknown[0]!r}")
    parts = {
        name: build_options(cls, _table(raw, name, source), f"[{name}] in {source}") for name, cls in _TABLES.items()
    }
    arms_raw = raw.get("arm", [])
    if not isinstance(arms_raw, list) or not arms_raw:
        raise MoeRouteError(f"{source}: needs at least one [[arm]] table (name, router, weights)")
    arms = []
    for i, item in enumerate(arms_raw):
        if not isinstance(item, dict):
            raise MoeRouteError(f"{source}: [[arm]] number {i + 1} must be a table")
        arm = build_options(Arm, item, f"[[arm]] number {i + 1} in {source}")
        try:
            arm.model_config(parts["model"])  # an arm's own loss settings are checked now
        except MoeRouteError as exc:
            raise MoeRouteError(f"[[arm]] number {i + 1} in {source}: {exc}") from None
        reason = training_refusal(arm)
        if reason:
            raise MoeRouteError(f"[[arm]] {arm.name or i + 1} in {source}: {reason}")
        if not arm.name or not arm.name.replace("-", "").replace("_", "").isalnum():
            raise MoeRouteError(f"{source}: [[arm]] number {i + 1} needs a name of letters, digits, '-' or '_'")
        arms.append(arm)
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise MoeRouteError(f"{source}: arm names must be distinct, got {', '.join(names)}")
    unknown_base = [b for b in parts["output"].baselines if b not in names]
    if unknown_base:
        raise MoeRouteError(f"{source}: [output] baselines names no arm {unknown_base[0]!r} (arms: {', '.join(names)})")
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise MoeRouteError(f"{source}: seeds must be a non-empty list of integers, got {seeds!r}")
    return AblationConfig(arms=tuple(arms), seeds=tuple(seeds), source=source, profile=profile or "", **parts)


def load_config(path: str, profile: Optional[str] = None) -> AblationConfig:
    """Read and validate an ablation config (TOML or YAML); every problem is a one-line :class:`MoeRouteError`."""
    return parse_config(read_config_file(path), str(path), profile)


def run_configs(cfg: AblationConfig, arms: Optional[list[str]] = None, seeds: Optional[list[int]] = None) -> list[RunConfig]:
    """One :class:`RunConfig` per (arm, seed), arms in config order (optionally a subset)."""
    chosen = [cfg.arm(a) for a in arms] if arms else list(cfg.arms)
    return [RunConfig(arm.model_config(cfg.model), cfg.data, cfg.train, arm, seed)
            for arm in chosen for seed in (seeds or cfg.seeds)]


def with_overrides(cfg: AblationConfig, **tables: dict[str, Any]) -> AblationConfig:
    """``cfg`` with some fields of its tables replaced (CLI flags such as ``--steps``, ``--text``)."""
    changes = {}
    for name, values in tables.items():
        if values:
            current = getattr(cfg, name)
            known = {f.name for f in fields(current)}
            bad = sorted(set(values) - known)
            if bad:
                raise MoeRouteError(f"[{name}] has no field {bad[0]!r}")
            new = replace(current, **values)
            check = getattr(new, "validate", None)
            if callable(check):
                check()
            changes[name] = new
    return replace(cfg, **changes)


def run_config_from_dict(d: dict[str, Any]) -> RunConfig:
    """Rebuild a :class:`RunConfig` from the dict a checkpoint stores."""
    return RunConfig(
        model=ModelConfig(**d["model"]), data=DataConfig(**d["data"]), train=OptimConfig(**d["train"]),
        arm=Arm(**d["arm"]), seed=int(d["seed"]),
    )


__all__ = [
    "AblationConfig", "Arm", "CaptureConfig", "DataConfig", "ModelConfig", "OptimConfig", "OutputConfig",
    "RunConfig", "load_config", "parse_config", "run_config_from_dict", "run_configs", "training_refusal",
    "with_overrides",
]
