"""`fxscale optimize` as a user runs it: the files it promises, a loader that rebuilds the hybrid, the scale hook,
and every bad input as one stderr line with exit 2 and the out folder untouched."""
from __future__ import annotations

import json
import os

import pytest
import torch

import fxscale
from fxscale.cli import main
from fxscale.optimize import load_hybrid, measure_under_plan, read_plan
from fxscale.zoo import digits_resnet

FAST = ["--backends", "eager,channels_last", "--generations", "1", "--population", "3", "--runs", "3", "--rounds",
        "2", "--max-partitions", "4", "--tune-minutes", "0.5"]


@pytest.fixture(scope="module")
def optimized(tmp_path_factory):
    out = tmp_path_factory.mktemp("opt") / "out"
    cache = out.parent / "cache"
    assert main(["optimize", "digits_resnet", *FAST, "--cache-dir", str(cache), "--out", str(out)]) == 0
    return out, cache


def test_writes_plan_results_report_and_graph(optimized, capsys):
    out, _ = optimized
    assert sorted(os.listdir(out)) == ["inference_plan.json", "optimized.pt", "report.md", "results.json"]
    plan = read_plan(out)
    assert plan["torch"] == torch.__version__ and plan["device"]["threads"] == 1
    assert {p["backend"] for p in plan["partitions"]} <= {"eager", "channels_last"}
    assert all(p["settings"]["versions"]["torch"] for p in plan["partitions"])
    results = json.loads((out / "results.json").read_text())
    builds = {b["backend"]: b for b in results["builds"]}
    assert {"hybrid", "partitioned", "eager", "channels_last", "original"} <= set(builds)
    for b in builds.values():
        assert {"latency_ms", "latency_ms_hi", "max_abs_diff", "speedup_of_hybrid"} <= set(b)
        assert b["latency_ms"] > 0 and b["max_abs_diff"] < 1e-3
    assert results["speedup_vs_eager"]["vs"] == "original" and results["best_single_backend"] in builds
    assert set(results["pair_latency_ms"]) and results["selection"]["method"]
    assert results["conv_table"]["status"] == "ok" and results["conv_table"]["rows"]
    report = (out / "report.md").read_text()
    assert "## Builds" in report and "Per-conv table" in report


def test_loader_rebuilds_the_hybrid(optimized):
    out, _ = optimized
    hybrid = load_hybrid(out)
    opt = torch.load(out / "optimized.pt", weights_only=False)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(hybrid(x), opt(x), rtol=1e-4, atol=1e-5)
    assert [m.backend for m in hybrid.modules() if hasattr(m, "backend")] == \
        [p["backend"] for p in read_plan(out)["partitions"]]


def test_rerun_reuses_cached_timings(optimized, tmp_path):
    _, cache = optimized
    out = tmp_path / "again"
    assert main(["optimize", "digits_resnet", *FAST, "--cache-dir", str(cache), "--out", str(out), "--quiet",
                 "--onnx-simplify", "--no-conv-table"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["timing_cache_hits"] > 0 and results["conv_table"]["status"] == "off"
    onnx_rep = results["onnx"]  # the optimised graph exported and simplified by onnxslim, checked with ORT
    assert (out / "model.onnx").is_file() and onnx_rep["nodes_after"] <= onnx_rep["nodes_before"]
    assert onnx_rep["max_abs_diff"] < 1e-4


def test_measure_under_plan_of_a_rescaled_model(optimized):
    out, _ = optimized
    model = digits_resnet().eval()
    x = torch.randn(1, 1, 8, 8)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    wide = fxscale.transform(gm, fxscale.ScalingPlan(widths={g.name: 2 * g.width for g in cg.scalable}))
    got = measure_under_plan(wide, x, out / "inference_plan.json", runs=3, rounds=2)
    assert got["matched"] and got["latency_ms"] > 0 and got["max_abs_diff"] < 1e-3


def _fails(capsys, argv, out, expect):
    before = sorted(os.listdir(out)) if out.exists() else None
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert (sorted(os.listdir(out)) if out.exists() else None) == before


@pytest.mark.parametrize("extra,expect", [
    (["--target", "tpu"], "--target: unknown optimize target 'tpu'"),
    (["--backends", "eager,ortt"], "--backends: unknown backend 'ortt' (did you mean 'ort'?)"),
    (["--granularity", "layer"], "--granularity: unknown granularity 'layer'"),
])
def test_bad_options_exit_2(tmp_path, capsys, extra, expect):
    out = tmp_path / "o"
    _fails(capsys, ["optimize", "digits_resnet", *extra, "--out", str(out)], out, expect)
    assert not out.exists()


def test_bad_model_exits_2(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    _fails(capsys, ["optimize", "no_such_model_xyz", "--out", str(out)], out, "no_such_model_xyz")


def test_bad_plan_path_exits_2(tmp_path, capsys):
    out = tmp_path / "o"
    _fails(capsys, ["optimize", "digits_resnet", "--plan", str(tmp_path / "missing.json"), "--out", str(out)], out,
           "--plan")
    bad = tmp_path / "plan.json"
    bad.write_text('{"widths": {"no.such.layer": 8}}')
    _fails(capsys, ["optimize", "digits_resnet", *FAST, "--plan", str(bad), "--out", str(out)], out, "no.such.layer")


def test_unwritable_out_exits_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _fails(capsys, ["optimize", "digits_resnet", "--out", str(blocker)], blocker.parent, "is a file")
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        _fails(capsys, ["optimize", "digits_resnet", "--out", str(ro / "o")], ro, "cannot write")


def test_bad_inference_plan_is_named(tmp_path):
    bad = tmp_path / "inference_plan.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(fxscale.FxscaleError, match="not an fxscale inference plan"):
        read_plan(tmp_path)


def test_api_is_callable_as_fxscale_optimize_and_applies_the_scaling_plan_first():
    model = digits_resnet().eval()
    x = torch.randn(1, 1, 8, 8)
    gm = fxscale.trace(model, x)
    plan = fxscale.ScalingPlan(widths={g.name: 2 * g.width for g in fxscale.analyze(gm).scalable})
    res = fxscale.optimize(gm, x, backends=["eager", "tensorrt"], plan=plan, runs=2, rounds=2, ga_generations=0,
                           conv_table=False, granularity="whole")
    assert res.plan["partitions"][0]["backend"] == "eager"
    assert res.results["selection"]["method"] in ("dp", "whole:eager")
    assert "tensorrt" in res.skipped  # no GPU here: skipped with its reason, never an error
    wide = fxscale.transform(gm, plan)
    assert sum(p.numel() for p in res.optimized.parameters()) > sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(res.hybrid(x), wide(x), rtol=1e-4, atol=1e-5)


def test_hybrid_target_times_a_rescaled_model_under_the_plan(optimized):
    """get_target("hybrid", plan=OUT) builds each model's hybrid with the plan's backends and times it."""
    from fxscale.hw.targets import get_target
    from fxscale.hw.timing import measure_interleaved
    from fxscale.hw.base import TimingProtocol
    out, _ = optimized
    target = get_target("hybrid", plan=str(out))
    model = digits_resnet().eval()
    gm = fxscale.trace(model, torch.randn(1, 1, 8, 8))
    wide = fxscale.transform(gm, fxscale.ScalingPlan(widths={g.name: g.width * 2 for g in fxscale.analyze(gm).scalable}))
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        hybrid = target.build(wide, x)
        torch.testing.assert_close(hybrid(x), wide(x), rtol=1e-4, atol=1e-5)
    (t,) = measure_interleaved(target, [(wide, (1, 1, 8, 8))], TimingProtocol(runs=3, warmup=1, rounds=2))
    assert t.value > 0
    assert target.describe()["runtime"] == "hybrid"


def test_scale_config_ties_target_hybrid_to_an_inference_plan(optimized, tmp_path):
    from fxscale.errors import FxscaleError
    from fxscale.scaling.config import ScaleConfig
    out, _ = optimized
    ScaleConfig(target="hybrid", inference_plan=str(out)).validate()
    with pytest.raises(FxscaleError, match="inference_plan and target hybrid go together"):
        ScaleConfig(target="hybrid").validate()
    with pytest.raises(FxscaleError, match="inference_plan and target hybrid go together"):
        ScaleConfig(target="ort", inference_plan=str(out)).validate()
    with pytest.raises(FxscaleError, match="cannot read inference plan"):
        ScaleConfig(target="hybrid", inference_plan=str(tmp_path / "none.json")).validate()
