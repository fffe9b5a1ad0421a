"""`fxscale scale` end to end on tiny settings: outputs, resume, bad input, the CIFAR-10 recipe on a stand-in."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fxscale
from fxscale.cli import main
from fxscale.errors import FxscaleError
from fxscale.scaling.pipeline import Pipeline, ScaleConfig

torch.set_num_threads(1)
TINY = dict(samples=3, sample_epochs=1, search_epochs=1, epochs=2, runs=6, warmup=2, rounds=2, stride=4,
            latency_budget="1.5x", memory_budget="3x", data_kw={"train_fraction": 0.3})
OUTPUTS = ("plan.json", "model.pt", "model.onnx", "report.md", "results.json", "widths.png",
           "accuracy_vs_latency.png", "utilization.png")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale")
    logs: list[str] = []
    cfg = ScaleConfig(methods=("uniform", "resolution"), **TINY)
    summary = Pipeline(cfg, out, log=logs.append).run()
    return out, summary, logs


def test_outputs_and_report(run_dir):
    out, summary, _ = run_dir
    for f in OUTPUTS:
        assert (out / f).stat().st_size > 0, f
    assert not (out / ".partial").exists()
    methods = [r["method"] for r in summary["methods"]]
    assert methods[0] == "baseline" and methods[-2:] == ["hacscale", "hacscale-cost"] and {"uniform", "resolution"} <= set(methods)
    plan = fxscale.ScalingPlan.from_json((out / "plan.json").read_text())
    model = torch.load(out / "model.pt", weights_only=False)
    x = torch.randn(2, 1, *plan.resolution)
    assert model(x).shape == (2, 10)
    report = (out / "report.md").read_text()
    for needle in ("Params (M)", "Utilization (GFLOP/s)", "Alpha search", "I = a * C^b", "Algorithm 1", "hacscale"):
        assert needle in report
    for r in summary["methods"]:
        assert r["latency_ms"] > 0 and 0 <= r["test_acc"][0] <= 1 and r["params"] > 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["search"]["rules"]) == {"paper", "cost"} and res["onnx"]["max_abs_diff"] < 1e-3


def test_hacscale_plan_respects_budgets(run_dir):
    _out, summary, _ = run_dir
    base = summary["methods"][0]
    hac = summary["methods"][-2]
    assert hac["params"] <= 3 * base["params"]
    assert summary["search"]["rules"]["paper"]["predicted_ms"] <= summary["budget"]["latency_ms"] + 1e-12


def test_rerun_resumes_every_stage(run_dir):
    out, summary, _ = run_dir
    logs: list[str] = []
    again = Pipeline(ScaleConfig(methods=("uniform", "resolution"), **TINY), out, log=logs.append).run()
    resumed = {line.split("]")[0].strip("[") for line in logs if "resumed" in line}
    assert {"latency_model", "alpha", "search", "methods", "train", "measure"} <= resumed
    assert not any("training" in line for line in logs)  # importance samples came from the cache
    assert again["search"]["plan"] == summary["search"]["plan"]


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
    assert [r["method"] for r in rows] == ["baseline", "uniform", "hacscale", "hacscale-cost"]
    assert (tmp_path / "budget_1.5x" / "report.md").exists()


def test_greedy_runs_on_a_device_profile_predictor(tmp_path):
    from test_predictor import _synthetic_profile

    from fxscale.hw.predictor import LatencyPredictor
    from fxscale.scaling.budget import Budget
    from fxscale.scaling.greedy import importance_aware_widths
    from fxscale.scaling.pipeline import _ProfileLatency
    from fxscale.scaling.powerlaw import ImportancePredictor, PowerLaw
    cg = fxscale.analyze(fxscale.trace(fxscale.zoo.create_model("resnet18").eval(), torch.randn(1, 3, 64, 64)))
    prof = _synthetic_profile(["conv_k7_s2", "conv_k3", "conv_k3_s2", "conv_k1_s2", "norm", "elementwise", "pool",
                               "gpool", "linear"])
    path = tmp_path / "p.json"
    prof.save(path)
    lat = _ProfileLatency(LatencyPredictor(str(path), mode="input"), str(path))
    start = fxscale.ScalingPlan(resolution=(72, 72))
    base = lat.predict(cg, start)
    pred = ImportancePredictor({g.name: PowerLaw(1.0 + i, -1.0, 1, 1, 5) for i, g in enumerate(cg.scalable)})
    r = importance_aware_widths(cg, pred, lat.bind(cg, start), Budget(latency_ms=1.3 * base), start=start,
                                rule="cost", align=8)
    assert r.steps and r.latency_ms <= 1.3 * base
    assert r.latency_ms == pytest.approx(lat.predict(cg, r.plan), rel=1e-9)
