"""Cross-checks against the libraries that implement the same routing rules (Megatron-Core, DeepSpeed, Hugging Face
transformers): each comparison routes the same logits both ways and counts the groups routed identically
(docs/crosscheck.md). The libraries are an optional extra (``pip install -e ".[crosscheck]"``); nothing here is
imported by ``import moeroute``."""

from moeroute.crosscheck.compare import COMPARISONS, Comparison, Outcome, comparison, run_comparison

__all__ = ["COMPARISONS", "Comparison", "Outcome", "comparison", "run_comparison"]
