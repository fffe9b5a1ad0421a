"""`fxscale accelerate`: the whole run on digits with tiny settings writes every file, a rerun resumes, and bad
options give one stderr line, exit 2, and leave the out folder untouched."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fxscale.cli import main

TINY = ["digits_resnet", "--data", "digits", "--data-kw", '{"train_fraction": 0.3}', "--target", "ort",
        "--latency-budget", "0.7x", "--teacher-epochs", "1", "--distill-epochs", "1", "--finetune-epochs", "1",
        "--candidates", "teacher,skip,cn_k3,ds_k3", "--multi-site", "skip,ds_k3", "--runs", "3", "--rounds", "3", "--additivity", "1",
        "--frontier", "0.7", "--baselines", "uniform,random,greedy,hacscale,hant_scale", "--quiet"]


def test_accelerate_writes_every_file_and_resumes(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["accelerate", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| hant |" in printed and "wrote" in printed
    for name in ("plan.json", "model.pt", "model.onnx", "report.md", "results.json"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    methods = {r["method"]: r for r in results["methods"]}
    assert set(methods) == {"teacher", "hant", "uniform", "random", "greedy", "hacscale", "hant_scale"}
    for r in methods.values():
        lo, hi = r["test_top1_ci"]
        assert 0 <= lo <= r["test_top1"] <= hi <= 1 and r["latency_ratio"] <= r["latency_ratio_hi"]
    plan = json.loads((out / "plan.json").read_text())
    covered = [part for key in plan["plan"] for part in key.split("+")]  # "a+b": one block for two sites
    assert sorted(covered) == sorted(s["name"] for s in plan["sites"]) and set(plan["plan"]) == {
        r["site"] for r in results["sites"]}
    table = json.loads((out / "stages" / "latency.json").read_text())["value"]["table"]
    pairs = [k for k in table if "+" in k]
    assert pairs and all(set(table[k]) <= {"skip", "ds_k3"} and "teacher" not in table[k] for k in pairs)
    assert set(plan["plan"].values()) <= {"teacher", "skip", "cn_k3", "ds_k3"}
    assert results["solve_s"] >= 0 and results["frontier"][0]["budget"] == 0.7  # no wall-clock assert: speed is benchmarks/hant_solver_speed.py
    report = (out / "report.md").read_text()
    assert "## Per-site choices" in report and "## Accuracy against latency" in report and "## Not done here" in report
    assert "Per-pair latencies timed on the target" in report and results["latency_source"] == "measured"
    stages = sorted(p.name for p in (out / "stages").glob("*.json"))
    assert stages == ["distill.json", "latency.json", "results.json", "scores.json", "teacher.json"]
    before = (out / "stages" / "results.json").read_text()
    assert main(["accelerate", *TINY, "--out", str(out)]) == 0  # every stage resumes
    assert (out / "stages" / "results.json").read_text() == before
    assert json.loads((out / "results.json").read_text())["methods"] == results["methods"]


@pytest.mark.parametrize("argv, expect", [
    (["--latency-budget", "fast"], r"--latency-budget must be a ratio of the teacher's latency like 0.6x"),
    (["--latency-budget", "0x"], r"--latency-budget must be > 0"),
    (["--candidates", "teacher,foo_k3"], r"--candidates has unknown \['foo_k3'\]"),
    (["--candidates", "ds_k3"], r"--candidates must include 'teacher'"),
    (["--score", "speed"], r"--score must be one of dloss, dacc, local"),
    (["--multi-site", "teacher,ds_k3"], r"--multi-site has \['teacher'\]: a multi-site candidate is a new block"),
    (["--multi-site", "foo_k3"], r"--multi-site has \['foo_k3'\]"),
    (["--latency-profile", "no/such.json"], r"--latency-profile is not a file"),
    (["--baselines", "uniform,magic"], r"--baselines has unknown \['magic'\]"),
    (["--seeds", "0"], r"--seeds must be >= 1"),
    (["--target", "tpu"], r"--target: unknown target 'tpu'"),
    (["--data", "mnist9"], r"--data: unknown dataset 'mnist9'"),
    (["--executor", "slurm"], r"--executor 'slurm' is not an executor"),
    (["nosuchnet"], r"MODEL nosuchnet: unknown model 'nosuchnet'"),
])
def test_bad_options_one_line_exit_2_out_untouched(tmp_path, capsys, argv, expect):
    import re
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    assert main(["accelerate", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fxscale: error:") and re.search(expect, err[0]), err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "keep"
    fresh = tmp_path / "fresh"
    assert main(["accelerate", *argv, "--out", str(fresh)]) == 2 and not fresh.exists()
    capsys.readouterr()


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert main(["accelerate", "--out", str(f)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err and Path(f).read_text() == "x"


def test_every_setting_keys_its_stage():
    """A changed setting reruns its stage and what is below it; only how-to-run settings are unkeyed."""
    from dataclasses import fields

    from fxscale.hant.config import STAGES, AccelerateConfig
    declared = {f for fs, _ in STAGES.values() for f in fs}
    assert {f.name for f in fields(AccelerateConfig)} - declared == {"executor", "executor_kw", "workers", "progress"}
    base = AccelerateConfig().stage_keys()
    moved = AccelerateConfig(multi_site=("ds_k3",)).stage_keys()
    assert {s for s in base if base[s] != moved[s]} == {"latency", "distill", "scores", "results"}
