"""TensorRTTarget against a fake trtexec of each dialect, locally and through a fake ssh/scp prefix."""
from __future__ import annotations

import json
import math
import stat
import sys
import warnings
from pathlib import Path

import pytest
import torch

from fxscale.errors import TargetError
from fxscale.hw.base import LatencyStats, MeasureProtocol, Target
from fxscale.hw.trtexec import TensorRTTarget

FAKES = Path(__file__).parent / "fixtures" / "fakes"


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    """Static 1-conv ONNX model (opset 13), input 'input' 1x3x32x32."""
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["y"])
    return path


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    """Path of an executable fake trtexec; calls() returns the argv of every invocation."""
    path = tmp_path / "bin" / "trtexec"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKES / "fake_trtexec.py"}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("FAKE_TRTEXEC_ARGV_LOG", str(log))

    class Fake:
        exe = str(path)

        @staticmethod
        def calls() -> list[list[str]]:
            return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

        @staticmethod
        def dialect(name: str) -> None:
            monkeypatch.setenv("FAKE_TRTEXEC_DIALECT", name)

    return Fake


@pytest.mark.parametrize(("dialect", "version", "mean", "median", "warmup", "device"), [
    ("71", (7,), 38.55626, 38.52, 13, "TensorRT 7.x fp16"),
    ("82", (8, 2, 1), 11.87418, 11.84, 42, "NVIDIA Tegra X2"),
    ("85", (8, 5, 2), 13.511, 13.47, 37, "Xavier")])
def test_measure_each_dialect(fake, tiny_onnx, dialect, version, mean, median, warmup, device):
    fake.dialect(dialect)
    target = TensorRTTarget(trtexec=fake.exe, precision="fp16")
    stats = target.measure(tiny_onnx, (1, 3, 32, 32))
    assert isinstance(stats, LatencyStats) and target.version == version
    assert (stats.runs, stats.warmup, stats.device) == (50, warmup, device)
    assert stats.mean == pytest.approx(mean, abs=1e-9) and stats.median == median
    assert len(stats.samples_ms) == 50
    assert stats.settings["source"] == "exportTimes" and stats.settings["precision"] == "fp16"
    assert stats.settings["dialect"] == {"71": "7.1", "82": "8.2", "85": "8.5+"}[dialect]
    calls = fake.calls()
    assert calls[0] == ["--help"] and len(calls) == 2
    run = calls[1]
    assert run[0] == f"--onnx={tiny_onnx}" and "--fp16" in run and "--shapes=input:1x3x32x32" in run
    assert ("--explicitBatch" in run) is (dialect == "71")
    assert {"--warmUp=500", "--iterations=50", "--duration=0", "--avgRuns=50"} <= set(run)


def test_host_metric_and_protocol_runs(fake, tiny_onnx):
    fake.dialect("82")
    target = TensorRTTarget(trtexec=fake.exe, version="8.2.1", metric="host", warmup_ms=500)
    stats = target.measure(tiny_onnx, (8, 3, 32, 32), MeasureProtocol(warmup=5, runs=30, batch=1))
    assert stats.mean == pytest.approx(11.926868, abs=1e-9) and stats.settings["metric"] == "host"
    run = fake.calls()[0]  # version given: no --help call
    assert "--iterations=30" in run and "--fp16" not in run and "--shapes=input:1x3x32x32" in run


@pytest.mark.parametrize(("dialect", "mean", "p90"), [("82", 11.8742, None), ("85", 13.511, 13.72)])
def test_console_fallback_without_export_times(fake, tiny_onnx, monkeypatch, dialect, mean, p90):
    fake.dialect(dialect)
    monkeypatch.setenv("FAKE_TRTEXEC_NO_EXPORTS", "1")
    stats = TensorRTTarget(trtexec=fake.exe).measure(tiny_onnx, (1, 3, 32, 32))
    assert stats.settings["source"] == "console" and stats.mean == mean and stats.runs == 50
    assert math.isnan(stats.p10) and (math.isnan(stats.p90) if p90 is None else stats.p90 == p90)


def test_missing_binary_raises_target_error(tiny_onnx, tmp_path):
    target = TensorRTTarget(trtexec=str(tmp_path / "nowhere" / "trtexec"))
    with pytest.raises(TargetError, match=r"not found.*trtexec='/usr/src/tensorrt/bin/trtexec'.*prefix="):
        target.measure(tiny_onnx, (1, 3, 32, 32))
    assert target.describe()["runtime_version"] is None


def test_trtexec_failure_quotes_log(fake, tiny_onnx, monkeypatch):
    fake.dialect("85")
    monkeypatch.setenv("FAKE_TRTEXEC_FAIL", "1")
    with pytest.raises(TargetError, match=r"(?s)exit status 1.*Plugin not found.*&&&& FAILED"):
        TensorRTTarget(trtexec=fake.exe, version="8.5.2").measure(tiny_onnx, (1, 3, 32, 32))


def test_remote_prefix_copies_files(fake, tiny_onnx, tmp_path):
    fake.dialect("82")
    remote = tmp_path / "board-tmp"
    target = TensorRTTarget(trtexec=fake.exe, prefix=[sys.executable, str(FAKES / "fake_ssh.py"), "tx2"],
                            copy_cmd=[sys.executable, str(FAKES / "fake_scp.py"), "-q"],
                            remote_workdir=str(remote), precision="fp16")
    stats = target.measure(tiny_onnx, (1, 3, 32, 32))
    assert stats.mean == pytest.approx(11.87418, abs=1e-9) and stats.device == "NVIDIA Tegra X2"
    assert target.remote_host == "tx2" and stats.settings["prefix"][-1] == "tx2"
    copied = list(remote.glob("tiny-*.onnx"))
    assert len(copied) == 1 and copied[0].read_bytes() == tiny_onnx.read_bytes()
    run = fake.calls()[1]
    assert run[0] == f"--onnx={copied[0]}" and run[-1].startswith(f"--exportTimes={remote}/")


def test_remote_missing_trtexec(tiny_onnx, tmp_path):
    target = TensorRTTarget(trtexec="/opt/none/trtexec", prefix=[sys.executable, str(FAKES / "fake_ssh.py"), "tx2"],
                            copy_cmd=[sys.executable, str(FAKES / "fake_scp.py")], remote_workdir=str(tmp_path))
    with pytest.raises(TargetError, match="'/opt/none/trtexec' not found on tx2"):
        target.measure(tiny_onnx, (1, 3, 32, 32))
    assert list(tmp_path.iterdir()) == []  # nothing copied before trtexec was found


def test_measure_module_exports_onnx(fake, tmp_path):
    fake.dialect("82")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    target = TensorRTTarget(trtexec=fake.exe, version=(8, 2, 1), workdir=tmp_path / "work")
    stats = target.measure(net, (1, 3, 16, 16))
    assert stats.runs == 50
    run = fake.calls()[0]
    onnx = Path(run[0].split("=", 1)[1])
    assert onnx.name == "model.onnx" and onnx.is_file() and onnx.is_relative_to(tmp_path / "work")
    assert any(a.startswith("--shapes=") and a.endswith(":1x3x16x16") for a in run)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"precision": "bf16"}, "precision must be one of"), ({"metric": "wall"}, "metric must be"),
    ({"version": "newest"}, "TensorRT version")])
def test_bad_settings(kwargs, match):
    with pytest.raises(TargetError, match=match):
        TensorRTTarget(**kwargs)


def test_bad_inputs(fake, tiny_onnx, tmp_path):
    target = TensorRTTarget(trtexec=fake.exe, version="8.2.1")
    with pytest.raises(TargetError, match="does not accept"):
        target.measure(tiny_onnx, (1, 3, 64, 64))
    with pytest.raises(TargetError, match="ONNX file not found"):
        target.measure(tmp_path / "missing.onnx", (1, 3, 32, 32))
    with pytest.raises(TargetError, match="nn.Module or an .onnx path"):
        target.measure(42, (1, 3, 32, 32))
    with pytest.raises(TargetError, match="input_shape"):
        target.measure(tiny_onnx, (3,))


def test_is_a_target_and_describes_itself(fake):
    target = TensorRTTarget(trtexec=fake.exe, precision="int8")
    assert isinstance(target, Target) and target.name == "tensorrt-int8"
    info = target.describe()
    assert (info["runtime"], info["runtime_version"], info["precision"]) == ("tensorrt", "8.2.1", "int8")
