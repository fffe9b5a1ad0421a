"""fxscale.hw.table1 reproduces the paper's Table I cells from runner-style results."""
from __future__ import annotations

import csv
import json
import runpy
import sys
from pathlib import Path

import pytest

from fxscale.hw import table1

# HACScale Table I, ImageNet / ResNet18 on Jetson Xavier: (params M, FLOPs M, latency ms, power W, top-1 %)
PAPER = {"baseline": (11.68, 1735.22, 13.66, 14.87, 70.56), "szegedy": (11.68, 3253.31, 13.48, 25.6, 71.12),
         "hacscale": (12.96, 3359.73, 13.74, 24.73, 72.97)}


def result(model: str, latency_ms: float, power_w: float | None, status: str = "ok") -> dict:
    """A minimal runner result JSON."""
    power = None if power_w is None else {"board_power_w": power_w, "samples": 12, "power_rule": "sum"}
    return {"schema": table1.RESULT_SCHEMA, "status": status, "model": model, "device": "Xavier",
            "latency_ms": {"source": "exportTimes", "gpu_compute": {"mean": latency_ms, "median": latency_ms},
                           "host": {"mean": latency_ms + 0.1, "median": latency_ms + 0.1}},
            "power": power}


@pytest.fixture()
def results_dir(tmp_path) -> Path:
    folder = tmp_path / "results"
    folder.mkdir()
    for name, (_p, _f, lat, watt, _t) in PAPER.items():
        (folder / f"{name}.json").write_text(json.dumps(result(name, lat, watt)))
    (folder / "nopower.json").write_text(json.dumps(result("nopower", 10.0, None)))
    (folder / "baseline.times.json").write_text("[]")
    (folder / "notes.json").write_text(json.dumps({"something": "else"}))
    return folder


@pytest.fixture()
def costs() -> dict:
    out = {name: {"params": p * 1e6, "flops": f * 1e6} for name, (p, f, _l, _w, _t) in PAPER.items()}
    out["nopower"] = {"params": 5e6, "macs": 500e6}
    return out


ACCURACY = {name: row[4] for name, row in PAPER.items()}


def test_rows_reproduce_paper_cells(results_dir, costs):
    rows = table1.build_rows(table1.load_results(results_dir), costs, ACCURACY, baseline="baseline")
    assert [r["method"] for r in rows] == ["baseline", "hacscale", "nopower", "szegedy"]
    md = table1.to_markdown(rows).splitlines()
    assert md[0] == ("| Method | Params (M) | FLOPs (M) | Latency (ms) | Power (W) | Utilization (GFLOPS) "
                     "| Power Efficiency (GFLOPs/J) | Top1 (%) |")
    assert md[2] == "| baseline | 11.68 | 1735.22 | 13.66 | 14.87 | 127.03 (1x) | 8.54 (1x) | 70.56 (+0.00) |"
    assert md[3] == "| hacscale | 12.96 | 3359.73 | 13.74 | 24.73 | 244.52 (1.92x) | 9.89 (1.16x) | 72.97 (+2.41) |"
    assert md[5] == "| szegedy | 11.68 | 3253.31 | 13.48 | 25.6 | 241.34 (1.9x) | 9.43 (1.1x) | 71.12 (+0.56) |"


def test_missing_power_and_accuracy_leave_blank_cells(results_dir, costs):
    rows = table1.build_rows(table1.load_results(results_dir), costs, ACCURACY, baseline="baseline")
    row = rows[2]
    assert row["flops_m"] == 1000.0 and row["utilization_gflops"] == pytest.approx(100.0)  # 2 x 500 M MACs / 10 ms
    assert row["power_w"] is None and row["efficiency_gflop_per_j"] is None and row["top1"] is None
    assert table1.to_markdown(rows).splitlines()[4] == "| nopower | 5 | 1000 | 10 |  | 100 (0.79x) |  |  |"


def test_missing_costs_and_no_baseline(results_dir):
    rows = table1.build_rows(table1.load_results(results_dir), {}, latency="host")
    assert rows[0]["latency_ms"] == pytest.approx(13.76) and rows[0]["utilization_gflops"] is None
    assert rows[0]["utilization_ratio"] is None and rows[0]["top1_delta"] is None
    assert table1.to_markdown(rows).splitlines()[2] == "| baseline |  |  | 13.76 | 14.87 |  |  |  |"


def test_csv_has_raw_numbers_and_ratios(results_dir, costs, tmp_path):
    rows = table1.build_rows(table1.load_results(results_dir), costs, ACCURACY, baseline="baseline")
    md, csv_path = table1.write_table(rows, tmp_path / "out")
    assert md.read_text() == table1.to_markdown(rows)
    with csv_path.open() as fh:
        data = list(csv.DictReader(fh))
    assert list(data[0]) == list(table1.CSV_FIELDS)
    assert float(data[1]["utilization_gflops"]) == pytest.approx(3359.73 / 13.74)
    assert float(data[1]["utilization_ratio"]) == pytest.approx((3359.73 / 13.74) / (1735.22 / 13.66))
    assert float(data[1]["top1_delta"]) == pytest.approx(2.41) and data[1]["device"] == "Xavier"
    assert data[2]["power_w"] == "" and data[2]["efficiency_ratio"] == ""


def test_errors(results_dir, costs, tmp_path):
    results = table1.load_results(results_dir)
    with pytest.raises(ValueError, match="baseline 'resnet' is not among the results: baseline, hacscale"):
        table1.build_rows(results, costs, baseline="resnet")
    with pytest.raises(ValueError, match="latency must be one of"):
        table1.build_rows(results, costs, latency="wall")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no successful runner results"):
        table1.load_results(empty)


def test_failed_results_are_skipped_with_a_warning(results_dir):
    failed = result("broken", 1.0, None, status="failed") | {"error": "trtexec exited with status 1"}
    (results_dir / "broken.json").write_text(json.dumps(failed))
    with pytest.warns(UserWarning, match="'broken' failed on the board: trtexec exited"):
        assert "broken" not in table1.load_results(results_dir)


def test_cli(results_dir, costs, tmp_path, capsys):
    (tmp_path / "costs.json").write_text(json.dumps(costs))
    (tmp_path / "acc.json").write_text(json.dumps(ACCURACY))
    rc = table1.main([str(results_dir), "--costs", str(tmp_path / "costs.json"), "--accuracy",
                      str(tmp_path / "acc.json"), "--baseline", "baseline", "--out", str(tmp_path / "t")])
    assert rc == 0 and "127.03 (1x)" in capsys.readouterr().out
    assert (tmp_path / "t" / "table1.md").is_file() and (tmp_path / "t" / "table1.csv").is_file()
    assert table1.main([str(results_dir), "--costs", str(tmp_path / "costs.json"), "--baseline", "x"]) == 2
    assert "baseline 'x'" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:'fxscale.hw.table1' found in sys.modules:RuntimeWarning")
def test_module_entry_point(results_dir, costs, tmp_path, monkeypatch, capsys):
    (tmp_path / "costs.json").write_text(json.dumps(costs))
    argv = ["table1", str(results_dir), "--costs", str(tmp_path / "costs.json"), "--out", str(tmp_path / "o")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("fxscale.hw.table1", run_name="__main__")
    assert stop.value.code == 0 and "| baseline | 11.68 |" in capsys.readouterr().out
    assert (tmp_path / "o" / "table1.csv").is_file()
