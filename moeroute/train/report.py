"""Summary of a training ablation from its per-step logs: a per-run and a per-arm table (CSV), figures (loss,
drop/load and affinity curves), and a Markdown report that states whether the paper's ordering holds."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import pandas as pd

from moeroute.core.atomic import atomic_open, atomic_write_text
from moeroute.core.options import parse_spec
from moeroute.core.presentation import LINESTYLES, SeriesStyle, markdown_table, pyplot, save_figure
from moeroute.train.config import AblationConfig, Arm
from moeroute.train.paired import Comparison, paired_family

# The MaxScore paper's ablation (Table: average accuracy; higher is better), best first.
PAPER_ORDER = (("maxscore", "softtopk"), ("gshard", "softtopk"), ("maxscore", "softmax"), ("gshard", "softmax"))
PAPER_ACCURACY = {("gshard", "softmax"): 42.11, ("gshard", "softtopk"): 42.55,
                  ("maxscore", "softmax"): 42.16, ("maxscore", "softtopk"): 43.44}
PAPER_LABEL = {("gshard", "softmax"): "GShard (baseline)", ("gshard", "softtopk"): "SoftTopk only",
               ("maxscore", "softmax"): "flow only", ("maxscore", "softtopk"): "flow + SoftTopk"}


def _role(arm: Arm) -> tuple[str, str]:
    return parse_spec(arm.router)[0], arm.weights


ROUTING_SUMMARY = ("slot_drop_rate", "second_choice_drop_rate", "mean_load_ratio", "max_load_ratio",
                   "balance_violation", "rank1_affinity_with_drops", "rank2_affinity_with_drops")
"""Routing columns of a log that the summary averages over the last 10% of training (older logs lack the last
three: they show as n/a)."""


def read_log(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def plural(n: int, word: str) -> str:
    """``1 layer``, ``2 layers``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def run_summary(log: pd.DataFrame, tail: float = 0.1) -> dict[str, float]:
    """Final validation loss, and the routing numbers averaged over the last ``tail`` of training."""
    val = log.dropna(subset=["val_loss"])
    last = log.iloc[int(len(log) * (1 - tail)):]
    out = {
        "steps": int(log["step"].iloc[-1]),
        "tokens": int(log["tokens"].iloc[-1]),
        "final_val_loss": float(val["val_loss"].iloc[-1]) if len(val) else math.nan,
        "final_train_loss": float(last["train_loss"].mean()),
        "seconds": float(log["step_time_s"].sum()),
        "step_time_s": float(log["step_time_s"].median()),
    }
    for key in ROUTING_SUMMARY:
        out[key] = float(last[key].mean()) if key in last and last[key].notna().any() else math.nan
    return out


@dataclass
class AblationSummary:
    runs: pd.DataFrame   # one row per (arm, seed)
    arms: pd.DataFrame   # one row per arm: means and spreads over seeds
    logs: dict[tuple[str, int], pd.DataFrame]


def summarise(cfg: AblationConfig, results_dir: Path) -> AblationSummary:
    """Read ``results_dir/<arm>_seed<s>.csv`` for every arm and seed of ``cfg`` that has a log."""
    rows, logs = [], {}
    for arm in cfg.arms:
        for seed in cfg.seeds:
            path = results_dir / f"{arm.name}_seed{seed}.csv"
            if not path.is_file():
                continue
            log = read_log(path)
            if log.empty:
                continue
            logs[(arm.name, seed)] = log
            rows.append({"arm": arm.name, "router": arm.router, "weights": arm.weights, "seed": seed, **run_summary(log)})
    runs = pd.DataFrame(rows)
    if runs.empty:
        return AblationSummary(runs, pd.DataFrame(), logs)
    agg = runs.groupby("arm", sort=False).agg(
        router=("router", "first"), weights=("weights", "first"), seeds=("seed", "count"), steps=("steps", "max"),
        val_loss_mean=("final_val_loss", "mean"), val_loss_std=("final_val_loss", "std"),
        val_loss_min=("final_val_loss", "min"), val_loss_max=("final_val_loss", "max"),
        train_loss_mean=("final_train_loss", "mean"),
        slot_drop_rate=("slot_drop_rate", "mean"), second_choice_drop_rate=("second_choice_drop_rate", "mean"),
        mean_load_ratio=("mean_load_ratio", "mean"), max_load_ratio=("max_load_ratio", "mean"),
        balance_violation=("balance_violation", "mean"),
        rank1_affinity_with_drops=("rank1_affinity_with_drops", "mean"),
        rank2_affinity_with_drops=("rank2_affinity_with_drops", "mean"),
        seconds_per_run=("seconds", "mean"), step_time_s=("step_time_s", "mean"),
    ).reset_index()
    return AblationSummary(runs, agg, logs)


def _smooth(series: pd.Series, span: int) -> pd.Series:
    return series.ewm(span=span, adjust=False).mean()


def _baseline_arm(cfg: AblationConfig) -> str:
    """The arm the paired differences are taken against: GShard with softmax weights, else the first arm."""
    for arm in cfg.arms:
        if _role(arm) == ("gshard", "softmax"):
            return arm.name
    return cfg.arms[0].name


def _has_pairs(summary: AblationSummary, base: str) -> bool:
    """Whether some arm other than ``base`` has a seed that ``base`` also has (a paired difference exists)."""
    return any(arm != base and (base, seed) in summary.logs for arm, seed in summary.logs)


def figure_panels(summary: AblationSummary, base: str) -> dict[str, list[tuple[str, str, str]]]:
    """``{filename: [(column, title, mode), ...]}`` of the figures; ``mode`` is ``raw``, ``ema`` or ``diff``.
    The paired-difference panel appears only when an arm other than the baseline ran, and a column no log has
    (older logs) is left out rather than drawn as an empty panel."""
    present = set().union(*(log.columns for log in summary.logs.values()))
    loss = [("val_loss", "validation loss (nats/byte, t = 1)", "raw"),
            ("train_loss", "training loss (nats/byte, EMA)", "ema")]
    if _has_pairs(summary, base):
        loss.append(("train_loss", f"training loss − {base}, same seed and batches (EMA)", "diff"))
    panels = {
        "loss_curves.png": loss,
        "drop_load.png": [("second_choice_drop_rate", "second-choice drop rate (EMA)", "ema"),
                          ("mean_load_ratio", "mean load ratio sum(load)/(E*C) (EMA)", "ema"),
                          ("balance_violation", "balance violation max(load)/mean(load) − 1, global batch (EMA)",
                           "ema")],
        "affinity.png": [("rank1_affinity_with_drops", "mean rank-1 score over all tokens, dropped slot = 0 (EMA)",
                          "ema"),
                         ("rank2_affinity_with_drops", "mean rank-2 score over all tokens, dropped slot = 0 (EMA)",
                          "ema")],
    }
    return {name: [p for p in specs if p[0] in present] for name, specs in panels.items()}


def _curves(summary: AblationSummary, name: str, key: str, mode: str, base: str, span: int) -> list[pd.Series]:
    """One series per seed of arm ``name`` for one panel (EMA-smoothed unless ``raw``; minus the baseline arm's
    same-seed curve for ``diff``)."""
    curves = []
    for (arm, seed), log in summary.logs.items():
        if arm != name or key not in log:
            continue
        s = log.set_index("step")[key].dropna()
        if mode == "diff":
            ref = summary.logs.get((base, seed))
            if ref is None or name == base:
                continue
            s = s - ref.set_index("step")[key]
        if len(s.dropna()):
            curves.append(s if mode == "raw" else _smooth(s.dropna(), span))
    return curves


def _draw_panel(ax, summary: AblationSummary, names: list[str], spec: tuple[str, str, str], base: str,
                steps: int, style: dict, legend: bool) -> None:
    key, title, mode = spec
    span = max(5, steps // 15)
    plotted, constant = [], []
    for name in names:
        curves = _curves(summary, name, key, mode, base, span)
        if not curves:
            continue
        frame = pd.concat(curves, axis=1)
        mean = frame.mean(axis=1)
        plotted.append(mean)
        if mode != "diff" and len(mean) > 1 and float(mean.max() - mean.min()) < 1e-9:
            constant.append((f"{float(mean.iloc[0]):g}", name))
        color, ls = style[name]
        ax.plot(mean.index, mean.values, color=color, ls=ls, lw=1.5, label=f"{name} (n={frame.shape[1]})")
        if frame.shape[1] > 1:
            ax.fill_between(mean.index, frame.min(axis=1), frame.max(axis=1), color=color, alpha=0.12)
    # Arms pinned at one value (no drops, full load) draw on top of each other: say so in the title.
    note = "; ".join(f"at {v}: " + ", ".join(n for w, n in constant if w == v)
                     for v in dict.fromkeys(w for w, _ in constant))
    wrapped = textwrap.wrap(f"overlapping, {note}", 70, break_on_hyphens=False) if note else []
    ax.set_title("\n".join(textwrap.wrap(title, 70) + wrapped), fontsize=9)
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    if mode == "diff":
        ax.axhline(0.0, color="black", lw=0.8)
    if key.endswith("loss") and mode != "diff" and plotted:
        # Zoom past the first 10% of training, where every curve falls from ln(256) and hides the gaps.
        later = pd.concat([m[m.index >= 0.1 * steps] for m in plotted])
        if len(later) and later.max() > later.min():
            lo, hi = later.min(), later.max()
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    if plotted and (legend or mode == "diff"):
        ax.legend(fontsize=7)


def write_figures(summary: AblationSummary, cfg: AblationConfig, out_dir: Path) -> list[Path]:
    """Three PNGs: loss curves (with the paired training-loss difference to the baseline arm when another arm
    ran: same seed, same batches, so most batch noise cancels), drop, load ratio and balance violation over
    training, and rank-1/rank-2 affinities with drops counted as 0. Each curve is the mean over seeds; the band
    spans min..max over seeds. A fourth, ``paired.png``, shows the paired final-loss differences to each
    baseline when another arm ran."""
    plt = pyplot()  # the project's one figure style (moeroute.core.presentation), headless
    names = [a.name for a in cfg.arms if any(k[0] == a.name for k in summary.logs)]
    series = SeriesStyle(names)
    # Distinct colours and dash patterns: arms pinned at the same value stay visible on top of each other.
    style = {n: (series(n)["color"], LINESTYLES[i % len(LINESTYLES)]) for i, n in enumerate(names)}
    steps = max(int(log["step"].iloc[-1]) for log in summary.logs.values())
    base = baselines(cfg)[0]
    written = []
    for filename, specs in figure_panels(summary, base).items():
        if not specs:
            continue
        fig, axes = plt.subplots(1, len(specs), figsize=(5.5 * len(specs), 4.2), squeeze=False)
        for i, (ax, spec) in enumerate(zip(axes[0], specs)):
            _draw_panel(ax, summary, names, spec, base, steps, style, legend=i == 0)
        fig.suptitle(f"{cfg.source}" + (f" --profile {cfg.profile}" if cfg.profile else "")
                     + ": mean over seeds, band = min..max over seeds", fontsize=10)
        fig.tight_layout()
        path = out_dir / filename
        save_figure(fig, path)
        written.append(path)
    family = [c for c in comparisons(summary, cfg) if c.n]
    if family:
        written.append(_paired_figure(plt, family, names, style, out_dir / "paired.png", cfg))
    return written


def _against(family: list[Comparison], base: str) -> list[Comparison]:
    """Every comparison of the family that involves ``base``, written as ``arm - base`` (a comparison made the other
    way round is mirrored: the same test, the differences negated)."""
    out = []
    for c in family:
        if c.baseline == base:
            out.append(c)
        elif c.arm == base:
            out.append(replace(c, arm=c.baseline, baseline=base, diffs=tuple(-d for d in c.diffs), mean=-c.mean,
                               t=-c.t))
    return out


def _paired_figure(plt, family: list[Comparison], order: list[str], style: dict, path: Path,
                   cfg: AblationConfig) -> Path:
    """One panel per baseline: each other arm's final-validation-loss difference to it on every seed (dots), their
    mean (diamond) and 95% confidence interval (bar); a filled diamond marks a difference significant after Holm's
    correction. Arms keep one row order (the config's) in every panel."""
    bases = list(dict.fromkeys(c.baseline for c in family))
    panels = {b: {c.arm: c for c in _against(family, b)} for b in bases}
    rows = max(len(p) for p in panels.values())
    # one x scale for every panel: a difference reads the same against either baseline
    fig, axes = plt.subplots(1, len(bases), figsize=(max(7.5, 6.5 * len(bases)), 1.5 + 0.55 * rows), squeeze=False,
                             sharex=True)
    for ax, base in zip(axes[0], bases):
        arms = [a for a in order if a in panels[base]][::-1]  # the first arm on top
        for y, arm in enumerate(arms):
            c = panels[base][arm]
            color = style.get(c.arm, ("black", "-"))[0]
            ax.scatter(c.diffs, [y] * c.n, color=color, s=16, alpha=0.7, zorder=3)
            lo, hi = c.ci95()
            if not math.isnan(lo):
                ax.plot([lo, hi], [y, y], color=color, lw=2, alpha=0.6, zorder=2)
            significant = not math.isnan(c.p_holm) and c.p_holm < 0.05
            ax.scatter([c.mean], [y], marker="D", s=46, zorder=4, edgecolor=color,
                       facecolor=color if significant else "white")
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_yticks(range(len(arms)))
        ax.set_yticklabels(arms, fontsize=8)
        ax.set_ylim(-0.6, len(arms) - 0.4)
        ax.set_xlabel(f"final val loss − {base} (nats/byte); < 0: better than {base}")
        ax.set_title(f"vs {base}: seeds (dots), mean (◆, filled = Holm p < 0.05), 95% CI", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"{cfg.source}" + (f" --profile {cfg.profile}" if cfg.profile else "")
                 + ": final validation loss, paired by seed", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f}"


def _has_whole_2x2(cfg: AblationConfig) -> bool:
    roles = {_role(a) for a in cfg.arms}
    return all(r in roles for r in PAPER_ORDER)


def ordering_statement(summary: AblationSummary, cfg: AblationConfig) -> list[str]:
    """Plain sentences: does the 2×2 reproduce the paper's ordering (flow + SoftTopk best, then SoftTopk only,
    flow only, GShard)? Nothing for a config that does not hold the paper's four arms (e.g. the production arms);
    whether the differences exceed seed noise is :func:`paired_section`'s."""
    if not _has_whole_2x2(cfg):
        return []
    by_role = {}
    for arm in cfg.arms:
        row = summary.arms[summary.arms["arm"] == arm.name]
        if len(row):
            by_role[_role(arm)] = (arm.name, row.iloc[0])
    missing = [PAPER_LABEL[r] for r in PAPER_ORDER if r not in by_role]
    if missing:
        return [f"The paper's 2×2 cannot be checked yet: no results for {', '.join(missing)}."]
    ours = sorted(PAPER_ORDER, key=lambda r: by_role[r][1]["val_loss_mean"])
    lines = [
        "Paper (average accuracy, higher is better): " + " > ".join(
            f"{PAPER_LABEL[r]} {PAPER_ACCURACY[r]:.2f}" for r in PAPER_ORDER) + ".",
        "Here (final validation loss, lower is better): " + " < ".join(
            f"{PAPER_LABEL[r]} {by_role[r][1]['val_loss_mean']:.4f}" for r in ours) + ".",
    ]
    full = tuple(ours) == PAPER_ORDER
    best = ours[0] == ("maxscore", "softtopk")
    base_worst = ours[-1] == ("gshard", "softmax")
    if full:
        lines.append("**The paper's full ordering holds at this scale** (by the means).")
    else:
        lines.append(
            f"**The paper's full ordering does not hold at this scale.** Flow + SoftTopk is "
            f"{'the best' if best else 'not the best'} of the 2×2; GShard is {'the worst' if base_worst else 'not the worst'}."
        )
    return lines


def winner_lines(summary: AblationSummary) -> list[str]:
    """Which arm has the lowest mean final validation loss (any set of arms)."""
    a = summary.arms.dropna(subset=["val_loss_mean"])
    if len(a) < 2:
        return []
    best = a.sort_values("val_loss_mean").iloc[0]
    return [f"Lowest mean final validation loss: `{best['arm']}`, {_pm(best['val_loss_mean'], best['val_loss_std'])} "
            f"over {plural(int(best['seeds']), 'seed')}; whether that is more than seed noise is in the paired "
            "differences below."]


def baselines(cfg: AblationConfig) -> list[str]:
    """The arms paired differences are taken against: ``[output] baselines``, else GShard + softmax (or the first
    arm)."""
    return list(cfg.output.baselines) or [_baseline_arm(cfg)]


def comparisons(summary: AblationSummary, cfg: AblationConfig) -> list[Comparison]:
    """Every arm against every baseline, paired by seed, Holm-adjusted over the family (:mod:`paired`)."""
    if summary.runs.empty:
        return []
    return paired_family(summary.runs, [a.name for a in cfg.arms], baselines(cfg))


def _verdict(c: Comparison) -> str:
    if math.isnan(c.p):
        return "one paired seed: no test"
    if c.p_holm < 0.05:
        return "**significant** (Holm p < 0.05)"
    if c.p < 0.05:
        return "p < 0.05 before the correction only"
    return "not significant"


def _pvalue(p: float) -> str:
    return "n/a" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _comparison_table(family: list[Comparison]) -> list[str]:
    header = ["arm − baseline", "seeds", "mean ± std (nats/byte)", "95% CI", "lower on", "t", "p", "p (Holm)",
              "verdict"]
    rows = []
    for c in family:
        lo, hi = c.ci95()
        rows.append([f"`{c.arm}` − `{c.baseline}`", c.n, f"{c.mean:+.4f}" + ("" if math.isnan(c.std) else f" ± {c.std:.4f}"),
                     "n/a" if math.isnan(lo) else f"[{lo:+.4f}, {hi:+.4f}]", f"{c.lower} of {c.n}",
                     _num(c.t, "+.2f"), _pvalue(c.p), _pvalue(c.p_holm), _verdict(c)])
    return markdown_table(header, rows, align="l" + "r" * 7 + "l").splitlines()


def _holm_note(c: Comparison) -> str:
    return "" if math.isnan(c.p_holm) else f", Holm p {_pvalue(c.p_holm)}"


def _per_baseline_lines(family: list[Comparison]) -> list[str]:
    """One sentence per baseline: which arms ended below it and which above, on average, with the seed count and
    the corrected p of each."""
    lines = []
    for base in dict.fromkeys(c.baseline for c in family):
        mine = sorted(_against(family, base), key=lambda c: c.mean)
        parts = []
        for word, side in (("below", [c for c in mine if c.mean < 0]), ("above", [c for c in mine if c.mean >= 0])):
            if side:
                parts.append(f"{word} it on average: " + ", ".join(
                    f"`{c.arm}` ({c.mean:+.4f}, lower on {c.lower} of {c.n} seeds{_holm_note(c)})" for c in side))
        lines += ["", f"Against `{base}`: " + "; ".join(parts) + "."]
    return lines


def _best_arm_lines(summary: AblationSummary, family: list[Comparison]) -> list[str]:
    """Whether the arm with the lowest mean loss is significantly below the arms it was compared with."""
    a = summary.arms.dropna(subset=["val_loss_mean"])
    if len(a) < 2:
        return []
    best = str(a.sort_values("val_loss_mean").iloc[0]["arm"])
    tested = [c for c in _against(family, best) if not math.isnan(c.p_holm)]  # each as other - best
    if not tested:
        return []
    beaten = [c.arm for c in tested if c.p_holm < 0.05 and c.mean > 0]
    if beaten:
        return ["", f"The lowest mean, `{best}`, is significantly below {', '.join(f'`{b}`' for b in beaten)} after "
                "the correction."]
    closest = min(tested, key=lambda c: c.p_holm)
    return ["", f"The lowest mean, `{best}`, is not significantly below any of the arms it was compared with "
            f"({', '.join(f'`{c.arm}`' for c in tested)}) after the correction; its smallest corrected p is "
            f"{_pvalue(closest.p_holm)}, against `{closest.arm}`."]


def _correction(m: int) -> str:
    if m <= 1:
        return "no multiple-comparison correction (one test)"
    return f"Holm's step-down correction over all {m} comparisons together (family-wise error 0.05)"


def paired_section(summary: AblationSummary, cfg: AblationConfig) -> list[str]:
    """The paired differences in final validation loss of every arm to each baseline, with a paired t-test over
    seeds and Holm's correction over all of them; one sentence when no other arm ran (no dangling header)."""
    family = [c for c in comparisons(summary, cfg) if c.n]
    if not family:
        present = [b for b in baselines(cfg) if b in set(summary.runs["arm"])] if len(summary.runs) else []
        only = f"`{present[0]}`" if present else "one arm"
        return ["", f"Only {only} has results: nothing to compare it with yet."]
    tested = [c for c in family if not math.isnan(c.p)]
    names = " and to ".join(f"`{b}`" for b in dict.fromkeys(c.baseline for c in family))
    counts = "/".join(map(str, sorted({c.n for c in family})))
    test = (f"a two-sided paired t-test over seeds and {_correction(len(tested))}" if tested
            else "no test (a paired t-test needs two or more seeds)")
    lines = ["", f"Differences in final validation loss to {names}, paired by seed (same initial weights, same "
             f"batches; {counts} {'seed' if counts == '1' else 'seeds'} per comparison), with {test}. Negative: the "
             "arm ended lower (better) than the baseline.", ""]
    lines += _comparison_table(family)
    lines += _per_baseline_lines(family) + _best_arm_lines(summary, family)
    significant = [c for c in tested if c.p_holm < 0.05]
    if significant:
        lines += ["", "Significant after the correction: " + "; ".join(
            f"`{c.arm}` {'below' if c.mean < 0 else 'above'} `{c.baseline}` by {abs(c.mean):.4f}"
            for c in significant) + ". Every other difference is within seed noise at this number of seeds."]
    elif tested:
        lines += ["", "No difference is significant after the correction: at this number of seeds every arm is "
                  "within seed noise of the baselines."]
    return lines


def default_title(cfg: AblationConfig) -> str:
    """The 2×2 ablation's title when the config holds the paper's four arms, else one naming the routers."""
    if cfg.output.title:
        return cfg.output.title
    if _has_whole_2x2(cfg):
        return "Training ablation: GShard vs MaxScore routing × softmax vs SoftTopk weights"
    return "Training ablation: " + ", ".join(dict.fromkeys(parse_spec(a.router)[0] for a in cfg.arms))


def _verdict_heading(cfg: AblationConfig) -> str:
    return "Does the paper's ordering hold?" if _has_whole_2x2(cfg) else "Which arm has the lowest loss?"


def _num(value: float, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _losses_sentence(cfg: AblationConfig) -> str:
    m = cfg.model
    scope = {"group": "per routing group", "micro_batch": "per micro-batch of each rank",
             "global": "with cₑ over the global batch (all ranks and micro-batches; Qwen's global-batch loss)"}
    text = (f"balance loss {m.aux_loss_coef}·E·Σ mₑcₑ {scope[m.balance_scope]}" if m.aux_loss_coef
            else "no balance loss")
    if m.z_loss_coef:
        text += f", router z-loss {m.z_loss_coef}·mean(logsumexp(logits)²)"
    return text


def _intro(summary: AblationSummary, cfg: AblationConfig) -> str:
    m, d, t = cfg.model, cfg.data, cfg.train
    seeds = ", ".join(map(str, sorted(summary.runs["seed"].unique())))
    micro = f" in {plural(t.micro_batches, 'micro-batch')}" if t.micro_batches > 1 else ""
    return (
        f"Config `{cfg.source}`" + (f", profile `{cfg.profile}`" if cfg.profile else "") + ". "
        f"Byte-level decoder-only MoE LM: {plural(m.layers, 'layer')}, d_model {m.d_model}, {plural(m.heads, 'head')}, "
        f"every block's FFN an MoE of {m.experts} experts (hidden {m.expert_hidden}), top-{m.k}, capacity factor "
        f"{m.capacity_factor} per {d.seq_len}-token sequence (each sequence is one routing group), "
        f"{_losses_sentence(cfg)}. Global batch {d.batch_size} × {d.seq_len} bytes{micro}, "
        f"{plural(t.steps, 'step')} ({t.steps * d.batch_size * d.seq_len / 1e6:.2f} M tokens), AdamW lr {t.lr} "
        f"(warm-up {t.warmup_steps}, cosine), seeds {seeds}. SoftTopk t = max({t.softtopk_start} − "
        f"{t.softtopk_start - t.softtopk_end}·step/{t.softtopk_anneal_steps}, {t.softtopk_end}), t = 1 at "
        "evaluation. Every arm sees the same batches and starts from the same weights for a seed; capacity arms "
        "have the same expert FLOPs (E·C slots per group). Results do not depend on the number of data-parallel "
        "processes (docs/training.md)."
    )


def _arm_table(a: pd.DataFrame) -> list[str]:
    header = ["arm", "router", "weights", "seeds", "steps", "final val loss (mean ± std)", "min..max", "2nd-choice drop",
              "slot drop", "mean load ratio", "max load ratio", "balance violation", "rank-1 affinity, drops = 0",
              "rank-2 affinity, drops = 0", "s/run", "s/step"]
    rows = [[r["arm"], f"`{r['router']}`", r["weights"], r["seeds"], r["steps"],
             _pm(r["val_loss_mean"], r["val_loss_std"]), f"{r['val_loss_min']:.4f}..{r['val_loss_max']:.4f}",
             f"{_num(100 * r['second_choice_drop_rate'], '.2f')}%", f"{100 * r['slot_drop_rate']:.2f}%",
             f"{r['mean_load_ratio']:.4f}", f"{r['max_load_ratio']:.3f}", _num(r["balance_violation"], ".3f"),
             _num(r["rank1_affinity_with_drops"], ".4f"), _num(r["rank2_affinity_with_drops"], ".4f"),
             f"{r['seconds_per_run']:.0f}", f"{r['step_time_s']:.3f}"] for _, r in a.iterrows()]
    return markdown_table(header, rows, align="lll" + "r" * 13).splitlines()


def write_markdown(summary: AblationSummary, cfg: AblationConfig, path: Path, figures: list[Path],
                   scale_note: str = "", captured: Optional[str] = None) -> Path:
    """The Markdown report (in the style of ``moeroute report``), written atomically."""
    lines = [f"# {default_title(cfg)}", "", _intro(summary, cfg), ""]
    if scale_note:
        lines += [scale_note, ""]
    lines += ["## Final validation loss per arm", ""] + _arm_table(summary.arms)
    own = [f"`{a.name}` ({a.own_losses})" for a in cfg.arms if a.own_losses and a.name in set(summary.arms["arm"])]
    if own:
        lines += ["", "Arms with router losses of their own (the others use the config's): " + ", ".join(own) + "."]
    lines += ["", "Routing columns are averages over the last 10% of training steps and over layers (training "
              "batches). Balance violation is max(load)/mean(load) − 1 of the tokens each expert received over the "
              "step's global batch, after capacity. Affinity is the mean softmax score (the softmax of the gate "
              "logits, for every arm, sigmoid-scored ones included: one yardstick) of each token's rank-r "
              "slot over all tokens, a dropped slot counting 0, so dropping is not rewarded with a higher mean "
              "(n/a: a log written before these columns existed). For `dropless` the load ratio divides by k·T/E "
              "(no capacity) and the max load ratio is its padding factor; it has no capacity, so its expert FLOPs "
              "are not matched to the other arms.", "", f"## {_verdict_heading(cfg)}", ""]
    lines += winner_lines(summary)
    ordering = ordering_statement(summary, cfg)
    lines += ([""] if ordering else []) + ordering
    lines += paired_section(summary, cfg)
    if ordering:
        lines += ["", "The paper's numbers are downstream accuracies of models trained far longer; here it is the "
                  "next-byte validation loss of a small model, so the comparison is of direction, not size. "
                  f"SoftTopk's schedule is compressed to {cfg.train.softtopk_anneal_steps} steps here (the paper: "
                  "30000 steps of a much longer run)."]
    lines += ["", "## Figures", ""]
    for fig in figures:
        rel = Path(_relpath(fig, path.parent))
        lines.append(f"![{fig.stem}]({rel.as_posix()})")
    if captured:
        lines += ["", "## Captured router logits", "", captured]
    lines += ["", "Per-step logs: one CSV per run in `" + cfg.output.results + "` (columns in "
              "`moeroute/train/loop.py: LOG_COLUMNS`); per-run and per-arm tables: `runs.csv`, `summary.csv` there."]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _relpath(target: Path, start: Path) -> str:
    import os

    return os.path.relpath(target.resolve(), start.resolve())


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_open(path, "w") as f:
        frame.to_csv(f, index=False, float_format="%.6g")


def write_report(cfg: AblationConfig, captured: Optional[str] = None) -> Optional[Path]:
    """Summarise the logs under ``cfg.output.results``: tables, figures, Markdown (with ``[output] note`` as its
    scale note). ``None`` if there are no logs. Every file is written atomically."""
    results = Path(cfg.output.results)
    summary = summarise(cfg, results)
    if summary.runs.empty:
        return None
    _write_csv(summary.runs, results / "runs.csv")
    _write_csv(summary.arms, results / "summary.csv")
    family = comparisons(summary, cfg)
    if family:
        _write_csv(pd.DataFrame([{k: v for k, v in c.__dict__.items() if k not in ("seeds", "diffs")}
                                 | {"n": c.n, "lower": c.lower} for c in family]), results / "comparisons.csv")
    figures = write_figures(summary, cfg, Path(cfg.output.reports))
    return write_markdown(summary, cfg, Path(cfg.output.report), figures, cfg.output.note, captured)
