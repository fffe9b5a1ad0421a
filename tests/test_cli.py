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


def test_transform_reports_the_preserve_claim_and_measured_drift(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["transform", "digits_resnet", "--widen", "2", "--out", str(out)]) == 0
    pv = json.loads((out / "report.json").read_text())["preserve"]
    assert pv["exact_claimed"] is True and pv["not_proven"] == [] and pv["max_rel_diff"] < 1e-5
    assert "preserve exact (proven by the op rules)" in capsys.readouterr().out
    assert main(["transform", "digits_vgg", "--widen", "1.5", "--resolution", "12", "--out", str(tmp_path / "r")]) == 0
    pv = json.loads((tmp_path / "r" / "report.json").read_text())["preserve"]
    assert pv["exact_claimed"] is False and pv["max_rel_diff"] is None
    assert "the plan changes the resolution" in pv["not_proven"]


def test_transform_names_the_node_where_preserve_is_not_proven(tmp_path, capsys):
    src = tmp_path / "lnnet.py"
    src.write_text(
        "import torch\nfrom torch import nn\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 16, 3, padding=1)\n"
        "        self.norm = nn.LayerNorm(16)\n"
        "        self.head = nn.Linear(16, 4)\n\n"
        "    def forward(self, x):\n"
        "        y = self.norm(self.conv(x).permute(0, 2, 3, 1))\n"
        "        return self.head(y.mean((1, 2)))\n\n\n"
        "def build():\n    return Net()\n")
    assert main(["transform", f"{src}:build", "--input-size", "8", "--widen", "1.5", "--out",
                 str(tmp_path / "o")]) == 0
    pv = json.loads((tmp_path / "o" / "report.json").read_text())["preserve"]
    assert pv["exact_claimed"] is False and any("norm" in r and "non-integer" in r for r in pv["not_proven"])
    assert pv["max_rel_diff"] > 1e-4  # measured: growing a LayerNorm'd group by 1.5 really changes the output
