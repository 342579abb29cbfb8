"""The training ablation: data split, dispatch against a plain loop, gate gradients, a few training steps per
router arm, checkpoint/resume with the SoftTopk step, config errors, the CLI and captured logits."""

from __future__ import annotations

import csv
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from moeroute.core.errors import MoeRouteError
from moeroute.experiments.cli import main
from moeroute.routers import bind_router, router_names
from moeroute.train.ablation import capture_run
from moeroute.train.checkpoint import load_checkpoint
from moeroute.train.config import Arm, load_config, parse_config, run_configs
from moeroute.train.data import Corpus, builtin_corpus, split_blocks, train_batch, val_batches
from moeroute.train.loop import LOG_COLUMNS, train_run
from moeroute.train.moe import MoELayer, dispatch_experts
from moeroute.weights import weight_ops
from moeroute.workloads.files import load_logits

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ablation.toml"
PRODUCTION = CONFIG.parent / "production.toml"


@pytest.fixture(scope="module")
def quick():
    return load_config(str(CONFIG), "quick")


@pytest.fixture(scope="module")
def corpus(quick):
    return Corpus.from_config(quick.data)


def _log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --- data -------------------------------------------------------------------------------------------------------

def test_split_is_fixed_disjoint_and_spread():
    data = bytes(range(251)) * 2000  # 502000 bytes = 122.6 blocks of 4096
    train, val = split_blocks(data, 0.1, 4096)
    assert (train, val) == split_blocks(data, 0.1, 4096)
    assert len(train) + len(val) == len(data)
    # every 10th block (9, 19, ..., 119) is held out
    blocks = [data[i * 4096:(i + 1) * 4096] for i in range(123)]
    assert val == b"".join(blocks[i] for i in range(9, 123, 10))
    assert train == b"".join(b for i, b in enumerate(blocks) if i % 10 != 9)
    # a small corpus is cut finer, so it still has a validation split
    small_train, small_val = split_blocks(data[:5000], 0.1, 4096)
    assert len(small_val) == 500 and len(small_train) == 4500


def test_builtin_corpus_split_and_batches_are_deterministic(quick):
    a, b = Corpus.from_config(quick.data), Corpus.from_config(quick.data)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    total = len(builtin_corpus())
    assert a.train.numel() + a.val.numel() == total
    assert 0.07 < a.val.numel() / total < 0.13
    x1, y1 = train_batch(a, quick.data, seed=3, step=7)
    x2, y2 = train_batch(b, quick.data, seed=3, step=7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the next byte
    assert not torch.equal(x1, train_batch(a, quick.data, seed=3, step=8)[0])
    v1, v2 = val_batches(a, quick.data), val_batches(b, quick.data)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(v1, v2))
    assert sum(x.shape[0] for x, _ in v1) == quick.data.val_sequences


def test_user_text_file(tmp_path, quick):
    f = tmp_path / "corpus.txt"
    f.write_bytes(b"hello moe world. " * 2000)
    c = Corpus.from_config(replace(quick.data, text=str(f)))
    assert c.train.numel() + c.val.numel() == 34000
    with pytest.raises(MoeRouteError, match="not found"):
        Corpus.from_config(replace(quick.data, text=str(tmp_path / "missing.txt")))
    small = tmp_path / "small.txt"
    small.write_bytes(b"x" * 200)
    with pytest.raises(MoeRouteError, match="fewer than seq_len"):
        Corpus.from_config(replace(quick.data, text=str(small)))


# --- the MoE layer ----------------------------------------------------------------------------------------------

def test_dispatch_matches_plain_loop():
    gen = torch.Generator().manual_seed(0)
    n, d, h, e, r = 40, 6, 5, 4, 2
    x = torch.randn(n, d, generator=gen)
    experts = torch.stack([torch.randperm(e, generator=gen)[:r] for _ in range(n)])
    experts[torch.rand(n, r, generator=gen) < 0.3] = -1  # dropped slots
    weights = torch.rand(n, r, generator=gen)
    w1, w2 = torch.randn(e, d, h, generator=gen), torch.randn(e, h, d, generator=gen)
    expected = torch.zeros(n, d)
    for i in range(n):
        for j in range(r):
            ex = int(experts[i, j])
            if ex >= 0:
                expected[i] += weights[i, j] * (torch.nn.functional.gelu(x[i] @ w1[ex]) @ w2[ex])
    assert torch.allclose(dispatch_experts(x, experts, weights, w1, w2), expected, atol=1e-5)
    assert torch.equal(dispatch_experts(x, torch.full_like(experts, -1), weights, w1, w2), torch.zeros_like(x))


@pytest.mark.parametrize("router", ["gshard", "dropless"])
def test_gate_gets_gradient_through_combine_weights(router):
    torch.manual_seed(0)
    layer = MoELayer(d_model=16, hidden=8, experts=4, k=2, capacity_factor=1.0, router=router)
    y, stats = layer(torch.randn(2, 32, 16))
    y.square().sum().backward()
    assert layer.gate.weight.grad is not None and float(layer.gate.weight.grad.abs().sum()) > 0
    stats.routing.check()
    assert stats.routing.experts.shape == (2, 32, 2)
    if router == "gshard":
        assert int(stats.routing.load().max()) <= 16  # C = ceil(1 * 2 * 32 / 4)


def test_unknown_router_or_weights_is_a_clear_error():
    with pytest.raises(MoeRouteError, match="unknown router"):
        MoELayer(16, 8, 4, 2, 1.0, router="nosuch")
    with pytest.raises(MoeRouteError, match="unknown weight operator"):
        MoELayer(16, 8, 4, 2, 1.0, router="gshard", weights="nosuch")


# --- training ---------------------------------------------------------------------------------------------------

def _arms(quick) -> list:
    out = []
    for arm in quick.arms:
        ok = arm.router.split(":")[0] in router_names() and arm.weights in weight_ops()
        out.append(pytest.param(arm.name, marks=() if ok else pytest.mark.skip(reason=f"{arm.router}/{arm.weights} not registered yet")))
    return out


@pytest.mark.parametrize("arm", _arms(load_config(str(CONFIG), "quick")))
def test_few_steps_per_arm_loss_falls(arm, quick, corpus, tmp_path):
    cfg = replace(quick, train=replace(quick.train, steps=10, eval_every=5))
    run = run_configs(cfg, [arm], [0])[0]
    result = train_run(run, tmp_path / run.name, corpus)
    rows = _log(result.log)
    assert [int(r["step"]) for r in rows] == list(range(1, 11))
    assert list(rows[0]) == list(LOG_COLUMNS)
    losses = [float(r["train_loss"]) for r in rows]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2
    vals = [float(r["val_loss"]) for r in rows if r["val_loss"]]
    assert len(vals) == 2 and vals[1] < vals[0] and math.isfinite(result.final_val_loss)
    for r in rows:
        assert 0.0 <= float(r["slot_drop_rate"]) <= 1.0
        assert 0.0 < float(r["rank1_affinity_with_drops"]) <= 1.0
        assert float(r["balance_violation"]) >= 0.0
        assert bool(r["temperature"]) == (run.arm.weights == "softtopk")
    if run.arm.router == "dropless":
        assert all(float(r["slot_drop_rate"]) == 0.0 for r in rows)


def test_checkpoint_resume_keeps_softtopk_step_and_matches_uninterrupted_run(quick, corpus, tmp_path):
    run = run_configs(quick, ["gshard-softmax"], [0])[0]
    weights = "softtopk" if "softtopk" in weight_ops() else "softmax"
    run = replace(run, arm=Arm("st", "gshard", weights), train=replace(run.train, steps=6, eval_every=3))
    straight = train_run(run, tmp_path / "straight", corpus)
    first = train_run(replace(run, train=replace(run.train, steps=3)), tmp_path / "resumed", corpus)
    state = load_checkpoint(first.checkpoint)
    assert state["step"] == 3 and state["softtopk"]["step"] == 3
    steps = [int(v) for k, v in state["model"].items() if k.endswith("schedule_step")]
    assert steps == [3] * run.model.layers  # the step a resume restores, in every layer's router
    assert state["config"].arm.name == "st"
    resumed = train_run(run, tmp_path / "resumed", corpus, resume=True)
    assert load_checkpoint(resumed.checkpoint)["softtopk"]["step"] == 6
    a, b = _log(straight.log), _log(resumed.log)
    assert [r["step"] for r in b] == [str(i) for i in range(1, 7)]
    for x, y in zip(a, b):
        assert float(x["train_loss"]) == pytest.approx(float(y["train_loss"]), rel=1e-5)
        assert x["temperature"] == y["temperature"]  # the resumed run continues SoftTopk's schedule
    assert resumed.final_val_loss == pytest.approx(straight.final_val_loss, rel=1e-5)


def test_softtopk_temperature_schedule_in_log(quick, corpus, tmp_path):
    if "softtopk" not in weight_ops():
        pytest.skip("softtopk weight operator not registered yet")
    run = run_configs(quick, ["gshard-softtopk"], [0])[0]
    rows = _log(train_run(run, tmp_path / "st", corpus).log)
    t = [float(r["temperature"]) for r in rows]
    # t = max(4 - 3 * step / 4, 1) at steps 0..5, read before each optimizer step
    assert t == pytest.approx([4.0, 3.25, 2.5, 1.75, 1.0, 1.0])


# --- config -----------------------------------------------------------------------------------------------------

def test_shipped_config_parses_with_every_profile():
    full = load_config(str(CONFIG))
    assert [a.name for a in full.arms] == ["gshard-softmax", "gshard-softtopk", "maxscore-softmax",
                                           "maxscore-softtopk", "dropless-softmax"]
    assert full.model.experts == 16 and full.model.k == 2 and full.data.seq_len == 512
    assert full.model.aux_loss_coef == 0.01 and full.model.capacity_factor == 1.0
    reduced = load_config(str(CONFIG), "reduced")
    assert reduced.model.experts == 16 and reduced.data.seq_len == 512 and len(reduced.seeds) >= 2
    assert load_config(str(CONFIG), "quick").train.steps < 20
    hour = load_config(str(CONFIG), "hour")
    assert len(hour.seeds) >= 3 and hour.data.batch_size % 2 == 0  # 3+ seeds; the batch splits over 2 processes
    gpu = load_config(str(CONFIG), "gpu")
    assert gpu.train.device == "cuda" and gpu.data.batch_size % 8 == 0


def test_production_config_parses_and_its_arms_are_registered():
    prod = load_config(str(PRODUCTION))
    assert prod.model.balance_scope == "global" and prod.model.z_loss_coef > 0
    routers = {a.name: bind_router(a.router) for a in prod.arms}
    assert {name: b.entry.name for name, b in routers.items()} == {
        "gshard-softmax": "gshard", "maxscore-softmax": "maxscore", "maxscore-softtopk": "maxscore", "qb": "qb",
        "auxfree-sigmoid": "aux_free", "dual-softmax": "dual", "dual-carry": "dual", "dropless-softmax": "dropless"}
    assert prod.output.baselines == ("gshard-softmax", "maxscore-softmax")
    for arm in prod.arms:
        assert arm.router.split(":")[0] in router_names() and arm.weights in weight_ops()
    # Megatron-style state: every stateful arm leaves its state to the once-per-step update over ranks
    free, qb = routers["auxfree-sigmoid"].options, routers["qb"].options
    assert (free.mode, free.score, free.update_every, free.rate) == ("megatron", "sigmoid", 0, 0.001)
    assert qb.update_every == 0
    # the losses production trains each with: QB none, aux-free DeepSeek-V3's tiny sequence-wise loss
    arms = {r.arm.name: r for r in run_configs(prod, seeds=[0])}
    assert arms["qb"].model.aux_loss_coef == 0
    assert (arms["auxfree-sigmoid"].model.aux_loss_coef, arms["auxfree-sigmoid"].model.balance_scope) == (1e-4, "group")
    assert arms["gshard-softmax"].model.aux_loss_coef == 0.01
    for profile in ("hour", "gpu", "quick"):
        cfg = load_config(str(PRODUCTION), profile)
        assert cfg.model.balance_scope == "global" and cfg.data.batch_size % 2 == 0
    hour = load_config(str(PRODUCTION), "hour")
    assert len(hour.seeds) >= 3 and len(hour.arms) == 8
    assert not routers["dual-softmax"].options.carry and routers["dual-carry"].options.carry


def test_a_router_that_updates_its_state_inside_a_call_is_refused_for_training():
    for spec in ("qb", "aux_free:mode=megatron,score=sigmoid", "qb:update_every=2"):
        with pytest.raises(MoeRouteError, match="add update_every=0") as info:
            parse_config({"arm": [{"name": "a", "router": spec}]}, "x.toml")
        assert "\n" not in str(info.value)
    parse_config({"arm": [{"name": "a", "router": "qb:update_every=0"}, {"name": "b", "router": "dual"}]}, "x.toml")
    with pytest.raises(MoeRouteError, match="baselines names no arm 'c'"):
        parse_config({"arm": [{"name": "a"}], "output": {"baselines": ["c"]}}, "x.toml")


def test_an_arm_may_set_its_own_router_losses():
    cfg = parse_config({"arm": [{"name": "free", "router": "gshard", "aux_loss_coef": 0, "z_loss_coef": 0.01},
                                {"name": "base"}], "model": {"balance_scope": "global"}}, "x.toml")
    free, base = run_configs(cfg)
    assert (free.model.aux_loss_coef, free.model.z_loss_coef, free.model.balance_scope) == (0.0, 0.01, "global")
    assert (base.model.aux_loss_coef, base.model.z_loss_coef) == (0.01, 0.0)
    assert free.arm.own_losses == "aux_loss_coef=0.0, z_loss_coef=0.01" and base.arm.own_losses == ""
    with pytest.raises(MoeRouteError, match="number 1 in x.toml: .*aux_loss_coef must be >= 0"):
        parse_config({"arm": [{"name": "a", "aux_loss_coef": -1}]}, "x.toml")
    with pytest.raises(MoeRouteError, match="balance_scope.*must be one of group, micro_batch, global"):
        parse_config({"arm": [{"name": "a", "balance_scope": "batch"}]}, "x.toml")


@pytest.mark.parametrize("raw, message", [
    ({"arm": [{"name": "a"}], "modle": {}}, "unknown table or key 'modle'"),
    ({"arm": [{"name": "a"}], "model": {"d_modl": 4}}, "unknown option 'd_modl' for \\[model\\]"),
    ({"arm": [{"name": "a"}], "model": {"d_model": "big"}}, "option 'd_model' of \\[model\\].*must be int"),
    ({"arm": [{"name": "a"}], "model": {"d_model": 30, "heads": 4}}, "not divisible by heads"),
    ({"arm": [{"name": "a"}], "model": {"k": 20}}, "k=20 is larger than experts"),
    ({"arm": [{"name": "a"}], "train": {"steps": 0}}, "steps must be >= 1"),
    ({"arm": [{"name": "a"}], "train": {"device": "tpu"}}, "device must be"),
    ({}, "at least one \\[\\[arm\\]\\]"),
    ({"arm": [{"name": "a"}, {"name": "a"}]}, "distinct"),
    ({"arm": [{"name": "a", "routr": "x"}]}, "unknown option 'routr'"),
    ({"arm": [{"name": "a"}], "seeds": [0, "1"]}, "seeds must be"),
])
def test_config_errors_are_one_clear_line(raw, message):
    with pytest.raises(MoeRouteError, match=message) as info:
        parse_config(raw, "x.toml")
    assert "\n" not in str(info.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(MoeRouteError, match="config file not found"):
        load_config(str(tmp_path / "none.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nd_model = 4\n")
    with pytest.raises(MoeRouteError, match="cannot parse"):
        load_config(str(bad))
    with pytest.raises(MoeRouteError, match="no profile 'nosuch'"):
        load_config(str(CONFIG), "nosuch")


# --- report ----------------------------------------------------------------------------------------------------

def test_report_panels_and_paired_lines_follow_the_arms_that_ran(quick, corpus, tmp_path):
    from moeroute.train.report import figure_panels, summarise

    cfg = replace(quick, output=replace(quick.output, results=str(tmp_path)))
    short = replace(cfg, train=replace(cfg.train, steps=3, eval_every=3))
    for arm in ("gshard-softmax", "dropless-softmax"):
        run = run_configs(short, [arm], [0])[0]
        (tmp_path / f"{run.name}.csv").write_bytes(train_run(run, tmp_path / run.name, corpus).log.read_bytes())
    both = summarise(cfg, tmp_path)
    loss = [mode for _, _, mode in figure_panels(both, "gshard-softmax")["loss_curves.png"]]
    assert loss == ["raw", "ema", "diff"]
    (tmp_path / "dropless-softmax_seed0.csv").unlink()
    alone = summarise(cfg, tmp_path)
    assert [mode for _, _, mode in figure_panels(alone, "gshard-softmax")["loss_curves.png"]] == ["raw", "ema"]
    # a log from before the balance-violation and affinity-with-drops columns: those panels are left out
    old = alone.logs[("gshard-softmax", 0)].drop(columns=["balance_violation", "rank1_affinity_with_drops",
                                                           "rank2_affinity_with_drops"])
    alone.logs[("gshard-softmax", 0)] = old
    panels = figure_panels(alone, "gshard-softmax")
    assert [k for k, _, _ in panels["drop_load.png"]] == ["second_choice_drop_rate", "mean_load_ratio"]
    assert panels["affinity.png"] == []


def test_holm_adjustment_and_paired_t_test():
    from scipy.stats import ttest_rel

    from moeroute.train.paired import compare, holm

    # sorted 0.005, 0.01, 0.03, 0.04 -> 4 * 0.005, 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04): Holm (1979) by hand
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, math.nan]) == [0.5, pytest.approx(math.nan, nan_ok=True)]
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    import pandas as pd

    runs = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 4, "seed": [0, 1, 2, 0, 1, 2, 3],
                         "final_val_loss": [2.0, 2.1, 2.3, 2.05, 2.12, 2.31, 9.0]})
    c = compare(runs, "a", "b")
    assert c.seeds == (0, 1, 2) and c.diffs == pytest.approx((-0.05, -0.02, -0.01)) and c.lower == 3
    assert c.p == pytest.approx(ttest_rel([2.0, 2.1, 2.3], [2.05, 2.12, 2.31]).pvalue)
    lo, hi = c.ci95()
    assert (lo + hi) / 2 == pytest.approx(c.mean) and hi - lo == pytest.approx(2 * 4.302653 * c.std / math.sqrt(3))


def _fake_log(path: Path, final: float, steps: int = 10) -> None:
    """A run log with LOG_COLUMNS whose validation loss ends at ``final`` (the report reads only logs)."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(LOG_COLUMNS))
        writer.writeheader()
        for step in range(1, steps + 1):
            writer.writerow({"step": step, "tokens": step * 100, "train_loss": final + 1 / step, "aux_loss": 0.01,
                             "z_loss": 0.001, "val_loss": final + 0.5 / step if step % 5 == 0 else "",
                             "slot_drop_rate": 0.1, "second_choice_drop_rate": 0.2, "mean_load_ratio": 0.9,
                             "max_load_ratio": 1.0, "balance_violation": 0.3, "rank1_affinity_with_drops": 0.2,
                             "rank2_affinity_with_drops": 0.1, "temperature": "", "lr": 0.001, "step_time_s": 0.1})


def test_report_compares_every_arm_with_each_baseline_in_one_holm_family(tmp_path):
    from moeroute.train.report import write_report

    cfg = parse_config({"arm": [{"name": "base"}, {"name": "flow", "router": "maxscore"}, {"name": "worse"},
                                {"name": "same"}],
                        "seeds": [0, 1, 2, 3, 4, 5],
                        "output": {"baselines": ["base", "flow"], "results": str(tmp_path / "r"),
                                   "reports": str(tmp_path / "f"), "report": str(tmp_path / "R.md")}}, "x.toml")
    (tmp_path / "r").mkdir()
    noise = [0.011, -0.007, 0.004, -0.012, 0.008, -0.004]
    for seed, n in enumerate(noise):
        _fake_log(tmp_path / "r" / f"base_seed{seed}.csv", 2.5 + n)
        _fake_log(tmp_path / "r" / f"flow_seed{seed}.csv", 2.5 + n - 0.002 * (seed % 2))  # within noise
        _fake_log(tmp_path / "r" / f"worse_seed{seed}.csv", 2.6 + n + 0.001 * seed)  # clearly worse
        _fake_log(tmp_path / "r" / f"same_seed{seed}.csv", 2.5 + n + (0.003 if seed % 2 else -0.003))
    report = write_report(cfg).read_text()
    # 3 arms vs base, then vs flow only the 2 pairs not already made: 5 comparisons, one family
    assert "Holm's step-down correction over all 5 comparisons" in report
    rows = [line for line in report.splitlines() if line.startswith("| `")]
    pairs = [line.split("|")[1].strip() for line in rows if " − " in line.split("|")[1]]
    assert pairs == ["`flow` − `base`", "`worse` − `base`", "`same` − `base`", "`worse` − `flow`", "`same` − `flow`"]
    worse = [line for line in rows if line.startswith("| `worse` − `base`")][0]
    assert "**significant**" in worse and "0 of 6" in worse
    assert "**significant**" not in [line for line in rows if line.startswith("| `same` − `base`")][0]
    assert "Significant after the correction: `worse` above `base`" in report
    # read per baseline (a pair made the other way round is mirrored), and the best arm's verdict
    assert "Against `base`: below it on average: `flow` (-0.0010, lower on 3 of 6 seeds" in report
    assert "Against `flow`: above it on average: `base` (+0.0010, lower on 0 of 6 seeds" in report
    assert "The lowest mean, `flow`, is significantly below `worse` after the correction." in report
    table = csv.DictReader((tmp_path / "r" / "comparisons.csv").open())
    assert len(list(table)) == 5
    assert (tmp_path / "f" / "paired.png").stat().st_size > 1000 and "![paired]" in report
    assert "paper's" not in report  # not the paper's 2x2: no ordering sentences about it


# --- CLI and captured logits ------------------------------------------------------------------------------------

def test_cli_trains_reports_and_refuses_bad_input(tmp_path, capsys):
    assert main(["train", str(CONFIG), "--quick", "--arms", "gshard-softmax", "--steps", "4", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert (out.out + out.err).count("final val loss") == 1  # said once, not by both the progress and the summary
    log = _log(tmp_path / "results" / "gshard-softmax_seed0.csv")
    assert len(log) == 4
    report = (tmp_path / "TRAINING.md").read_text()
    assert "gshard-softmax" in report and "final val loss" in report
    assert "1 layer," in report and "1 layers" not in report and "2 heads" in report
    # one arm: no paired comparison, so no t-test header without a table under it
    assert "comparisons" not in report and "t-test" not in report and "nothing to compare it with" in report
    assert (tmp_path / "reports" / "loss_curves.png").stat().st_size > 1000
    assert main(["train", str(CONFIG), "--quick", "--arms", "nosuch", "--output", str(tmp_path)]) == 2
    assert "no arm named 'nosuch'" in capsys.readouterr().err
    assert main(["train", str(CONFIG), "--quick", "--seeds", "a", "--output", str(tmp_path)]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text('[[arm]]\nname = "ok"\n[[arm]]\nname = "bad"\nrouter = "nosuch"\n')
    assert main(["train", str(bad), "--output", str(tmp_path / "bad")]) == 2
    assert "unknown router 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "runs").exists()  # refused before the first arm trained


def test_captured_logits_load_as_a_workload(quick, corpus, tmp_path):
    run = run_configs(quick, ["gshard-softmax"], [0])[0]
    result = train_run(run, tmp_path / "r", corpus)
    path = capture_run(run, result.checkpoint, corpus, 2, str(tmp_path / "cap.safetensors"))
    logits = load_logits(str(path), "layer0")
    assert logits.shape == (2 * quick.data.seq_len, quick.model.experts) and logits.dtype == torch.float32
    assert bool(torch.isfinite(logits).all()) and float(logits.std()) > 0


def test_checkpoint_and_capture_writes_are_atomic(quick, corpus, tmp_path, monkeypatch):
    import moeroute.train.checkpoint as ckpt_mod

    run = run_configs(quick, ["gshard-softmax"], [0])[0]
    result = train_run(run, tmp_path / "r", corpus)
    before = result.checkpoint.read_bytes()

    def torn_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt_mod.save_checkpoint(result.checkpoint, run, 99, torch.nn.Linear(1, 1),
                                 torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1), {})
    assert result.checkpoint.read_bytes() == before  # the old checkpoint, whole
    assert sorted(p.name for p in result.checkpoint.parent.iterdir()) == ["checkpoint.pt", "log.csv"]
    path = capture_run(run, result.checkpoint, corpus, 2, str(tmp_path / "cap.safetensors"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("cap")] == [path.name]
