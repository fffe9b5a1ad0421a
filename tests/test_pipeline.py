"""`fxscale scale` end to end on tiny settings: outputs, resume, bad input, the CIFAR-10 recipe on a stand-in."""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import fxscale
from fxscale.cli import main
from fxscale.errors import FxscaleError, PlanError
from fxscale.scaling.pipeline import STAGES, UNKEYED, Pipeline, ScaleConfig, downstream, stage_keys

torch.set_num_threads(1)
TINY = dict(samples=3, sample_epochs=1, search_epochs=1, epochs=2, runs=6, warmup=2, rounds=2, stride=4,
            latency_budget="1.5x", memory_budget="3x", data_kw={"train_fraction": 0.3}, max_rounds=20, seeds=(0, 1))
HAC = ["hacscale", "hacscale-align8", "hacscale-cost"]
# the @hacres rows: the allocation ablation; neuralscale: the published method (trains, prunes, descends)
METHODS = ("uniform", "resolution", "uniform@hacres", "random@hacres", "neuralscale")
ROW_FIELDS = ("method", "latency_ratio", "latency_ratio_lo", "latency_ratio_hi", "params", "macs", "flops", "test_top1",
              "test_top1_ci", "val_top1", "per_seed", "search_compute")
OUTPUTS = ("plan.json", "model.pt", "model.onnx", "report.md", "results.json", "widths.png",
           "accuracy_vs_latency.png", "utilization.png")


# run_dir (tests/conftest.py): one session-wide `Pipeline(ScaleConfig(methods=METHODS, **TINY))` run, shared with
# test_stage_cache (copied there before it is damaged)


def test_outputs_and_report(run_dir):
    out, summary, _ = run_dir
    for f in OUTPUTS:
        assert (out / f).stat().st_size > 0, f
    assert not (out / ".partial").exists()
    methods = [r["method"] for r in summary["methods"]]
    assert methods[0] == "baseline" and methods[-3:] == HAC and {"uniform", "resolution"} <= set(methods)
    plan = fxscale.ScalingPlan.from_json((out / "plan.json").read_text())
    model = torch.load(out / "model.pt", weights_only=False)
    x = torch.randn(2, 1, *(plan.resolution or (8, 8)))  # None: the back-off kept the baseline rung (digits 8x8)
    assert model(x).shape == (2, 10)
    report = (out / "report.md").read_text()
    for needle in ("Params (M)", "Utilization (GFLOP/s)", "Alpha search", "I = a * C^b", "Algorithm 1", "hacscale"):
        assert needle in report
    for r in summary["methods"]:
        assert r["latency_ms"] > 0 and 0 <= r["test_acc"][0] <= 1 and r["params"] > 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["search"]["rows"]) == set(HAC) and res["onnx"]["max_abs_diff"] < 1e-3
    rows = res["search"]["rows"]
    assert (rows["hacscale"]["rule"], rows["hacscale"]["stride"], rows["hacscale"]["align"]) == ("paper", 4, 1)
    assert rows["hacscale-align8"]["align"] == 8 and rows["hacscale-cost"]["rule"] == "cost"
    assert res["hacscale_choice"]["chosen"] in HAC and "validation" in res["hacscale_choice"]["by"]


def test_results_rows_carry_the_reported_fields(run_dir):
    out, summary, _ = run_dir
    res = json.loads((out / "results.json").read_text())
    budget = res["budget"]["latency_ratio"]
    for r in res["methods"]:
        assert all(k in r for k in ROW_FIELDS), [k for k in ROW_FIELDS if k not in r]
        assert r["flops"] == 2 * r["macs"] and r["latency_ratio_lo"] <= r["latency_ratio"] <= r["latency_ratio_hi"]
        assert [p["seed"] for p in r["per_seed"]] == [0, 1] and len(r["test_acc"]) == 2
        lo, hi = r["test_top1_ci"]
        assert lo <= r["test_top1"] <= hi
        assert r["within_budget"] == (r["same_as_baseline"] or r["latency_ratio_hi"] <= budget)
        assert r["search_compute"]["epochs"] >= 0 and r["search_compute"]["wall_s"] >= 0
        t = r["train_compute"]
        assert (t["epochs_per_seed"], t["start"]) == (TINY["epochs"], "scratch") and t["wall_s_per_seed"] > 0
    base = res["methods"][0]
    assert base["latency_ratio"] == 1.0 and base["search_compute"]["epochs"] == 0
    hac = next(r for r in res["methods"] if r["method"] == "hacscale")
    assert hac["search_compute"]["epochs"] == res["alpha"]["epochs"] + 3 * 1  # alpha candidates + 3 samples x 1
    for rec in res["search"]["rows"].values():
        bo = rec["backoff"]
        assert 0 <= bo["index"] < bo["ladder"] and all(c["accepted"] == (c["high"] <= budget) for c in bo["checks"])
    comp = res["comparisons"]
    assert set(comp["vs_baseline"]) == {r["method"] for r in res["methods"]} - {"baseline"}
    assert all(0 <= d["p"] <= d["p_holm"] <= 1 for d in comp["vs_hacscale"].values())
    assert "FLOPs" in res["conventions"]["flops"] and "MACs" in res["conventions"]["flops"]
    report = (out / "report.md").read_text()
    for needle in ("MACs (M)", "ratio [95% CI]", "search epochs", "final epochs per seed", "Holm", "NeuralScale-lite",
                   "Tie rule"):
        assert needle in report, needle


def test_ablation_rows_take_hacscales_resolution_and_the_measured_budget(run_dir):
    out, summary, _ = run_dir
    res = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in res["methods"]}
    hac_res = res["search"]["rows"]["hacscale"]["plan"]["resolution"]
    for name in ("uniform@hacres", "random@hacres"):
        row = rows[name]
        assert res["method_plans"][name]["predicted_plan"]["resolution"] == hac_res
        assert row["align"] == 1 and len(row["per_seed"]) == 2 and row["search_compute"]["epochs"] >= 0
        assert name in res["comparisons"]["vs_hacscale"] and "hacscale" in res["comparisons"]["vs_baseline"]
        bo_measured = row["accepted_ratio"]
        assert bo_measured is None or bo_measured["high"] <= res["budget"]["latency_ratio"]
        plan = fxscale.ScalingPlan.from_json(json.dumps(row["plan"]))
        if bo_measured is not None and plan.widths:  # kept a width rung: it sits at HACScale's resolution
            assert list(plan.resolution) == hac_res


def test_importance_runs_are_judged_and_retrained_until_converged(tmp_path):
    cfg = ScaleConfig(**{**TINY, "samples": 3, "seeds": (0,), "sample_max_epochs": 4})
    logs: list[str] = []
    pipe = Pipeline(cfg, tmp_path, log=logs.append)
    pipe.importance_fit((8, 8))
    conv = pipe.importance_compute["convergence"]
    assert conv["runs"] == conv["judged"] == 3 and conv["max_epochs"] == 4
    # 1 and 2 epochs are never judged converged (the test needs >= 3 epochs): every run ends at the 4-epoch cap
    assert conv["epochs"] == [4] and any("not converged: retraining with 2 epochs" in line for line in logs)
    assert any("not converged: retraining with 4 epochs" in line for line in logs)
    assert pipe.importance_compute["epochs"] == 3 * 4
    again = Pipeline(cfg, tmp_path, log=logs.append)
    again.importance_fit((8, 8))
    assert again.importance_compute["convergence"] == conv  # the longer runs are cached under their own keys
    with pytest.raises(PlanError, match="sample_max_epochs must be 0"):
        ScaleConfig(**{**TINY, "sample_epochs": 4, "sample_max_epochs": 2}).validate()


def test_published_neuralscale_row(run_dir):
    _out, summary, _ = run_dir
    row = next(r for r in summary["methods"] if r["method"] == "neuralscale")
    cfg = summary["config"]
    assert row["search_compute"]["epochs"] == 2 * cfg["search_epochs"] and "descent" in row["search_compute"]["what"]
    rec = summary["method_plans"]["neuralscale"]
    assert [it["iteration"] for it in rec["trajectory"]] == [0, 1]
    assert rec["predicted_plan"]["meta"]["method"] == "neuralscale" and rec["predicted_plan"]["meta"]["iterations"] == 1


def test_local_importance_samples_with_seeds_and_a_held_out_check(tmp_path):
    cfg = ScaleConfig(**{**TINY, "samples": 3, "sample_mode": "local", "sample_seeds": 2, "importance_holdout": 2})
    logs: list[str] = []
    pipe = Pipeline(cfg, tmp_path, log=logs.append)
    pred = pipe.importance_fit((8, 8))
    assert set(pred.fits) == {g.name for g in pipe.cg.scalable}
    comp = pipe.importance_compute
    assert comp["mode"] == "local" and comp["seeds"] == [0, 1] and comp["epochs"] == (3 * 2 + 2) * 1
    check = pipe.importance_check
    assert check["overall"]["n"] == 2 * len(pred.fits) and set(check["groups"]) == set(pred.fits)
    assert math.isfinite(check["overall"]["mape"]) and check["overall"]["mape"] >= 0 and len(check["configs"]) == 2
    assert any("held-out check" in line and "MAPE" in line for line in logs)
    again = Pipeline(cfg, tmp_path, log=logs.append)
    again.importance_fit((8, 8))
    assert again.importance_compute["cached_samples"] == 8  # every run, held-out ones too, came from the cache
    assert again.importance_check["overall"] == check["overall"]
    # per-producer normalisation reuses the trained samples and rescales each group by 1 / its producer count:
    # exponents and per-group held-out R² stay, scales a divide by the count
    prod = Pipeline(dataclasses.replace(cfg, importance_norm="producer"), tmp_path, log=logs.append)
    pred_p = prod.importance_fit((8, 8))
    assert prod.importance_compute["cached_samples"] == 8 and prod.importance_compute["norm"] == "producer"
    counts = {g.name: len(g.producers) for g in pipe.cg.scalable}
    assert max(counts.values()) > 1  # digits_resnet ties its residual streams
    for g, law in pred.fits.items():
        assert pred_p.fits[g].b == pytest.approx(law.b, rel=1e-6, abs=1e-9)
        assert pred_p.fits[g].a == pytest.approx(law.a / counts[g], rel=1e-6)
        assert prod.importance_check["groups"][g]["r2_log"] == pytest.approx(check["groups"][g]["r2_log"], abs=1e-9)


def test_hacscale_plan_respects_budgets(run_dir):
    _out, summary, _ = run_dir
    base = summary["methods"][0]
    for name in HAC:
        hac = next(r for r in summary["methods"] if r["method"] == name)
        assert hac["params"] <= 3 * base["params"]
        assert summary["search"]["rows"][name]["predicted_ms"] <= summary["budget"]["latency_ms"] + 1e-12
        m = summary["search"]["rows"][name]["backoff"]["measured"]
        assert m is None or m["high"] <= summary["budget"]["latency_ratio"]  # accepted on the interval's upper end


def test_rerun_resumes_every_stage(run_dir):
    out, summary, _ = run_dir
    logs: list[str] = []
    again = Pipeline(ScaleConfig(methods=METHODS, **TINY), out, log=logs.append).run()
    resumed = {line.split("]")[0].strip("[") for line in logs if "resumed" in line}
    assert resumed == {"latency_model", "alpha", "search", "methods", "train", "measure"}
    assert not any("training" in line for line in logs)  # importance samples came from the cache
    assert again["search"]["plan"] == summary["search"]["plan"]


STAGE_FILES = ("latency_model", "alpha", "search", "methods", "train", "measure")


def _resumed(logs: list[str]) -> set[str]:
    return {line.split("]")[0].strip("[") for line in logs if "resumed from" in line}


@pytest.mark.slow  # retrains everything; the key logic itself is covered by the stage-key tests below
def test_rerun_with_another_target_recomputes_what_depends_on_it(run_dir, tmp_path):
    """The stale-resume bug: search and methods were reused after --target changed."""
    src, _summary, _ = run_dir
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    before = {s: json.loads((out / "stages" / f"{s}.json").read_text())["key"] for s in STAGE_FILES}
    cfg = ScaleConfig(methods=("uniform", "resolution"), **{**TINY, "target": "torch"})
    logs: list[str] = []
    Pipeline(cfg, out, log=logs.append).run()
    assert _resumed(logs) == set()  # alpha too: s is searched against the budget, which the latency model sets
    # (importance samples are cached per width configuration and resolution: reused when the alpha's is the same)
    after = {s: json.loads((out / "stages" / f"{s}.json").read_text())["key"] for s in STAGE_FILES}
    assert {s for s in STAGE_FILES if after[s] != before[s]} == set(STAGE_FILES)
    logs.clear()
    Pipeline(dataclasses.replace(cfg), out, log=logs.append).run()  # identical rerun: every stage reused
    assert _resumed(logs) == set(STAGE_FILES)


def _changed(value: Any) -> Any:
    """Another value of the same kind (the key must see the difference)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, tuple):
        return value[:-1] if len(value) > 1 else value + value
    if isinstance(value, dict):
        return {**value, "other": 1}
    assert value is None
    return "other.json"


DECLARED = [(stage, f) for stage, (fields_, _up) in STAGES.items() for f in fields_]


@pytest.mark.parametrize(("stage", "field_name"), DECLARED, ids=[f"{s}.{f}" for s, f in DECLARED])
def test_changing_a_declared_field_changes_the_stage_and_every_downstream_key(stage, field_name):
    cfg = ScaleConfig()
    other = dataclasses.replace(cfg, **{field_name: _changed(getattr(cfg, field_name))})
    a, b = stage_keys(cfg), stage_keys(other)
    changed = {s for s in STAGES if a[s] != b[s]}
    readers = {s for s, (fields_, _up) in STAGES.items() if field_name in fields_}
    expected = readers.union(*(downstream(s) for s in readers))
    assert stage in changed and downstream(stage) <= changed
    assert changed == expected  # and nothing that neither reads the field nor consumes a stage that does


def test_every_setting_is_declared_by_a_stage_or_unkeyed():
    declared = {f for fields_, _up in STAGES.values() for f in fields_}
    settings = {f.name for f in dataclasses.fields(ScaleConfig)}
    assert declared | set(UNKEYED) == settings and not declared & set(UNKEYED)
    assert all(set(up) <= set(list(STAGES)[:i]) for i, (_f, up) in enumerate(STAGES.values()))


def test_stage_chain_follows_the_data_flow():
    """The issue's cases: search sees target, threads, lr, batch size and seeds; methods sees target and threads."""
    cfg = ScaleConfig()
    for f in ("target", "threads", "lr", "batch_size", "seeds"):
        assert stage_keys(cfg)["search"] != stage_keys(dataclasses.replace(cfg, **{f: _changed(getattr(cfg, f))}))[
            "search"], f
    for f in ("target", "threads"):
        assert stage_keys(cfg)["methods"] != stage_keys(dataclasses.replace(cfg, **{f: _changed(getattr(cfg, f))}))[
            "methods"], f
    unchanged = stage_keys(dataclasses.replace(cfg, workers=4, progress=False))
    assert unchanged == stage_keys(cfg)
    assert stage_keys(dataclasses.replace(cfg, target="torch"))["alpha"] != stage_keys(cfg)["alpha"]  # s vs budget


@pytest.mark.parametrize(("field_name", "stage"), [("profile", "latency_model"), ("weights", "training")])
def test_rewritten_file_changes_the_keys_that_read_it(tmp_path, field_name, stage):
    """A profile or warm-start weights file rewritten under the same path: its stage and all downstream rerun."""
    path = tmp_path / "f.bin"
    path.write_text("{}")
    cfg = ScaleConfig(**{field_name: str(path)})
    first = stage_keys(cfg)
    assert stage_keys(cfg) == first  # same bytes, same keys
    path.write_text('{"changed": 1}')
    again = stage_keys(cfg)
    assert {s for s in STAGES if again[s] != first[s]} == {stage} | downstream(stage)


def test_model_without_scalable_groups_is_rejected(tmp_path):
    class Fixed(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]
    out = tmp_path / "o"
    with pytest.raises(FxscaleError, match="no scalable channel group"):
        Pipeline(ScaleConfig(**TINY), out, model=Fixed())
    assert not out.exists()


def test_bad_settings_exit_2_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["scale", "--alpha", "1.5", "--out", str(out)]) == 2
    assert "alpha must lie in (0, 1)" in capsys.readouterr().err and not out.exists()
    assert main(["scale", "--sample-epochs", "4", "--sample-max-epochs", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sample-max-epochs must be 0 (no retraining) or >= --sample-epochs" in err
    assert not out.exists()
    with pytest.raises(SystemExit) as e:
        main(["scale", "--importance-norm", "layer", "--out", str(out)])
    assert e.value.code == 2 and "--importance-norm: invalid choice: 'layer'" in capsys.readouterr().err
    assert not out.exists()
    assert main(["scale", "--latency-budget", "0.5x", "--samples", "3", "--out", str(out), "--methods", "",
                 "--runs", "4", "--warmup", "1"]) == 2
    assert "below the baseline's own latency" in capsys.readouterr().err
    assert not any(out.glob("*.json")) and not (out / "report.md").exists()


def test_cifar10_recipe_on_synthetic_stand_in(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import table1_cifar10
    summaries = table1_cifar10.run(str(tmp_path), data="synthetic",
                                   data_kw={"shape": (3, 32, 32), "num_classes": 10, "size": 200}, width=1 / 16,
                                   budgets=("1.5x",), methods=("uniform",), samples=3, sample_epochs=1,
                                   search_epochs=1, epochs=1, runs=4, warmup=1, rounds=2, alphas=(0.5,),
                                   memory_budget="3x", stride=4)
    rows = summaries[0]["methods"]
    assert [r["method"] for r in rows] == ["baseline", "uniform", *HAC]
    assert (tmp_path / "budget_1.5x" / "report.md").exists()


def test_greedy_runs_on_a_device_profile_predictor(tmp_path):
    from test_predictor import _synthetic_profile

    from fxscale.hw.predictor import LatencyPredictor
    from fxscale.scaling.budget import Budget
    from fxscale.scaling.greedy import importance_aware_widths
    from fxscale.scaling.powerlaw import ImportancePredictor, PowerLaw
    cg = fxscale.analyze(fxscale.trace(fxscale.zoo.create_model("resnet18").eval(), torch.randn(1, 3, 64, 64)))
    prof = _synthetic_profile(["conv_k7_s2", "conv_k3", "conv_k3_s2", "conv_k1_s2", "norm", "elementwise", "pool",
                               "gpool", "linear"])
    path = tmp_path / "p.json"
    prof.save(path)
    lat = LatencyPredictor(str(path), mode="input")  # the pipeline hands the predictor itself to Algorithm 1
    start = fxscale.ScalingPlan(resolution=(72, 72))
    base = lat.predict(cg, start)
    pred = ImportancePredictor({g.name: PowerLaw(1.0 + i, -1.0, 1, 1, 5) for i, g in enumerate(cg.scalable)})
    r = importance_aware_widths(cg, pred, lat.bind(cg, start), Budget(latency_ms=1.3 * base), start=start,
                                rule="cost", align=8)
    assert r.steps and r.latency_ms <= 1.3 * base
    assert r.latency_ms == pytest.approx(lat.predict(cg, r.plan), rel=1e-9)


def test_each_seed_trains_on_its_own_split_unless_fixed(tmp_path, monkeypatch):
    """split_per_seed (default): seed s uses the dataset built with split seed s; seed 0 is the pipeline's bundle,
    and every training job of seed s gets seed s's bundle. --fixed-split: one bundle for all."""
    pipe = Pipeline(ScaleConfig(seeds=(0, 1), data_kw={"train_fraction": 0.3}), tmp_path / "a", log=lambda _m: None)
    b0, b1 = pipe.bundle_for(0), pipe.bundle_for(1)
    assert b0 is pipe.bundle and pipe.bundle_for(1) is b1
    assert b0.splits["test"].indices != b1.splits["test"].indices and "(seed 1)" in b1.splits["test"].how
    assert set(b1.splits["test"].indices).isdisjoint(b1.splits["train"].indices)  # still disjoint within a seed
    seen: list = []

    class Recording:
        def __init__(self, **_kw): pass
        def __enter__(self): return self
        def __exit__(self, *exc): return False
        def map(self, fn, jobs): seen.extend(j.dataset for j in jobs); return []

    import fxscale.executor
    monkeypatch.setattr(fxscale.executor, "get_executor", lambda *_a, **_k: Recording())
    plan = fxscale.ScalingPlan()
    pipe.cfg.progress = False
    pipe.train_many([("a", plan, 0), ("b", plan, 1)], epochs=1)
    assert seen == [b0, b1]
    fixed = Pipeline(ScaleConfig(seeds=(0, 1), split_per_seed=False), tmp_path / "b", log=lambda _m: None)
    assert fixed.bundle_for(1) is fixed.bundle
