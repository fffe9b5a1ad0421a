"""The op table: every key of every row runs in a micro-net through analyze -> grow -> cost, and the facts a
row declares (f(0) == 0, identity for values, binary arithmetic) hold numerically."""
from __future__ import annotations

import operator
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxscale
from fxscale.ops import ROWS, KernelKind, get_op, list_ops, module_row

torch.set_num_threads(1)

# Keys that cannot stand in a micro-net by themselves, with the reason.
EXCLUDED: dict[Any, str] = {
    torch._assert: "returns None; an assertion, not a tensor op",
    operator.floordiv: "int arithmetic on sizes",
    operator.eq: "int comparison on sizes",
    len: "int on sizes",
    getattr: "x.shape: exercised by every reshape that reads a size (test_core)",
    "size": "x.size(d): exercised by reshape tests (test_core)",
    "dim": "returns an int",
    "type": "x.type(dtype): same rule as 'to'; fx records the dtype as a string",
    "window_attention": "torchvision Swin's fused window attention needs a Swin block: costed in test_cost (swin_t)",
}
for _f in fxscale.ops.get_op("window_attention").keys:
    EXCLUDED[_f] = EXCLUDED["window_attention"]

A = lambda x, y: x  # noqa: E731
# Per-key calls for functions and methods: (x, y) are two [2, 8, 6, 6] tensors from separate convs.
CALLS: dict[Any, Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]] = {
    "binary": lambda x, y, f: f(x, y),
    torch.where: lambda x, y, f: f(x > 0, x, y),
    "where": lambda x, y, f: x.where(x > 0, y),
    "masked_fill": lambda x, y, f: x.masked_fill(y > 0, 0.0),
    torch.clamp: lambda x, y, f: f(x, min=y),
    operator.pow: lambda x, y, f: f(x.abs() + 1, y),
    torch.pow: lambda x, y, f: f(x.abs() + 1, y),
    "pow": lambda x, y, f: (x.abs() + 1).pow(y),
    "expand_as": lambda x, y, f: x.mean((2, 3), keepdim=True).expand_as(y),
    "unary": lambda x, y, f: f(x),
    F.softmax: lambda x, y, f: f(x, dim=-1), F.log_softmax: lambda x, y, f: f(x, dim=-1),
    torch.softmax: lambda x, y, f: f(x, -1), "softmax": lambda x, y, f: x.softmax(-1),
    F.dropout: lambda x, y, f: f(x, training=False), F.dropout2d: lambda x, y, f: f(x, training=False),
    "to": lambda x, y, f: x.to(torch.float32), "type_as": lambda x, y, f: x.type_as(y),
    "half": lambda x, y, f: x.half().float(), "bfloat16": lambda x, y, f: x.bfloat16().float(),
    "pool": lambda x, y, f: f(x, 2) if "adaptive" not in f.__name__ else f(x, 3),
    F.max_pool1d: lambda x, y, f: f(x.flatten(2), 2).unflatten(2, (3, 6)),
    F.avg_pool1d: lambda x, y, f: f(x.flatten(2), 2).unflatten(2, (3, 6)),
    F.adaptive_avg_pool1d: lambda x, y, f: f(x.flatten(2), 18).unflatten(2, (3, 6)),
    F.max_pool3d: lambda x, y, f: f(x.unsqueeze(2), (1, 2, 2)).squeeze(2),
    F.avg_pool3d: lambda x, y, f: f(x.unsqueeze(2), (1, 2, 2)).squeeze(2),
    F.adaptive_avg_pool3d: lambda x, y, f: f(x.unsqueeze(2), (1, 3, 3)).squeeze(2),
    F.interpolate: lambda x, y, f: f(x, scale_factor=2.0, mode="nearest"),
    F.pad: lambda x, y, f: f(x, (1, 1, 1, 1)),
    operator.getitem: lambda x, y, f: x[:, :, 1:5],
    torch.flatten: lambda x, y, f: f(x, 2).unflatten(2, (6, 6)),
    torch.reshape: lambda x, y, f: f(x, (2, 8, 36)).unflatten(2, (6, 6)),
    torch.squeeze: lambda x, y, f: f(x.unsqueeze(2), 2), torch.unsqueeze: lambda x, y, f: f(x, 2).squeeze(2),
    torch.permute: lambda x, y, f: f(x, (0, 1, 3, 2)),
    torch.transpose: lambda x, y, f: f(x, 2, 3), torch.swapaxes: lambda x, y, f: f(x, 2, 3),
    torch.movedim: lambda x, y, f: f(x, 3, 2),
    torch.cat: lambda x, y, f: f([x, y], 1), torch.concat: lambda x, y, f: f([x, y], 1),
    torch.stack: lambda x, y, f: f([x, y], 1).sum(1),
    torch.split: lambda x, y, f: torch.cat(f(x, 4, 1), 1), torch.chunk: lambda x, y, f: torch.cat(f(x, 2, 1), 1),
    torch.unbind: lambda x, y, f: torch.stack(f(x, 2), 2),
    torch.mean: lambda x, y, f: f(x, (2, 3), keepdim=True) + y, torch.sum: lambda x, y, f: f(x, 3, keepdim=True) + y,
    torch.amax: lambda x, y, f: f(x, 2, keepdim=True) + y,
    "reduce_m": lambda x, y, f: getattr(x, f)((2, 3), keepdim=True) + y,
    torch.matmul: lambda x, y, f: f(x, y.transpose(2, 3)), operator.matmul: lambda x, y, f: f(x, y.transpose(2, 3)),
    "matmul": lambda x, y, f: x.matmul(y.transpose(2, 3)),
    fxscale.ops.get_op("stochastic_depth").keys[0]: lambda x, y, f: f(x, 0.5, "row", False),
    F.layer_norm: lambda x, y, f: f(x.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2),
    "method": lambda x, y, f: getattr(x, f)(),
    "binary_m": lambda x, y, f: getattr(x, f)(y),
    "clamp_max": lambda x, y, f: x.clamp_max(y), "clamp": lambda x, y, f: x.clamp(min=y),
    "view": lambda x, y, f: x.view(2, 8, 36).view(2, 8, 6, 6),
    "reshape": lambda x, y, f: x.reshape(2, 8, 36).reshape(2, 8, 6, 6),
    "flatten": lambda x, y, f: x.flatten(2).unflatten(2, (6, 6)),
    "squeeze": lambda x, y, f: x.unsqueeze(2).squeeze(2), "unsqueeze": lambda x, y, f: x.unsqueeze(2).squeeze(2),
    "permute": lambda x, y, f: x.permute(0, 1, 3, 2), "transpose": lambda x, y, f: x.transpose(2, 3),
    "swapaxes": lambda x, y, f: x.swapaxes(2, 3), "movedim": lambda x, y, f: x.movedim(3, 2),
    "split": lambda x, y, f: torch.cat(x.split(4, 1), 1), "chunk": lambda x, y, f: torch.cat(x.chunk(2, 1), 1),
    "unbind": lambda x, y, f: torch.stack(x.unbind(2), 2),
    "expand": lambda x, y, f: x[:, :, :1].expand(2, 8, 6, 6), "repeat": lambda x, y, f: x[:, :, :1].repeat(1, 1, 6, 1),
    F.linear: lambda x, y, f: f(x, torch.ones(6, 6)),
    F.conv2d: lambda x, y, f: f(x, torch.ones(8, 8, 1, 1)),
    F.conv1d: lambda x, y, f: f(x.flatten(2), torch.ones(8, 8, 1)).unflatten(2, (6, 6)),
    F.conv3d: lambda x, y, f: f(x.unsqueeze(2), torch.ones(8, 8, 1, 1, 1)).squeeze(2),
    F.scaled_dot_product_attention: lambda x, y, f: f(x, y, y),
    torch.einsum: lambda x, y, f: f("bchw,bcvw->bchv", x, y),
    torch.mm: lambda x, y, f: f(x.flatten(1), torch.ones(288, 288)).view(2, 8, 6, 6),
    torch.bmm: lambda x, y, f: f(x.flatten(2), torch.ones(2, 36, 36)).view(2, 8, 6, 6),
    F.batch_norm: lambda x, y, f: f(x, y.mean((0, 2, 3)), y.var((0, 2, 3)) + 1, y.mean((0, 2, 3)), None),
    F.group_norm: lambda x, y, f: f(x, 2, y.mean((0, 2, 3)), None),
    torch.addcmul: lambda x, y, f: f(x, x, y, value=0.5),
    "addcmul": lambda x, y, f: x.addcmul(x, y), "addcmul_": lambda x, y, f: (x + 0).addcmul_(x, y),
    "reshape_as": lambda x, y, f: x.reshape(2, 8, 36).reshape_as(y),
    "view_as": lambda x, y, f: x.reshape(2, 8, 36).view_as(y),
    torch.norm: lambda x, y, f: f(x, 2, (2, 3), True) + y, "norm": lambda x, y, f: x.norm(2, (2, 3), True) + y,
    torch.linalg.vector_norm: lambda x, y, f: f(x, 2, (2, 3), True) + y,
    "pow_": lambda x, y, f: (x.abs() + 1).pow_(y), "masked_fill_": lambda x, y, f: (x + 0).masked_fill_(y > 0, 0.0),
    "clamp_": lambda x, y, f: (x + 0).clamp_(min=y), "clamp_min_": lambda x, y, f: (x + 0).clamp_min_(y),
    "clamp_max_": lambda x, y, f: (x + 0).clamp_max_(y), "sqrt_": lambda x, y, f: (x.abs() + 0).sqrt_(),
}


def _call_for(row, key) -> Callable:
    for k in (key, row.name):
        if k in CALLS:
            return CALLS[k]
    if row.form == "method":
        if row.arith is not None:
            return CALLS["binary_m"]
        if row.name == "reduce_m":
            return CALLS["reduce_m"]
        return CALLS["method"]
    if row.arith is not None:
        return CALLS["binary"]
    if row.name in ("pool",):
        return CALLS["pool"]
    return CALLS["unary"]


class FnNet(nn.Module):
    def __init__(self, key: Any, call: Callable) -> None:
        super().__init__()
        self.key, self.call = key, call
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        with torch.no_grad():  # the head takes whatever channel count the op produces
            c = call(torch.randn(2, 8, 6, 6), torch.randn(2, 8, 6, 6), key).shape[1]
        self.h = nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.call(self.a(x), self.b(x), self.key)
        return self.h(z)


MODULES: dict[type, Callable[[], nn.Module]] = {
    nn.Conv1d: lambda: _Reshaped(nn.Conv1d(8, 8, 3, padding=1), 1), nn.Conv2d: lambda: nn.Conv2d(8, 8, 3, padding=1),
    nn.Conv3d: lambda: _Reshaped(nn.Conv3d(8, 8, 1), 3), nn.Dropout1d: lambda: _Reshaped(nn.Dropout1d(), 1),
    nn.Dropout3d: lambda: _Reshaped(nn.Dropout3d(), 3),
    nn.ConvTranspose1d: lambda: _Reshaped(nn.ConvTranspose1d(8, 8, 1), 1),
    nn.ConvTranspose2d: lambda: nn.ConvTranspose2d(8, 8, 1), nn.ConvTranspose3d: lambda: _Reshaped(nn.ConvTranspose3d(8, 8, 1), 3),
    nn.Linear: lambda: _Last(nn.Linear(8, 8)), nn.LayerNorm: lambda: _Last(nn.LayerNorm(8)),
    nn.MultiheadAttention: lambda: _Attn(), nn.GroupNorm: lambda: nn.GroupNorm(2, 8),
    nn.BatchNorm1d: lambda: _Reshaped(nn.BatchNorm1d(8), 1), nn.BatchNorm3d: lambda: _Reshaped(nn.BatchNorm3d(8), 3),
    nn.InstanceNorm1d: lambda: _Reshaped(nn.InstanceNorm1d(8), 1),
    nn.InstanceNorm3d: lambda: _Reshaped(nn.InstanceNorm3d(8), 3),
    nn.BatchNorm2d: lambda: nn.BatchNorm2d(8), nn.InstanceNorm2d: lambda: nn.InstanceNorm2d(8, affine=True),
    nn.SyncBatchNorm: lambda: nn.SyncBatchNorm(8), nn.Flatten: lambda: _Flat(), nn.Softmax: lambda: nn.Softmax(-1),
    nn.LogSoftmax: lambda: nn.LogSoftmax(-1), nn.PReLU: lambda: nn.PReLU(8),
    nn.MaxPool1d: lambda: _Reshaped(nn.MaxPool1d(1), 1), nn.AvgPool1d: lambda: _Reshaped(nn.AvgPool1d(1), 1),
    nn.AdaptiveAvgPool1d: lambda: _Reshaped(nn.AdaptiveAvgPool1d(36), 1),
    nn.AdaptiveMaxPool1d: lambda: _Reshaped(nn.AdaptiveMaxPool1d(36), 1),
    nn.MaxPool3d: lambda: _Reshaped(nn.MaxPool3d(1), 3), nn.AvgPool3d: lambda: _Reshaped(nn.AvgPool3d(1), 3),
    nn.AdaptiveAvgPool3d: lambda: _Reshaped(nn.AdaptiveAvgPool3d((1, 6, 6)), 3),
    nn.MaxPool2d: lambda: nn.MaxPool2d(2), nn.AvgPool2d: lambda: nn.AvgPool2d(2),
    nn.AdaptiveAvgPool2d: lambda: nn.AdaptiveAvgPool2d(3), nn.AdaptiveMaxPool2d: lambda: nn.AdaptiveMaxPool2d(3),
    nn.Upsample: lambda: nn.Upsample(scale_factor=2.0), nn.UpsamplingBilinear2d: lambda: nn.UpsamplingBilinear2d(scale_factor=2.0),
    nn.UpsamplingNearest2d: lambda: nn.UpsamplingNearest2d(scale_factor=2.0), nn.ZeroPad2d: lambda: nn.ZeroPad2d(1),
    nn.ConstantPad2d: lambda: nn.ConstantPad2d(1, 0.5), nn.ReflectionPad2d: lambda: nn.ReflectionPad2d(1),
    nn.ReplicationPad2d: lambda: nn.ReplicationPad2d(1),
}
MODULE_EXCLUDED = {nn.SyncBatchNorm: "needs a process group in eval? runs as BatchNorm; covered by batchnorm row"}
for _k in get_op("conv_same").keys + get_op("std_conv_same").keys + get_op("pool_same").keys:
    MODULE_EXCLUDED[_k] = "a timm class named by import path (timm is optional): run in tests/test_rules_timm.py"


class _Reshaped(nn.Module):
    """Runs an N-d module on [2, 8, 6, 6] by flattening (1-d) or unsqueezing (3-d) the spatial dims."""

    def __init__(self, m: nn.Module, nd: int) -> None:
        super().__init__()
        self.m, self.nd = m, nd

    def forward(self, x):
        if self.nd == 1:
            return self.m(x.flatten(2)).unflatten(2, (6, 6))
        return self.m(x.unsqueeze(2)).squeeze(2)


class _Last(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Flat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.m = nn.Flatten(2)

    def forward(self, x):
        return self.m(x).unflatten(2, (6, 6))


class _Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.m = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        t = x.flatten(2).transpose(1, 2)
        return self.m(t, t, t, need_weights=False)[0].transpose(1, 2).unflatten(2, (6, 6))


class ModNet(nn.Module):
    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.a, self.m, self.h = nn.Conv2d(3, 8, 1), m, nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.h(self.m(self.a(x)))


def _cases() -> list:
    out = []
    for row in ROWS:
        for key in row.keys:
            if key in EXCLUDED or key in MODULE_EXCLUDED:
                continue
            name = getattr(key, "__name__", str(key))
            out.append(pytest.param(row, key, id=f"{row.name}:{name}"))
    return out


def _model(row, key) -> nn.Module:
    if row.form == "module":
        return ModNet(MODULES.get(key, key)())
    return FnNet(key, _call_for(row, key))


@pytest.mark.parametrize("row,key", _cases())
def test_every_key_analyses_grows_and_costs(row, key):
    torch.manual_seed(0)
    model, x = _model(row, key).eval(), torch.randn(2, 3, 6, 6)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    assert not [n for n in cg.ctx.notes if "rule failed" in n], cg.ctx.notes
    if row.form == "module":  # the module is looked up by its own row
        mods = [m for m in gm.modules() if type(m) is key]
        assert mods and all(module_row(m) is row for m in mods)
    plan = fxscale.ScalingPlan(widths={g.name: 2 * g.width for g in cg.scalable})
    new = fxscale.transform(gm, plan, init="reinit")  # every plan that validates transforms and verifies
    rep = fxscale.cost(cg, plan)
    assert rep.params == sum(p.numel() for p in new.parameters())
    kinds = {KernelKind.parse(layer.kind) for layer in rep.layers}
    assert all(isinstance(k, KernelKind) for k in kinds)
    if row.cost is not None and row.rule is not fxscale.ops.UNKNOWN.rule:
        assert any(k.has_macs for k in kinds)


def test_rows_without_rule_freeze_what_they_touch():
    model = FnNet(F.conv2d, CALLS[F.conv2d]).eval()
    cg = fxscale.analyze(fxscale.trace(model, torch.randn(2, 3, 6, 6)))
    assert not cg.by_name["a"].scalable and "conv2d" in cg.by_name["a"].reason


@pytest.mark.parametrize("row", [r for r in ROWS if r.zero and r.form != "module"], ids=lambda r: r.name)
def test_zero_rows_map_zero_to_zero(row):
    for key in row.keys:
        if key in EXCLUDED:
            continue
        z = torch.zeros(2, 8, 6, 6)
        out = _call_for(row, key)(z, z, key)
        assert torch.count_nonzero(out) == 0, f"{row.name}:{key} claims f(0) == 0"


@pytest.mark.parametrize("row", [r for r in ROWS if r.zero and r.form == "module"], ids=lambda r: r.name)
def test_zero_module_rows_map_zero_to_zero(row):
    for key in row.keys:
        m = MODULES.get(key, key)().eval()
        assert torch.count_nonzero(m(torch.zeros(2, 8, 6, 6))) == 0, f"{key.__name__} claims f(0) == 0"


@pytest.mark.parametrize("row", [r for r in ROWS if r.layout], ids=lambda r: r.name)
def test_layout_rows_only_move_values(row):
    x = torch.randn(2, 8, 6, 6)
    for key in row.keys:
        if key in EXCLUDED:
            continue
        if row.form == "module":
            out = MODULES.get(key, key)().eval()(x)
        else:
            out = _call_for(row, key)(x, x, key)
        if key in ("half", "bfloat16"):  # shape-identical casts that round to a narrower dtype
            assert out.shape == x.shape and torch.allclose(out, x, rtol=1e-2, atol=1e-2)
            continue
        assert set(out.flatten().tolist()) <= set(x.flatten().tolist()), f"{row.name}:{key} is not a pure layout op"


def test_every_key_is_in_one_row_and_lookups_work():
    seen: dict[Any, str] = {}
    for row in ROWS:
        for key in row.keys:
            assert (row.form, key) not in seen, f"{key} in {seen.get((row.form, key))} and {row.name}"
            seen[(row.form, key)] = row.name
    assert list_ops("conv*")[:2] == ["conv", "conv_transpose"]
    assert get_op("add").arith == "add" and get_op("add_m").keys[-1] == "add_"
    with pytest.raises(KeyError, match="no op row 'nope'"):
        get_op("nope")


def test_kernel_kind_round_trips():
    for text in ("conv_k3", "dwconv_k5", "gconv_k1", "convT", "norm", "elementwise", "view"):
        assert str(KernelKind.parse(text)) == text
    assert KernelKind.parse("dwconv_k3").is_conv and not KernelKind.parse("norm").has_macs
