"""The CLI as a user runs it: analyze and transform write what they promise, bad input exits 2."""
from __future__ import annotations

import json

import onnx

from fxscale.cli import main


def test_analyze_json(capsys):
    assert main(["analyze", "digits_resnet", "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert any(g["scalable"] for g in groups) and {"name", "width", "divisor", "reason"} <= set(groups[0])


def test_transform_writes_model_plan_onnx(tmp_path):
    out = tmp_path / "out"
    assert main(["transform", "digits_vgg", "--widen", "1.5", "--resolution", "12", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["params_after"] > report["params_before"] and report["resolution"] == [12, 12]
    assert onnx.load(str(out / "model.onnx")).opset_import[0].version == 13
    assert json.loads((out / "plan.json").read_text())["resolution"] == [12, 12]


def test_bad_plan_exits_2(tmp_path, capsys):
    bad = tmp_path / "plan.json"
    bad.write_text('{"widths": {"no.such.layer": 8}}')
    assert main(["transform", "digits_vgg", "--plan", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "no.such.layer" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
