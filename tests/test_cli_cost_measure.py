"""`fxscale cost` and `fxscale measure` as a user runs them: tables, JSON, GFLOP/s, and exit 2 on bad input."""
from __future__ import annotations

import dataclasses
import json
import sys

import pytest
import torch

import fxscale
from fxscale import zoo
from fxscale.cli import main, uniform_plan
from fxscale.cost import reference_flops


@pytest.fixture
def traced_full(traced_zoo):
    """``traced_full(name) -> (gm, cg)``: the shared trace of a zoo model at its full input size (the CLI's)."""
    return lambda name: traced_zoo(name, zoo.get_spec(name).full_input_size)[:2]


def test_cost_table_states_convention_and_totals(capsys, traced_full):
    assert main(["cost", "digits_resnet"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs = 2 x MACs" in out.splitlines()[0]
    assert "conv_k3" in out and "linear" in out
    _gm, cg = traced_full("digits_resnet")
    rep = fxscale.cost(cg)
    total = next(line for line in out.splitlines() if line.startswith("total "))
    assert f"{rep.flops / 1e6:.3f}" in total and str(rep.params) in total
    assert f"{rep.params:,} params" in out
    assert main(["cost", "digits_resnet", "--all-layers"]) == 0
    assert len(capsys.readouterr().out.splitlines()) > len(out.splitlines())  # relu/add/pool rows too


def test_cost_json_matches_api_and_flop_counter(capsys, traced_full):
    assert main(["cost", "digits_vgg", "--widen", "1.5", "--resolution", "12", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    gm, cg = traced_full("digits_vgg")
    plan = uniform_plan(cg, 1.5, (12, 12))
    ref = fxscale.cost(cg, plan, mode="input").to_dict()
    assert {k: d[k] for k in ref if k != "layers"} == {k: v for k, v in ref.items() if k != "layers"}
    assert [r["name"] for r in d["layers"]] == [r["name"] for r in ref["layers"]]
    assert d["resolution"] == [12, 12] and d["flops"] == 2 * d["macs"]
    new = fxscale.transform(gm, plan, resolution_mode="input", cg=cg)
    assert d["flops"] == reference_flops(new, torch.randn(1, 1, 12, 12))
    assert d["params"] == sum(p.numel() for p in new.parameters())


def test_cost_plan_file_and_resolution_override(tmp_path, capsys, traced_full):
    _gm, cg = traced_full("digits_resnet")
    plan = uniform_plan(cg, 2.0, (16, 16))
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    assert main(["cost", "digits_resnet", "--plan", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["flops"] == fxscale.cost(cg, plan, mode="input").flops and d["resolution"] == [16, 16]
    assert main(["cost", "digits_resnet", "--plan", str(path), "--resolution", "8", "--json"]) == 0
    d8 = json.loads(capsys.readouterr().out)
    assert d8["resolution"] == [8, 8]
    assert d8["flops"] == fxscale.cost(cg, dataclasses.replace(plan, resolution=(8, 8))).flops < d["flops"]


def test_cost_depth_plan(tmp_path, capsys):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"depths": {"stages.0": 3}}))
    assert main(["cost", "digits_resnet", "--json"]) == 0
    base = json.loads(capsys.readouterr().out)
    assert main(["cost", "digits_resnet", "--plan", str(path), "--json"]) == 0
    deep = json.loads(capsys.readouterr().out)
    convs = [r for r in base["layers"] if r["name"].startswith("stages_0_1_conv")]
    assert deep["flops"] == base["flops"] + 2 * sum(r["macs"] for r in convs)


def test_measure_ort_json_and_out(tmp_path, capsys, traced_full):
    out = tmp_path / "res" / "m.json"
    argv = ["measure", "digits_resnet", "--widen", "1.5", "--resolution", "12", "--runs", "3", "--warmup", "1",
            "--statistic", "median", "--json", "--out", str(out)]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d == json.loads(out.read_text())
    assert d["target"] == "ort" and "onnxruntime" in d["device"] and "1 thread" in d["device"]
    assert d["input_shape"] == [1, 1, 12, 12] and d["runs"] == 3 and len(d["samples_ms"]) == 3
    lat = d["latency_ms"]
    assert 0 < lat["p10"] <= lat["median"] <= lat["p90"] and lat["mean"] > 0
    gm, cg = traced_full("digits_resnet")
    assert d["flops"] == fxscale.cost(cg, uniform_plan(cg, 1.5, (12, 12)), mode="input").flops
    assert d["gflops_per_s"] == pytest.approx(d["flops"] / (lat["median"] * 1e-3) / 1e9)
    assert d["params"] > sum(p.numel() for p in gm.parameters())


def test_measure_torch_text(capsys):
    assert main(["measure", "digits_vgg", "--target", "torch", "--threads", "1", "--runs", "3", "--warmup", "1",
                 "--batch", "2"]) == 0
    out = capsys.readouterr().out
    for word in ("mean", "median", "p10", "p90", "GFLOP/s", "torch", "1 thread", "2x1x8x8"):
        assert word in out, word


@pytest.mark.parametrize("argv,message", [
    (["--target", "nope"], "valid targets: hybrid, ort, torch, trtexec"),
    (["--target", "trtexec", "--trtexec", "/nonexistent/bin/trtexec"], "not found"),
    (["--widen", "1.5", "--device", "cuda:0"], "torch target only"),
])
def test_measure_target_errors_exit_2_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "m.json"
    assert main(["measure", "digits_vgg", "--runs", "3", "--warmup", "1", "--out", str(out), *argv]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.out == ""
    assert not out.exists()


@pytest.mark.parametrize("command", ["cost", "measure"])
def test_bad_plan_key_exits_2(tmp_path, capsys, command):
    bad = tmp_path / "plan.json"
    bad.write_text('{"widths": {"no.such.layer": 8}}')
    out = tmp_path / "m.json"
    extra = ["--runs", "3", "--warmup", "1", "--out", str(out)] if command == "measure" else []
    assert main([command, "digits_vgg", "--plan", str(bad), *extra]) == 2
    assert "no.such.layer" in capsys.readouterr().err
    assert not out.exists()


def test_plan_and_widen_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["cost", "digits_vgg", "--plan", str(tmp_path / "p.json"), "--widen", "2"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["measure", "digits_vgg", "--runs", "0"])
    assert e.value.code == 2


def test_utilization_benchmark_smoke(tmp_path, capsys, monkeypatch):
    """benchmarks/utilization.py end to end on the tiny digits ResNet (torch target, a handful of runs)."""
    import csv
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "utilization.py"
    spec = importlib.util.spec_from_file_location("fxscale_bench_utilization", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up while the class builds
    spec.loader.exec_module(bench)
    assert bench.main(["--models", "digits_resnet", "--mults", "1,2", "--target", "torch", "--runs", "2",
                       "--warmup", "1", "--rounds", "1", "--out", str(tmp_path), "--tag", "t"]) == 0
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert {r["method"] for r in rows} == {"width", "resolution", "depth"} and len(rows) == 6
    assert set(bench.FIELDS[:9]) == {"model", "method", "flops_mult", "flops", "params", "latency_ms", "p10_ms",
                                     "p90_ms", "gflops_per_s"} <= set(rows[0])
    for r in rows:
        ratio = float(r["flops_ratio"])
        assert (ratio == 1.0) if r["flops_mult"] == "1.0" else 1.5 < ratio < 2.5
        assert float(r["gflops_per_s"]) == pytest.approx(int(r["flops"]) / float(r["latency_ms"]) / 1e6, rel=1e-3)
    assert (tmp_path / "t_gflops.png").stat().st_size > 0 and (tmp_path / "t_latency.png").stat().st_size > 0
    assert "reading" in capsys.readouterr().out
