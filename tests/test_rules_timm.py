"""Rules for the constructs timm models trace into (project issue 9), on small torch-only nets: functional
conv/linear/batch_norm/group_norm with parameter weights, weight standardisation, channel slices with literal
bounds, explicit attention, reshape_as, addcmul, concrete forward arguments, autowrapped functions and the
cost warning for leaf modules without a formula. The timm leaf rows (Conv2dSame, StdConv2dSame, MaxPool2dSame)
run at the end, skipped without timm."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import random_widths, rel_err
from torch import nn

import fxscale

torch.set_num_threads(1)


def _grow_exact(model: nn.Module, x: torch.Tensor, uniform: bool = False, seed: int = 0) -> fxscale.ChannelGraph:
    """Trace, analyze, grow every scalable group (x2, or x1..x2 at random) with init="preserve": exact to 1e-5; a
    random x0.5..x2 plan with init="prune" transforms and verifies. Returns the ChannelGraph."""
    gm = fxscale.trace(model.eval(), x)
    cg = fxscale.analyze(gm)
    widths = {g.name: 2 * g.width for g in cg.scalable} if uniform else random_widths(cg, 1.0, 2.0, seed)
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths=widths), init="preserve", cg=cg)
    with torch.no_grad():
        assert rel_err(gm(x), new(x)) <= 1e-5, cg.table()
        other = fxscale.transform(gm, fxscale.ScalingPlan(widths=random_widths(cg, 0.5, 2.0, seed + 1)), "prune")
        assert other(x).shape == gm(x).shape
    return cg


def _by_producer(cg: fxscale.ChannelGraph) -> dict:
    return {p: g for g in cg.groups for p in g.producers}


class FunctionalNet(nn.Module):
    """Parameters used through F.conv2d / F.batch_norm / F.group_norm / F.linear (what fx records inside timm's
    BatchNormAct2d and friends), a blur-pool style depthwise F.conv2d with a fixed buffer, and addcmul."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3), nn.Parameter(torch.randn(8) * 0.1)
        self.g, self.beta = nn.Parameter(torch.rand(8) + 0.5), nn.Parameter(torch.randn(8) * 0.1)
        self.register_buffer("mean", torch.randn(8) * 0.1)
        self.register_buffer("var", torch.rand(8) + 0.5)
        self.register_buffer("blur", torch.tensor([1.0, 2.0, 1.0]).outer(torch.tensor([1.0, 2.0, 1.0])).div(16)
                             .expand(8, 1, 3, 3).clone())
        self.w2 = nn.Parameter(torch.randn(12, 8, 1, 1) * 0.3)
        self.gn_w, self.gn_b = nn.Parameter(torch.rand(12) + 0.5), nn.Parameter(torch.randn(12) * 0.1)
        self.alpha, self.shift = nn.Parameter(torch.rand(1, 12, 1, 1) + 0.5), nn.Parameter(torch.randn(1, 12, 1, 1))
        self.fc_w, self.fc_b = nn.Parameter(torch.randn(5, 12) * 0.3), nn.Parameter(torch.randn(5) * 0.1)

    def forward(self, x):
        x = F.conv2d(x, self.w1, self.b1, padding=1)
        x = F.relu(F.batch_norm(x, self.mean, self.var, self.g, self.beta, False, 0.1, 1e-5))
        x = F.conv2d(x, self.blur, stride=2, padding=1, groups=8)
        x = F.group_norm(F.conv2d(x, self.w2), 4, self.gn_w, self.gn_b)
        x = torch.addcmul(self.shift, self.alpha, x)
        return F.linear(x.mean((2, 3)), self.fc_w, self.fc_b)


def test_functional_ops_with_parameters_are_producers_and_followers():
    model, x = FunctionalNet().eval(), torch.randn(2, 3, 8, 8)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    groups = _by_producer(cg)
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths={"w1": 13}), init="preserve", cg=cg)
    with torch.no_grad():  # (growing w2 is close, not exact: GroupNorm statistics span it)
        assert rel_err(model(x), new(x)) <= 1e-5
        for init in ("preserve", "prune", "reinit"):
            plan = fxscale.ScalingPlan(widths=random_widths(cg, 0.5, 2.0, 3))
            assert fxscale.transform(gm, plan, init=init, cg=cg)(x).shape == (2, 5)
    assert groups["w1"].scalable and groups["w1"].name == "w1"
    assert groups["w2"].scalable and groups["w2"].divisor == 4  # F.group_norm keeps num_groups dividing it
    assert not groups["fc_w"].scalable  # the network output
    assert {"g", "beta", "mean", "var", "blur", "b1"} <= set(groups["w1"].followers)


def test_depthwise_literal_groups_are_rewritten():
    model, x = FunctionalNet().eval(), torch.randn(1, 3, 8, 8)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths={"w1": 11}), init="preserve", cg=cg)
    conv = [n for n in new.graph.nodes if n.target is F.conv2d and n.kwargs.get("groups") is not None]
    assert conv and conv[0].kwargs["groups"] == 11
    with torch.no_grad():
        assert rel_err(model(x), new(x)) <= 1e-5


class StdConv(nn.Conv2d):
    """timm's StdConv2d: the weight is standardised per output channel (over input channels and kernel)."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class WSNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = StdConv(3, 8, 3, padding=1), StdConv(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def test_weight_standardisation_fixes_the_input_channels_only():
    cg = _grow_exact(WSNet(), torch.randn(1, 3, 8, 8))
    groups = _by_producer(cg)
    assert not groups["a"].scalable and "weight standardisation" in groups["a"].reason  # read by b's StdConv
    assert groups["b"].scalable  # its rows are standardised one by one: output channels may change


class GhostSlice(nn.Module):
    """GhostNet's module: cat([x1, cheap(x1)])[:, :out_chs], plus negative and offset slices of a channel dim."""

    def __init__(self, out_chs: int = 7) -> None:
        super().__init__()
        init = math.ceil(out_chs / 2)
        self.out_chs = out_chs
        self.primary, self.cheap = nn.Conv2d(3, init, 1), nn.Conv2d(init, init, 3, padding=1, groups=init)
        self.c = nn.Conv2d(3, 10, 1)
        self.head = nn.Conv2d(out_chs + 10 - 3 - 2, 2, 1)

    def forward(self, x):
        x1 = self.primary(x)
        out = torch.cat([x1, self.cheap(x1)], dim=1)[:, :self.out_chs]
        y = self.c(x)
        return self.head(torch.cat([out, y[:, 3:-2]], 1))


def test_channel_slices_with_literals_are_cut_and_rewritten():
    model, x = GhostSlice().eval(), torch.randn(1, 3, 6, 6)
    cg = _grow_exact(model, x)
    assert any(g.scalable for g in cg.groups if "primary" in g.name), cg.table()
    assert any(g.scalable for g in cg.groups if g.producers == ["c"]), cg.table()
    gm = fxscale.trace(model, x)
    grow = {g.name: g.width + g.divisor for g in cg.scalable}
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths=grow), init="preserve")
    with torch.no_grad():
        assert rel_err(model(x), new(x)) <= 1e-5
    bounds = [n.args[1][1] for n in new.graph.nodes if n.op == "call_function" and "getitem" in n.name
              and isinstance(n.args[1], tuple) and isinstance(n.args[1][1], slice)]
    assert bounds and all(s.stop is not None for s in bounds)


def test_stepped_and_int_channel_indexing_freezes_the_source():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.h = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.h(self.a(x)[:, ::2]) + self.b(x)[:, 0:1]

    cg = fxscale.analyze(fxscale.trace(Net().eval(), torch.randn(1, 3, 4, 4)))
    groups = _by_producer(cg)
    assert not groups["a"].scalable and "slice" in groups["a"].reason
    assert groups["b"].scalable  # b[:, 0:1] cuts one channel off: the rest may change


class ExplicitAttention(nn.Module):
    """q @ k^T with a constant scale (timm's non-fused attention), and F.scaled_dot_product_attention."""

    def __init__(self, dim: int = 12, heads: int = 2, fused: bool = False) -> None:
        super().__init__()
        self.heads, self.fused, self.scale = heads, fused, (dim // heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = ((q @ k.transpose(-2, -1)) * self.scale).softmax(-1) @ v
        return x + self.proj(y.transpose(1, 2).reshape(b, n, c))


class TokenNet(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.embed, self.attn, self.head = nn.Conv2d(3, 12, 2, 2), ExplicitAttention(fused=fused), nn.Linear(12, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(t).mean(1))


@pytest.mark.parametrize("fused", [False, True], ids=["q@kT", "sdpa"])
def test_attention_head_dim_grows_exactly(fused):
    torch.manual_seed(0)
    model, x = TokenNet(fused).eval(), torch.randn(2, 3, 8, 8)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    (embed,) = [g for g in cg.scalable if "attn.qkv" in g.producers]  # the head dims are embed / heads
    assert embed.divisor == 2, cg.table()
    for widths in ({embed.name: 16}, {g.name: 2 * g.width for g in cg.scalable}):
        new = fxscale.transform(gm, fxscale.ScalingPlan(widths=widths), init="preserve", cg=cg)
        with torch.no_grad():
            assert rel_err(model(x), new(x)) <= 1e-5


def test_reshape_as_follows_its_target():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.h = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.b(x)
            return self.h(self.a(x).flatten(2).reshape_as(y) * y)

    cg = _grow_exact(Net(), torch.randn(1, 3, 4, 4))
    groups = _by_producer(cg)
    assert groups["a"] is groups["b"] and groups["a"].scalable


def test_extra_forward_arguments_are_concrete():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.h = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x, attn_mask=None, is_causal: bool = False, *, scale: float = 1.0):
            y = self.a(x) * scale
            if attn_mask is not None:
                y = y + attn_mask
            return self.h(y.relu() if not is_causal else y)

    model, x = Net().eval(), torch.randn(1, 3, 4, 4)
    gm = fxscale.trace(model, x)
    assert [n.name for n in gm.graph.nodes if n.op == "placeholder"] == ["x"]
    assert not [n for n in gm.graph.nodes if n.target is torch._assert]
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths={"a": 16}, resolution=(6, 6)), init="preserve")
    assert new(torch.randn(1, 3, 6, 6)).shape == (1, 2, 4, 4)  # resize mode: back to the traced size
    with pytest.raises(TypeError):  # a concrete argument is fixed: the graph no longer takes it
        gm(x, torch.ones(1))
    assert fxscale.trace(model, x, concrete_args={"is_causal": True})(x).shape == (1, 2, 4, 4)


def untraceable_fn(x):
    return x * 2 if x.sum() > 0 else x  # data-dependent control flow


def test_autowrap_functions_are_recorded_as_calls():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.h = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.h(untraceable_fn(self.a(x)))

    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(fxscale.TraceError, match="autowrap_functions"):
        fxscale.trace(Net().eval(), x)
    gm = fxscale.trace(Net().eval(), x, autowrap_functions=[untraceable_fn])
    assert any(n.target is untraceable_fn for n in gm.graph.nodes)
    assert gm.meta["fxscale"]["autowrap_functions"][:1] == (untraceable_fn,)
    cg = fxscale.analyze(gm)
    assert not _by_producer(cg)["a"].scalable  # no rule for the wrapped function: frozen, naming it
    assert "untraceable_fn" in _by_producer(cg)["a"].reason


def test_leaf_module_without_cost_formula_warns():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.c(x) * 2

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.o, self.h = Odd(), nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.h(self.o(x))

    class Fussy(Odd):  # cannot run on zeros of its input shape: no measured formula, so a loud warning
        def forward(self, x):
            if not bool(x.abs().sum() > 0):
                raise ValueError("all-zero input")
            return super().forward(x)

    class FussyNet(Net):
        def __init__(self) -> None:
            super().__init__()
            self.o = Fussy()

    x = torch.randn(1, 3, 8, 8)
    cg = fxscale.analyze(fxscale.trace(FussyNet().eval(), x, leaf_modules=[Fussy]))
    with pytest.warns(UserWarning, match="leaf module type Fussy has no cost formula"):
        rep = fxscale.cost(cg)
    assert rep.params == sum(p.numel() for p in Net().parameters())
    # a leaf that runs is costed by FlopCounterMode at its recorded input shapes, silently and exactly
    model = Net().eval()
    cg = fxscale.analyze(fxscale.trace(model, x, leaf_modules=[Odd]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = fxscale.cost(cg)
    from fxscale.cost import reference_flops
    assert rep.flops == reference_flops(model, x)
    assert rep.macs == 4 * 3 * 9 * 6 * 6 + 2 * 4 * 6 * 6


def test_leaf_subclass_with_its_own_forward_has_no_rule():
    class Doubled(nn.Conv2d):  # a Conv2d subclass computing something else: not a conv to the rules
        def forward(self, x):
            return super().forward(x).repeat(1, 2, 1, 1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.d, self.h = nn.Conv2d(3, 4, 1), Doubled(4, 4, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.h(self.d(self.a(x)))

    x = torch.randn(1, 3, 4, 4)
    gm = fxscale.trace(Net().eval(), x, leaf_modules=[Doubled])
    cg = fxscale.analyze(gm)
    assert not _by_producer(cg)["a"].scalable and "Doubled" in _by_producer(cg)["a"].reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        new = fxscale.transform(gm, fxscale.ScalingPlan(widths={g.name: 2 * g.width for g in cg.scalable}))
    assert new(x).shape == (1, 2, 4, 4)


# ---- timm leaf rows (timm's FX notrace modules that the op table knows by import path) ---------------------
def test_timm_same_padding_leaves():
    layers = pytest.importorskip("timm.layers", reason="timm is not installed (pip install timm)")
    from timm.layers.pool2d_same import MaxPool2dSame
    from timm.layers.std_conv import StdConv2dSame

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = layers.Conv2dSame(3, 8, 3, stride=2)
            self.dw = layers.Conv2dSame(8, 8, 3, groups=8)
            self.pool = MaxPool2dSame(3, 2)
            self.ws = StdConv2dSame(8, 6, 3)
            self.h = nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.h(self.ws(self.pool(self.dw(self.a(x)))))

    model, x = Net().eval(), torch.randn(1, 3, 15, 15)
    gm = fxscale.trace(model, x)
    leaves = {type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"}
    assert {"Conv2dSame", "MaxPool2dSame", "StdConv2dSame"} <= leaves
    cg = _grow_exact(model, x)
    groups = _by_producer(cg)
    assert not groups["a"].scalable and "weight standardisation" in groups["a"].reason
    assert groups["ws"].scalable
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fxscale.cost(cg)
    assert not [w for w in record if "no cost formula" in str(w.message)]
