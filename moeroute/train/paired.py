"""Paired comparisons of the arms of an ablation: the difference in final validation loss between two arms on
the same seed (same initial weights, same batches), a paired t-test over seeds, and Holm's correction for the
number of comparisons made together (docs/training.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Comparison:
    """``arm - baseline`` in final validation loss over the seeds both have: the per-seed differences, their mean
    and standard deviation, the paired t statistic and its two-sided p-value (NaN with fewer than two seeds), and
    ``p_holm``, the p-value adjusted by Holm's step-down method over the family it was tested in."""

    arm: str
    baseline: str
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mean: float
    std: float
    t: float
    p: float
    p_holm: float = math.nan

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def lower(self) -> int:
        """On how many seeds ``arm`` ended below ``baseline``."""
        return sum(d < 0 for d in self.diffs)

    def ci95(self) -> tuple[float, float]:
        """The 95% confidence interval of the mean difference (Student's t with ``n - 1`` degrees of freedom)."""
        if self.n < 2:
            return (math.nan, math.nan)
        from scipy.stats import t as student

        half = float(student.ppf(0.975, self.n - 1)) * self.std / math.sqrt(self.n)
        return (self.mean - half, self.mean + half)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given: sort ascending, multiply the i-th
    smallest (from 0) by ``m - i``, carry the running maximum, cap at 1. A comparison is significant at family-wise
    level ``alpha`` when its adjusted p is below ``alpha``; uniformly more powerful than Bonferroni's ``m * p``.
    NaN p-values (untestable comparisons) stay NaN and do not count in ``m``."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if not math.isnan(p))
    m = len(finite)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def compare(runs: pd.DataFrame, arm: str, baseline: str) -> Comparison:
    """``arm - baseline`` over their common seeds; ``runs`` has columns ``arm``, ``seed``, ``final_val_loss``."""
    a = runs[runs["arm"] == arm].set_index("seed")["final_val_loss"]
    b = runs[runs["arm"] == baseline].set_index("seed")["final_val_loss"]
    seeds = sorted(set(a.index) & set(b.index))
    diffs = [float(a[s] - b[s]) for s in seeds]
    n = len(diffs)
    mean = sum(diffs) / n if n else math.nan
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n >= 2 else math.nan
    t = p = math.nan
    if n >= 2:
        from scipy.stats import ttest_rel

        result = ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
        t, p = float(result.statistic), float(result.pvalue)
    return Comparison(arm, baseline, tuple(seeds), tuple(diffs), mean, std, t, p)


def paired_family(runs: pd.DataFrame, arms: list[str], baselines: list[str]) -> list[Comparison]:
    """Every arm against every baseline (each unordered pair once, in the order of ``baselines`` then ``arms``),
    with Holm's adjustment over the whole family of tested comparisons."""
    present = set(runs["arm"]) if len(runs) else set()
    done: set[frozenset[str]] = set()
    family = []
    for base in baselines:
        if base not in present:
            continue
        for arm in arms:
            pair = frozenset((arm, base))
            if arm == base or arm not in present or pair in done:
                continue
            done.add(pair)
            family.append(compare(runs, arm, base))
    adjusted = holm([c.p for c in family])
    return [Comparison(**{**c.__dict__, "p_holm": q}) for c, q in zip(family, adjusted)]


__all__ = ["Comparison", "compare", "holm", "paired_family"]
