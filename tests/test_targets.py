"""Device targets: ORT/torch timing, registry, interleaved A/B comparison."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from fxscale.errors import TargetError
from fxscale.export import export_onnx
from fxscale.hw.base import LatencyStats, MeasureProtocol, Target
from fxscale.hw.targets import (
    ABResult,
    OrtCpuTarget,
    TargetRegistry,
    TorchTarget,
    compare_interleaved,
    get_target,
    list_targets,
)

torch.set_num_threads(1)
QUICK = MeasureProtocol(warmup=2, runs=10, statistic="median")


def conv_net(width: int) -> nn.Module:
    """Two 3x3 convs of `width` channels, global pool, linear head."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


def assert_sane(stats: LatencyStats, runs: int) -> None:
    """Basic invariants of a timing result."""
    assert stats.runs == runs == len(stats.samples_ms)
    assert stats.p10 <= stats.median <= stats.p90
    assert stats.mean > 0 and min(stats.samples_ms) > 0


def test_ort_measures_module_with_paper_style_settings():
    target = get_target("ort")
    assert isinstance(target, OrtCpuTarget) and isinstance(target, Target)
    stats = target.measure(conv_net(8), (1, 3, 32, 32), QUICK)
    assert_sane(stats, QUICK.runs)
    assert "onnxruntime" in stats.device and "1 thread" in stats.device
    assert stats.settings["threads"] == 1 and stats.settings["spinning"] is False
    assert stats.settings["providers"] == ["CPUExecutionProvider"] and stats.warmup == QUICK.warmup
    so = target.session_options()
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (1, 1)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_ort_measures_onnx_file_and_checks_its_shape(tmp_path):
    path = tmp_path / "m.onnx"
    export_onnx(conv_net(8), path, torch.randn(2, 3, 16, 16), check=False)
    stats = get_target("ort", threads=1).measure(str(path), (2, 3, 16, 16), MeasureProtocol(warmup=1, runs=4, batch=2))
    assert_sane(stats, 4)
    with pytest.raises(TargetError, match="cannot feed"):
        get_target("ort").measure(path, (1, 3, 16, 16), QUICK)  # protocol batch 1 vs static batch 2
    with pytest.raises(TargetError, match="not found"):
        get_target("ort").measure(tmp_path / "missing.onnx", (1, 3, 16, 16), QUICK)


def test_torch_measures_copy_and_restores_threads():
    net = conv_net(8).train()
    threads = torch.get_num_threads()
    stats = get_target("torch", channels_last=True).measure(net, (1, 3, 32, 32), QUICK)
    assert_sane(stats, QUICK.runs)
    assert "torch" in stats.device and stats.settings["channels_last"] is True
    assert net.training and torch.get_num_threads() == threads
    with pytest.raises(TargetError, match="nn.Modules"):
        TorchTarget().measure("model.onnx", (1, 3, 8, 8), QUICK)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA guard")
def test_torch_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(TargetError, match="CUDA is not available"):
        get_target("torch", device="cuda")


def test_registry_names_and_errors(monkeypatch):
    assert {"ort", "torch", "trtexec"} <= set(list_targets())
    with pytest.raises(TargetError, match="unknown target 'jetson'.*ort, torch, trtexec"):
        get_target("jetson")
    with pytest.raises(TargetError, match="rejected options"):
        get_target("ort", cores=4)
    monkeypatch.setitem(sys.modules, "fxscale.hw.trtexec", None)  # make the lazy import fail
    with pytest.raises(TargetError, match="'trtexec' target is unavailable"):
        get_target("trtexec")


def test_registry_instance_is_isolated():
    reg = TargetRegistry()
    reg.register("ort4", lambda **kw: OrtCpuTarget(threads=4, **kw))
    assert reg.create("ort4").threads == 4 and "ort4" not in list_targets()
    with pytest.raises(TargetError, match="already registered"):
        reg.register("ort", OrtCpuTarget)


def assert_sane_ab(res: ABResult, rounds: int, runs: int) -> None:
    """Structure of a real A/B timing (no wall-clock thresholds: a shared CI machine makes any bound flaky)."""
    assert isinstance(res, ABResult) and len(res.ratios) == rounds
    assert_sane(res.a, runs)
    assert_sane(res.b, runs)
    assert all(r > 0 for r in res.ratios)
    assert res.ratio_low <= res.ratio_median <= res.ratio_high and 0 < res.confidence <= 1


def test_interleaved_self_comparison_runs_on_torch():
    net = conv_net(16)
    assert_sane_ab(compare_interleaved(get_target("torch"), net, net, (1, 3, 32, 32), QUICK, rounds=5), 5, QUICK.runs)


def test_interleaved_ort_takes_different_input_shapes():
    proto = MeasureProtocol(warmup=1, runs=4, statistic="median")
    res = compare_interleaved(get_target("ort"), conv_net(32), conv_net(32), (1, 3, 64, 64), proto, rounds=3,
                              input_shape_b=(1, 3, 32, 32))
    assert_sane_ab(res, 3, proto.runs)


class CountingTarget:
    """Target without prepare(): deterministic latency = model cost; records the call order."""

    name = "counting"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def measure(self, model, input_shape, protocol=QUICK) -> LatencyStats:
        self.calls.append(model["id"])
        return LatencyStats.from_samples([model["cost"]] * protocol.runs, protocol.warmup, "fake")

    def describe(self) -> dict:
        return {"device": "fake"}


def test_interleaving_alternates_order_without_prepare():
    target = CountingTarget()
    res = compare_interleaved(target, {"id": "a", "cost": 2.0}, {"id": "b", "cost": 3.0}, (1, 3, 8, 8),
                              MeasureProtocol(warmup=0, runs=7), rounds=3)
    assert target.calls == ["a", "b", "b", "a", "a", "b"]
    assert res.ratios == [1.5, 1.5, 1.5] and res.ratio_mean == 1.5
    assert res.a.runs == res.b.runs == 7 and res.a.device == "fake"
    with pytest.raises(TargetError, match="rounds"):
        compare_interleaved(target, {}, {}, (1, 3, 8, 8), rounds=0)


@pytest.mark.parametrize(("cost_a", "cost_b", "ratio"), [(2.0, 2.0, 1.0), (1.0, 8.0, 8.0), (4.0, 1.0, 0.25)])
def test_interleaved_ratio_is_b_over_a(cost_a, cost_b, ratio):
    res = compare_interleaved(CountingTarget(), {"id": "a", "cost": cost_a}, {"id": "b", "cost": cost_b},
                              (1, 3, 8, 8), MeasureProtocol(warmup=0, runs=3), rounds=4)
    assert res.ratio_median == pytest.approx(ratio) and res.ratio_low == pytest.approx(ratio)
    assert res.ratio_high == pytest.approx(ratio) and res.b.median == pytest.approx(cost_b)
