"""The backends of `fxscale optimize`: one interface, the registry, numerics against eager, honest capabilities.

Parametrised over the registry (timm style) with named exclusions decided at collection: UNAVAILABLE (cannot run
on this machine: the test asserts the reason names the extra instead), SLOW_COMPILE (inductor's C++ build and
TVM's LLVM build take 45 s and 8 s here: inductor runs under -m slow, TVM on one representative net by default).
"""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.fx as fx
from torch import nn

from fxscale.errors import FxscaleError
from fxscale.optimize.backends import (
    Backend,
    BackendError,
    Capability,
    backend_reasons,
    create_backend,
    list_backends,
)
from fxscale.optimize.backends.convtable import conv_specs, conv_table, table_markdown
from fxscale.optimize.backends.onnx_export import export_partition

ALL = list_backends()
UNAVAILABLE = {n: r for n, r in backend_reasons().items() if r}
AVAILABLE = [n for n in ALL if n not in UNAVAILABLE]
SLOW_COMPILE = {"inductor", "tvm"}  # compile: ~45 s (inductor's C++ build) and ~8 s (TVM) on 2 shared cores
EXTRAS = {"openvino": "openvino", "tvm": "tvm", "tensorrt": "tensorrt"}
# max abs diff against eager, times max(1, |output|): compilers re-associate float sums
TOL = {"eager": 0.0, "channels_last": 1e-5, "inductor": 1e-4, "ort": 1e-4, "openvino": 1e-4, "tvm": 1e-4,
       "tensorrt": 1e-2}


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ResidualPair(nn.Module):
    """Two inputs (a partition boundary inside a residual block), two outputs (a tuple)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.relu(self.conv(x) + skip)
        return y, y.mean(dim=(2, 3))


def _case(name: str) -> tuple[fx.GraphModule, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    if name == "conv_bn_relu":
        return fx.symbolic_trace(ConvBnRelu().eval()), (torch.randn(1, 3, 12, 12),)
    if name == "linear":
        return fx.symbolic_trace(Linear().eval()), (torch.randn(2, 16),)
    return fx.symbolic_trace(ResidualPair().eval()), (torch.randn(1, 8, 10, 10), torch.randn(1, 8, 10, 10))


def _params() -> list:
    out = []
    for b in AVAILABLE:
        for net in ("conv_bn_relu", "linear", "residual"):
            slow = b == "inductor" or (b in SLOW_COMPILE and net != "conv_bn_relu")
            out.append(pytest.param(b, net, id=f"{b}-{net}", marks=[pytest.mark.slow] if slow else []))
    return out


def _leaves(out: object) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ registry
def test_registry_lists_every_backend_default_first():
    assert ALL[:2] == ["eager", "channels_last"]
    assert set(ALL) == {"eager", "channels_last", "inductor", "ort", "openvino", "tvm", "tensorrt"}
    assert set(list_backends(available_only=True)) == set(AVAILABLE)
    assert {"eager", "channels_last", "ort"} <= set(AVAILABLE)


def test_unknown_backend_names_the_choices():
    with pytest.raises(FxscaleError, match=r"unknown backend 'nope'; valid backends: eager, channels_last, .*tvm"):
        create_backend("nope")
    with pytest.raises(BackendError, match=r"did you mean 'eager'"):
        create_backend("eagr")


def test_unknown_setting_names_the_valid_ones():
    with pytest.raises(BackendError, match=r"backend 'ort' has no setting 'thread'; valid settings: .*threads"):
        create_backend("ort", thread=2)


@pytest.mark.parametrize("name", ALL)
def test_describe_has_settings_and_a_version(name):
    be = create_backend(name)
    assert isinstance(be, Backend)
    d = be.describe()
    assert d["backend"] == name and d["layout"] in ("contiguous", "channels_last")
    assert isinstance(d["settings"], dict) and d["versions"]["torch"] == torch.__version__
    if name not in UNAVAILABLE:
        assert d["version"], d


@pytest.mark.parametrize("name", ["ort", "openvino", "tvm"])
def test_own_thread_pools_default_to_one_thread(name):
    assert create_backend(name).settings["threads"] == 1


@pytest.mark.parametrize("name", sorted(UNAVAILABLE) or [pytest.param("none", marks=pytest.mark.skip("all here"))])
def test_unavailable_backend_names_its_extra(name):
    be = create_backend(name)
    cap = be.available()
    assert not cap and f"pip install 'fxscale[{EXTRAS[name]}]'" in cap.reason
    gm, inputs = _case("linear")
    assert not be.supports(gm, inputs) and be.supports(gm, inputs).reason == cap.reason
    with pytest.raises(BackendError, match=r"fxscale\[" + EXTRAS[name]):
        be.compile(gm, inputs)


# ------------------------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("name,net", _params())
def test_backend_matches_eager(name, net):
    gm, inputs = _case(net)
    with torch.no_grad():
        want = gm(*inputs)
    be = create_backend(name)
    assert be.supports(gm, inputs), be.supports(gm, inputs).reason
    fn = be.compile(gm, inputs)
    for _ in range(2):  # a compiled callable is reusable
        got = fn(*inputs)
        assert type(got) is type(want)
        for g, w in zip(_leaves(got), _leaves(want)):
            assert g.shape == w.shape and g.device.type == "cpu"
            scale = max(1.0, float(w.abs().max()))
            torch.testing.assert_close(g, w, rtol=0, atol=TOL[name] * scale)
            if g.dim() == 4:
                fmt = torch.channels_last if be.layout == "channels_last" else torch.contiguous_format
                assert g.is_contiguous(memory_format=fmt), (name, g.stride())


@pytest.mark.parametrize("name", [pytest.param(b, marks=[pytest.mark.slow] if b == "inductor" else [])
                                  for b in AVAILABLE])
def test_backend_takes_a_misaligned_view_as_input(name):
    """A partition's input can be a view at an odd offset (a chunk of a split, a slice): TVM's DLPack import needs
    64-byte alignment, every backend must accept it."""
    gm, (x,) = _case("linear")
    big = torch.randn(x.numel() + 1)
    view = big[1:].view_as(x)  # 4 bytes past an aligned allocation
    assert view.data_ptr() % 64 != 0
    fn = create_backend(name).compile(gm, (x,))
    with torch.no_grad():
        torch.testing.assert_close(fn(view), gm(view), rtol=0, atol=TOL[name] * max(1.0, float(gm(view).abs().max())))


def test_channels_last_accepts_either_layout_and_returns_channels_last():
    gm, (x,) = _case("conv_bn_relu")
    fn = create_backend("channels_last").compile(gm, (x,))
    for inp in (x, x.contiguous(memory_format=torch.channels_last)):
        y = fn(inp)
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        torch.testing.assert_close(y, gm(x), rtol=0, atol=1e-5)


def test_eager_returns_contiguous_for_a_channels_last_input():
    gm, (x,) = _case("conv_bn_relu")
    y = create_backend("eager").compile(gm, (x,))(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous()


class Svd(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svdvals(x)


@pytest.mark.parametrize("name", [b for b in ("ort", "openvino") if b in AVAILABLE])
def test_partition_that_cannot_export_is_unsupported_with_the_reason(name):
    gm, x = fx.symbolic_trace(Svd()), torch.randn(4, 4)
    cap = create_backend(name).supports(gm, (x,))
    assert isinstance(cap, Capability) and not cap
    assert "ONNX export (opset 13) failed" in cap.reason and "svd" in cap.reason.lower()
    assert create_backend("eager").supports(gm, (x,))


def test_supports_then_compile_reuses_the_probe():
    gm, inputs = _case("residual")
    be = create_backend("ort")
    assert be.supports(gm, inputs)
    probed = be._probed[1]
    fn = be.compile(gm, inputs)
    assert fn is probed and be._probed is None  # the probe's callable is handed out once
    assert fn(*inputs)[0].shape == (1, 8, 10, 10)


def test_export_keeps_only_used_inputs():
    class UsesFirst(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a * 2

    gm = fx.symbolic_trace(UsesFirst())
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    exp = export_partition(gm, (a, b))
    assert exp.input_names == ("x0",) and exp.input_index == (0,)
    fn = create_backend("ort").compile(gm, (a, b))
    torch.testing.assert_close(fn(a, b), a * 2)


# ------------------------------------------------------------------------------------------------ conv table
class TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3,
                                                                                                         padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


def test_conv_specs_dedupe_shapes():
    specs = conv_specs(fx.symbolic_trace(TwoConvs()), torch.randn(1, 3, 8, 8))
    assert [s["layers"] for s in specs] == [["a"], ["b", "c"]]
    assert specs[1]["input_shape"] == (1, 8, 8, 8) and specs[1]["shape"] == "1x8x8x8 -> 8 k3x3 s1 p1 g1"


def test_conv_table_rows_and_disk_cache(tmp_path):
    from fxscale.hw.base import TimingProtocol
    proto = TimingProtocol(warmup=1, runs=6, batch=None, statistic="median", rounds=3)
    gm, x = fx.symbolic_trace(TwoConvs()), torch.randn(1, 3, 8, 8)
    rows = conv_table(gm, x, backends=["torch_default", "channels_last", "ort"], protocol=proto, cache_dir=tmp_path)
    assert len(rows) == 2 and not any(r["cached"] for r in rows)
    for r in rows:
        assert set(r["impl"]) == {"torch_default", "channels_last", "ort"} and r["fastest"] in r["impl"]
        base = r["impl"]["torch_default"]
        assert base["ratio"] == 1.0 and base["ms"] > 0
        assert all(v["ratio_lo"] <= v["ratio"] <= v["ratio_hi"] for v in r["impl"].values())
        assert math.isclose(r["speedup"], base["ms"] / r["impl"][r["fastest"]]["ms"])
    again = conv_table(gm, x, backends=["torch_default", "channels_last", "ort"], protocol=proto, cache_dir=tmp_path)
    assert all(r["cached"] for r in again) and [r["impl"] for r in again] == [r["impl"] for r in rows]
    md = table_markdown(rows, "TwoConvs")
    assert "1x8x8x8 -> 8 k3x3 s1 p1 g1" in md and "torch_default" in md


def test_conv_table_unknown_implementation():
    with pytest.raises(BackendError, match="unknown conv-table implementation 'cudnn'; valid: torch_default"):
        conv_table(fx.symbolic_trace(TwoConvs()), torch.randn(1, 3, 8, 8), backends=["cudnn"])


class FunctionalConvs(nn.Module):
    """timm-style convs the table must see: a weight-standardised F.conv2d and a torch.conv2d on a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.std = nn.Conv2d(3, 8, 3, padding=1)
        self.w = nn.Parameter(torch.randn(4, 8, 1, 1))

    def forward(self, x):
        w = self.std.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        x = torch.nn.functional.conv2d(x, w, self.std.bias, 1, 1)
        return torch.conv2d(x, self.w, None, 2)


def test_conv_specs_include_functional_convs():
    net = FunctionalConvs()
    specs = conv_specs(fx.symbolic_trace(net), torch.randn(1, 3, 16, 16))
    assert [s["shape"] for s in specs] == ["1x3x16x16 -> 8 k3x3 s1 p1 g1", "1x8x16x16 -> 4 k1x1 s2 p0 g1"]
    assert [s["layers"] for s in specs] == [["conv2d"], ["conv2d_1"]]
    last = specs[1]["module"]
    assert torch.equal(last.weight, net.w) and last.bias is None and last(torch.randn(1, 8, 16, 16)).shape == (1, 4, 8, 8)


def test_tvm_search_time_is_cut_to_the_shared_tuning_clock():
    import time
    be = create_backend("tvm", trials=4, time_budget_s=100.0)
    assert be._time_budget() == 100.0
    be.tuning_deadline = time.monotonic() + 30.0
    assert 0 < be._time_budget() <= 30.0
    be.tuning_deadline = time.monotonic() - 1.0
    assert be._time_budget() == 0.0
    assert create_backend("tvm", trials=4).tuning_deadline is None


# ------------------------------------------------------------------------------------------------ TVM tuning
@pytest.mark.slow
@pytest.mark.skipif("tvm" not in AVAILABLE, reason="apache-tvm is not installed")
@pytest.mark.timeout(1800)
def test_tvm_metaschedule_tunes_caches_and_reuses(tmp_path):
    gm, inputs = _case("conv_bn_relu")
    settings = {"trials": 4, "trials_per_iter": 4, "population": 16, "cache_dir": tmp_path}
    be = create_backend("tvm", **settings)
    fn = be.compile(gm, inputs)
    torch.testing.assert_close(fn(*inputs), gm(*inputs), rtol=0, atol=1e-4)
    assert be.last_tuning["tuned"] and not be.last_tuning["reused"]
    (records,) = tmp_path.glob("ms-*/database_tuning_record.json")
    run_secs = [s for line in records.read_text().splitlines() if line.strip()
                for s in (json.loads(line)[1][1] or [])]
    assert any(0.0 < s < 1e9 for s in run_secs)  # candidates built and ran (MetaSchedule logs failures as 1e10 s)
    again = create_backend("tvm", **settings)
    again.compile(gm, inputs)
    assert again.last_tuning["reused"] == be.last_tuning["tuned"] and not again.last_tuning["tuned"]


def test_tvm_ffi_version_parsing():
    from fxscale.optimize.backends.tvm_tune import _version
    assert _version("0.1.15.post2") == (0, 1, 15) and _version("0.27.0.post1") == (0, 27, 0)
    assert _version("0.1.14.post1") < (0, 1, 15) <= _version("0.1.15")


@pytest.mark.slow
@pytest.mark.skipif("tvm" not in AVAILABLE, reason="apache-tvm is not installed")
def test_tvm_tuning_failure_in_the_child_is_a_backend_error(tmp_path):
    from fxscale.optimize.backends.tvm_tune import tune_in_subprocess
    gm, inputs = _case("linear")
    with pytest.raises(BackendError, match=r"MetaSchedule tuning failed in its child process \(exit 1\)"):
        tune_in_subprocess(gm, inputs, "not a target", trials=1, cache_dir=tmp_path, time_budget_s=None,
                           trials_per_iter=1, seed=0, threads=1, population=8, timeout_s=600)
