"""fxscale/hw/runner.py with a fake trtexec / tegrastats, its Python 3.6 compatibility, and bundle()."""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fxscale.hw import jetson, table1, trtparse

ROOT = Path(__file__).resolve().parents[1]
FAKES = Path(__file__).parent / "fixtures" / "fakes"
RUNNER = ROOT / "fxscale" / "hw" / "runner.py"
PARSER = ROOT / "fxscale" / "hw" / "trtparse.py"
TEGRA = ROOT / "fxscale" / "hw" / "tegrastats.py"
PY36_STDLIB = {"argparse", "io", "json", "os", "platform", "re", "shutil", "subprocess", "sys", "tempfile",
               "threading", "time", "trtparse"}


def wrapper(tmp: Path, name: str, script: str) -> str:
    """Executable shell wrapper running a fake script with this interpreter."""
    path = tmp / name
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKES / script}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """A folder holding one tiny static 1-conv ONNX model (opset 13, input 'input' 1x3x32x32)."""
    import torch

    folder = tmp_path_factory.mktemp("models")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(folder / "tiny.onnx"), dynamo=False,
                          opset_version=13, input_names=["input"], output_names=["y"])
    return folder


@pytest.fixture()
def bench(tmp_path, models):
    """Run the bundled runner (python -S: no site-packages, so no fxscale) against the fakes."""
    bundle_dir = tmp_path / "bundle"
    jetson.bundle(bundle_dir)
    fakes = {"trtexec": wrapper(tmp_path, "trtexec", "fake_trtexec.py"),
             "tegrastats": wrapper(tmp_path, "tegrastats", "fake_tegrastats.py")}
    argv_log = tmp_path / "argv.jsonl"

    def run(*extra: str, dialect: str = "82", env: dict | None = None, trtexec: str | None = None):
        environ = {**os.environ, "FAKE_TRTEXEC_DIALECT": dialect, "FAKE_TRTEXEC_ARGV_LOG": str(argv_log),
                   **(env or {})}
        cmd = [sys.executable, "-S", str(bundle_dir / "runner.py"), str(models), "--out", str(tmp_path / "res"),
               "--trtexec", trtexec or fakes["trtexec"], "--tegrastats", fakes["tegrastats"], *extra]
        done = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=120)
        calls = [json.loads(x) for x in argv_log.read_text().splitlines()] if argv_log.exists() else []
        return done, tmp_path / "res", calls

    return run


def load(res: Path) -> dict:
    return json.loads((res / "tiny.json").read_text())


# ------------------------------------------------------------------------------------------ end to end
def test_runner_82_latency_power_and_table(bench, models):
    done, res, calls = bench("--precision", "fp16")
    assert done.returncode == 0, done.stderr
    r = load(res)
    assert (r["status"], r["model"], r["opset"], r["device"]) == ("ok", "tiny", 13, "NVIDIA Tegra X2")
    assert r["input_shapes"] == {"input": [1, 3, 32, 32]}
    assert (r["trtexec"]["version"], r["trtexec"]["dialect"]) == ("8.2.1", "8.2")
    lat = r["latency_ms"]
    assert (lat["source"], lat["dropped_warmup"], lat["gpu_compute"]["count"]) == ("exportTimes", 42, 50)
    assert lat["gpu_compute"]["mean"] == pytest.approx(11.87418, abs=1e-9) and lat["host"]["median"] == 11.8915
    assert lat["gpu_compute_samples"][:2] == [11.814, 11.866]
    assert r["profile"]["count"] == 50 and len(r["profile"]["layers"]) == 15
    power = r["power"]
    assert "error" not in power and power["samples"] >= 1 and power["power_rule"] == "VDD_IN"
    assert 1.038 <= power["board_power_w"] <= 7.664 and power["window_s"] > 0
    assert r["energy_per_inference_j"] == pytest.approx(power["board_power_w"] * lat["gpu_compute"]["mean"] / 1e3)
    for name in ("tiny.trtexec.log", "tiny.power.log", "tiny.tegrastats.log", "tiny.times.json"):
        assert (res / name).is_file()
    assert calls[0] == ["--help"]
    onnx = str(models / "tiny.onnx")
    engine = calls[1][1].split("=", 1)[1]
    assert calls[1] == [f"--onnx={onnx}", f"--saveEngine={engine}", "--fp16", "--shapes=input:1x3x32x32",
                        "--warmUp=500", "--iterations=50", "--duration=0", "--avgRuns=50",
                        f"--exportTimes={res / 'tiny.times.json'}", f"--exportProfile={res / 'tiny.profile.json'}",
                        "--separateProfileRun"]
    assert calls[2] == [f"--loadEngine={engine}", "--shapes=input:1x3x32x32", "--warmUp=500", "--iterations=50",
                        "--duration=10", "--avgRuns=50"]
    assert not Path(engine).exists()  # engines live in a temp dir removed after the run
    rows = table1.build_rows(table1.load_results(res), {"tiny": {"params": 112, "flops": 2 * 110592}})
    assert rows[0]["latency_ms"] == lat["gpu_compute"]["mean"] and rows[0]["power_w"] == power["board_power_w"]


@pytest.mark.parametrize(("dialect", "version", "dropped", "explicit"), [
    ("71", "7.x", 13, True), ("85", "8.5.2", 0, False)])
def test_runner_other_dialects_without_power(bench, dialect, version, dropped, explicit):
    done, res, calls = bench("--no-power", "--workspace-mib", "256", dialect=dialect)
    assert done.returncode == 0, done.stderr
    r = load(res)
    assert (r["trtexec"]["version"], r["trtexec"]["dialect"]) == (version, {"71": "7.1", "85": "8.5+"}[dialect])
    assert r["latency_ms"]["dropped_warmup"] == dropped and r["latency_ms"]["gpu_compute"]["count"] == 50
    assert r["power"] is None and r["energy_per_inference_j"] is None
    assert len(calls) == 2 and ("--explicitBatch" in calls[1]) is explicit
    assert not any(a.startswith("--saveEngine") for a in calls[1])
    assert any(a.startswith("--exportProfile") for a in calls[1]) is not explicit  # 7.x: no separate profile run
    assert (r["profile"] is None) is explicit
    assert ("--workspace=256" if dialect == "71" else "--memPoolSize=workspace:256") in calls[1]


def test_runner_console_fallback_without_exports(bench):
    done, res, _ = bench("--no-power", env={"FAKE_TRTEXEC_NO_EXPORTS": "1"})
    assert done.returncode == 0, done.stderr
    lat = load(res)["latency_ms"]
    assert lat["source"] == "console"
    assert lat["gpu_compute"] == {"count": 50, "mean": 11.8742, "median": 11.84, "min": 11.775, "max": 12.766}
    assert load(res)["profile"] is None


def test_runner_trtexec_failure_writes_failed_json(bench):
    done, res, _ = bench("--no-power", env={"FAKE_TRTEXEC_FAIL": "1"})
    assert done.returncode == 1
    r = load(res)
    assert r["status"] == "failed" and "exited with status 1" in r["error"]
    assert "Plugin not found" in r["log_tail"] and "FAILED" in done.stdout


def test_runner_missing_trtexec_is_a_setup_error(bench, tmp_path):
    done, _res, _ = bench(trtexec=str(tmp_path / "no" / "trtexec"))
    assert done.returncode == 2 and "--trtexec" in done.stderr


def test_runner_power_error_keeps_latency(bench, tmp_path):
    done, res, _ = bench("--tegrastats", str(tmp_path / "missing-tegrastats"), "--power-seconds", "1")
    assert done.returncode == 0, done.stderr
    r = load(res)
    assert r["status"] == "ok" and "--tegrastats" in r["power"]["error"] and r["energy_per_inference_j"] is None


# ------------------------------------------------------------------------------------ runner internals
@pytest.fixture(scope="module")
def runner_module():
    """runner.py imported from the package folder (falls back to fxscale.hw.trtparse)."""
    spec = importlib.util.spec_from_file_location("fxscale_jetson_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_timed_window_and_samples(runner_module):
    out = [(10.0, "[I] Starting inference"), (12.0, "[I] Warmup completed 5 queries over 500 ms")]
    assert runner_module.timed_window(out, 500) == (10.5, 12.0)
    assert runner_module.timed_window(out, 5000) == (10.0, 12.0)
    assert runner_module.timed_window(out[:1], 500) is None
    line = (Path(__file__).parent / "fixtures" / "tegrastats" / "tx2.txt").read_text().splitlines()[1]
    ts = [(10.2, line), (11.0, line), (11.5, "garbage"), (11.9, line), (12.1, line)]
    samples = runner_module.window_samples(ts, (10.5, 12.0))
    assert len(samples) == 2 and samples[0]["rails"]["VDD_IN"] == (7512, 4275)


def test_model_inputs_dynamic_dims(runner_module, tmp_path):
    import torch

    net = torch.nn.Conv2d(3, 2, 1).eval()
    path = tmp_path / "dyn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 8, 8),), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    assert runner_module.model_inputs(str(path), "64x48") == ({"x": [1, 3, 64, 48]}, 13)
    with pytest.raises(runner_module.RunnerError, match="--hw"):
        runner_module.model_inputs(str(path), None)


def test_runner_from_checkout_uses_package_parser(runner_module):
    assert runner_module.trtparse is trtparse
    args = runner_module.parse_args(["models", "--no-power", "--precision", "int8"])
    assert (args.trtexec, args.iterations, args.warmup_ms, args.precision) == (
        "/usr/src/tensorrt/bin/trtexec", 50, 500, "int8")


# ------------------------------------------------------------------------------ Python 3.6 compatibility
def _py36_problems(path: Path) -> list[str]:
    """Constructs Python 3.6 lacks, or imports outside its standard library (syntax: SyntaxError)."""
    tree = ast.parse(path.read_text(), feature_version=(3, 6))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            problems += [f"from __future__ import {a.name}" for a in node.names if a.name == "annotations"]
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            problems += [f"import {n}" for n in names if n.split(".")[0] not in PY36_STDLIB]
        elif isinstance(node, ast.keyword) and node.arg in ("capture_output", "text"):
            problems.append(f"subprocess keyword {node.arg}= (Python 3.7)")
        elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)):
            problems.append(type(node).__name__)
    return problems


@pytest.mark.parametrize("path", [PARSER, TEGRA, RUNNER], ids=["trtparse", "tegrastats", "runner"])
def test_py36_compatible(path):
    problems = _py36_problems(path)
    if path == RUNNER:  # the only fxscale import is the checkout fallback after `import trtparse` fails
        assert "except ImportError:  # running from a source checkout with fxscale installed\n" \
               "    from fxscale.hw import trtparse\n" in path.read_text()
        problems.remove("import fxscale.hw")
    if path == PARSER:  # inside the package it imports its sibling; on the board the flat copy
        assert "except ImportError:  # the flat copy next to runner.py on a board\n" \
               "    from tegrastats import (" in path.read_text()
        problems.remove("import fxscale.hw.tegrastats")
        problems.remove("import tegrastats")  # the bundled sibling, stdlib only (checked above)
    assert problems == []


def test_py36_checker_catches_problems(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from __future__ import annotations\nimport dataclasses\nimport subprocess\n"
                   "subprocess.run(['ls'], capture_output=True)\n")
    assert _py36_problems(bad) == ["from __future__ import annotations", "import dataclasses",
                                   "subprocess keyword capture_output= (Python 3.7)"]
    for code in ("if (n := 1):\n    pass\n", "x = 1\nprint(f'{x=}')\n"):
        bad.write_text(code)
        with pytest.raises(SyntaxError):
            _py36_problems(bad)


# ---------------------------------------------------------------------------------------------- bundle
def test_bundle_writes_single_copies(tmp_path):
    written = jetson.bundle(tmp_path / "b")
    assert [p.name for p in written] == ["trtparse.py", "tegrastats.py", "runner.py"]
    assert [p.read_bytes() for p in written] == [PARSER.read_bytes(), TEGRA.read_bytes(), RUNNER.read_bytes()]
    assert os.access(written[2], os.X_OK)
    assert "def parse_trtexec_log" not in RUNNER.read_text()  # the parser lives only in trtparse.py
    assert trtparse.__file__ == str(PARSER)


def test_bundle_parses_power_without_fxscale(tmp_path):
    """The flat bundle imports on a board's bare Python: no site-packages, so no fxscale to fall back on."""
    folder = tmp_path / "b"
    jetson.bundle(folder)
    line = "RAM 2000/7850MB GR3D_FREQ 50%@1300 VDD_IN 5000/4900 VDD_CPU_GPU_CV 1200/1100"
    code = ("import trtparse, sys; assert 'fxscale' not in sys.modules; "
            f"print(trtparse.board_power_mw(trtparse.parse_tegrastats_line({line!r})))")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=folder, capture_output=True, text=True, check=True)
    assert float(out.stdout) == 5000.0
