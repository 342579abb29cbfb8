"""The training ablation: a small byte-level MoE language model whose MoE layers take any registered router and
any combine-weight operator, trained on text that needs no download (``moeroute train CONFIG``), in one process or
data parallel under torchrun (docs/training.md)."""

from moeroute.train.ablation import AblationResult, run_ablation
from moeroute.train.config import AblationConfig, RunConfig, load_config, parse_config, run_configs
from moeroute.train.distributed import DistContext, init_distributed, shutdown
from moeroute.train.loop import LOG_COLUMNS, RunResult, train_run
from moeroute.train.model import MoELM
from moeroute.train.moe import MoELayer, dispatch_experts

__all__ = [
    "AblationConfig", "AblationResult", "DistContext", "LOG_COLUMNS", "MoELM", "MoELayer", "RunConfig", "RunResult",
    "dispatch_experts", "init_distributed", "load_config", "parse_config", "run_ablation", "run_configs", "shutdown",
    "train_run",
]
