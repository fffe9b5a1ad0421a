"""Regression tests: unknown layouts freeze every operand they touch; in-place binary ops tie their operands."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import fxscale

torch.set_num_threads(1)


class InplaceBinary(nn.Module):
    """z.add_(c(y)); z.mul_(sigmoid(y)): both in-place ops combine two channel spaces."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.h = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        z = self.b(y)
        z.add_(self.c(y))
        z.mul_(torch.sigmoid(y))
        return self.h(z)


class UnknownOperand(nn.Module):
    """An op without a channel rule (torch.erf) feeds one side of an add, a matmul and a mul."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = (nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1),
                                          nn.Conv2d(3, 8, 1))
        self.h, self.e = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = torch.special.erf(self.a(x))            # no rule: a's output layout becomes unknown
        s = self.b(x) + u                           # b must freeze: tied to an unknown operand
        m = torch.matmul(self.c(x), u)              # c must freeze: matmul with an unknown right side
        return self.h(s) + m.mean() + self.e(self.d(x))  # d stays scalable


def _uniform(cg, k=2):
    return fxscale.ScalingPlan(widths={g.name: g.width * k for g in cg.scalable})


def test_inplace_binary_ops_tie_their_operands():
    torch.manual_seed(0)
    model, x = InplaceBinary().eval(), torch.randn(2, 3, 8, 8)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    producers = {p for g in cg.groups for p in g.producers if g.name == "a"}
    assert {"a", "b", "c"} <= producers, cg.table()
    new = fxscale.transform(gm, _uniform(cg), init="preserve")
    with torch.no_grad():
        ref, got = model(x), new(x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


@pytest.mark.parametrize("method", ["add_", "sub_", "mul_", "div_"])
def test_every_inplace_binary_method_ties(method):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.h = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            z = self.a(x)
            getattr(z, method)(torch.sigmoid(self.b(x)) + 1)
            return self.h(z)

    x = torch.randn(1, 3, 4, 4)
    cg = fxscale.analyze(fxscale.trace(Net().eval(), x))
    (g,) = [g for g in cg.groups if "a" in g.producers]
    assert "b" in g.producers


def test_unknown_operand_freezes_every_side():
    model, x = UnknownOperand().eval(), torch.randn(1, 3, 8, 8)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    by_producer = {p: g for g in cg.groups for p in g.producers}
    for frozen in ("a", "b", "c"):
        g = by_producer[frozen]
        assert not g.scalable, f"{frozen} should be frozen: {cg.table()}"
        assert "node" in g.reason
    assert by_producer["b"].reason and "erf" in by_producer["a"].reason
    assert by_producer["d"].scalable
    new = fxscale.transform(gm, _uniform(cg), init="preserve")   # every plan that validates transforms
    with torch.no_grad():
        assert torch.allclose(new(x), model(x), atol=1e-5)


class OpaqueThenConv(nn.Module):
    """y = erf(a(x)) + b(x) freezes a and b; c after it is a fresh space and stays scalable."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c, self.h = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.special.erf(self.a(x)) + self.b(x)
        return self.h(torch.relu(self.c(y)))


def test_an_opaque_output_freezes_what_it_meets_but_not_what_follows():
    model, x = OpaqueThenConv().eval(), torch.randn(1, 3, 6, 6)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    by_producer = {p: g for g in cg.groups for p in g.producers}
    assert not by_producer["b"].scalable and "erf" in by_producer["b"].reason  # names the operand it met
    assert by_producer["c"].scalable
    new = fxscale.transform(gm, _uniform(cg), init="preserve")
    with torch.no_grad():
        assert torch.allclose(new(x), model(x), atol=1e-5)


class HeadsMatmul(nn.Module):
    """q @ k^T with a heads dim in the batch position: the two heads dims must be one space."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.h = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(5, 3)

    def forward(self, x):
        q = self.q(x).unflatten(-1, (2, 4)).transpose(1, 2)  # [B, heads, T, d]
        k = self.k(x).unflatten(-1, (2, 4)).transpose(1, 2)
        return self.h(q @ k.transpose(-2, -1)).sum(1)


def test_matmul_batch_dims_are_tied():
    model, x = HeadsMatmul().eval(), torch.randn(2, 5, 8)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    groups = {g.name: g for g in cg.groups}
    q_group = next(g for g in cg.groups if "q" in g.producers)
    assert "k" in q_group.producers or not q_group.scalable, cg.table()
    for g in cg.scalable:  # every plan that validates transforms and verifies
        new = fxscale.transform(gm, fxscale.ScalingPlan(widths={g.name: 2 * g.width}), init="reinit")
        assert new(x).shape == (2, 5, 3)
    assert groups


def test_string_annotations_are_resolved_so_the_graph_pickles():
    """A model module with `from __future__ import annotations` gives fx string node types; torch 2.13 cannot
    pickle a GraphModule whose generated code has a string global."""
    import io

    from fxscale import zoo
    gm = fxscale.trace(zoo.create_model("digits_resnet").eval(), torch.randn(1, 1, 8, 8))
    assert not any(isinstance(n.type, str) for n in gm.graph.nodes)
    buf = io.BytesIO()
    torch.save(gm, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=False)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def _zoo_timm():
    """benchmarks/zoo_timm.py (the timm sweep's stages), loaded from its path."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "zoo_timm.py"
    spec = importlib.util.spec_from_file_location("zoo_timm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("net", [InplaceBinary, UnknownOperand])
def test_sweep_finds_no_unsound_group_where_the_rules_hold(net):
    z = _zoo_timm()
    x = torch.randn(1, 3, 8, 8)
    gm = fxscale.trace(net().eval(), x)
    cg = fxscale.analyze(gm)
    assert z.unsound_groups(gm, cg, x, "t") == []


def test_sweep_names_a_group_wrongly_marked_scalable():
    """Control: a frozen group forced scalable validates, fails to transform, and is reported by name."""
    z = _zoo_timm()
    x = torch.randn(1, 3, 8, 8)
    gm = fxscale.trace(UnknownOperand().eval(), x)
    cg = fxscale.analyze(gm)
    frozen = [g for g in cg.groups if not g.scalable]
    for g in frozen:
        g.scalable = True
    bad = z.unsound_groups(gm, cg, x, "t", failed=[{g.name: 2 * g.width for g in frozen}])
    assert bad and set(bad) <= {g.name for g in frozen} | {b for b in bad if "+" in b}


class WindowAttention(nn.Module):
    """timm's window attention (DaViT, Swin): the head dim of qkv's reshape is ``C // heads`` with C read from the
    *input*'s shape, and the merge back uses C again. With ``embed`` the input width is a scalable channel space
    (C follows the plan); without it C is the fixed width of the network input."""

    def __init__(self, dim: int = 12, heads: int = 3, embed: bool = True) -> None:
        super().__init__()
        self.num_heads = heads
        self.embed = nn.Linear(dim, dim) if embed else nn.Identity()
        self.qkv, self.proj, self.head = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.head(self.proj(y.transpose(1, 2).reshape(B, N, C)) + x)


def _random_plans(cg, n: int, seed: int) -> list[dict[str, int]]:
    import random
    rng = random.Random(seed)
    plans = []
    for _ in range(n):
        subset = [g for g in cg.scalable if rng.random() < 0.5] or list(cg.scalable)
        plans.append({g.name: max(g.divisor, round(g.width * rng.uniform(0.5, 2.0) / g.divisor) * g.divisor)
                      for g in subset})
    return [p for p in plans if p]


@pytest.mark.parametrize("embed", [True, False])
def test_window_attention_head_dim_read_from_the_input_shape_is_sound(embed):
    """Every plan that validates transforms (prune and preserve); preserve is exact; where C is fixed qkv freezes
    with a reason naming the reshape whose size is read from the fixed dim."""
    torch.manual_seed(0)
    model, x = WindowAttention(embed=embed).eval(), torch.randn(2, 5, 12)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    qkv = next(g for g in cg.groups if "qkv" in g.producers)
    if embed:  # qkv's head dim is C // heads of the embedding: one size class with the embedding's parts
        assert qkv.scalable and "embed" in qkv.producers, cg.table()
    else:
        assert not qkv.scalable and "node reshape" in qkv.reason and "floordiv" in qkv.reason, cg.table()
    plans = _random_plans(cg, 4, seed=int(embed)) + [{g.name: 2 * g.width for g in cg.scalable}]
    checked = 0
    for widths in plans:
        plan = fxscale.ScalingPlan(widths=widths)
        try:
            plan.validate(cg)
        except fxscale.errors.PlanError:
            continue
        for init in ("prune", "preserve"):
            new = fxscale.transform(gm, plan, init, cg=cg)  # raises if verification fails
            with torch.no_grad():
                got, ref = new(x), model(x)
            assert got.shape == ref.shape
            if init == "preserve" and all(widths[g] >= cg[g].width for g in widths):
                assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5
        checked += 1
    assert checked >= 1


def test_window_attention_sweep_finds_no_unsound_group():
    z = _zoo_timm()
    for embed in (True, False):
        x = torch.randn(2, 5, 12)
        gm = fxscale.trace(WindowAttention(embed=embed).eval(), x)
        assert z.unsound_groups(gm, fxscale.analyze(gm), x, "w") == []


class ChannelsLastPad(nn.Module):
    """Swin/DaViT window padding: a channels-last tensor padded (0, 0, l, r, t, b) keeps its channel space; a pad
    that reaches the channel dim (``pad_channels``) freezes it, naming the pad node."""

    def __init__(self, pad_channels: bool = False) -> None:
        super().__init__()
        self.pad_channels = pad_channels
        self.a, self.b, self.h = nn.Conv2d(3, 8, 1), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x).permute(0, 2, 3, 1)                          # B H W C
        y = nn.functional.pad(y, (0, 1 if self.pad_channels else 0, 0, 1, 0, 1))
        return self.h(self.b(y) + y[..., :8] if not self.pad_channels else self.b(y[..., :8]))


@pytest.mark.parametrize("pad_channels", [False, True])
def test_channels_last_pad_keeps_the_channel_space_only_when_it_is_not_padded(pad_channels):
    torch.manual_seed(0)
    model, x = ChannelsLastPad(pad_channels).eval(), torch.randn(1, 3, 5, 5)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    a = next(g for g in cg.groups if "a" in g.producers)
    if pad_channels:
        assert not a.scalable and "node pad" in a.reason, cg.table()
    else:
        assert a.scalable and "b" in a.producers, cg.table()
    z = _zoo_timm()
    assert z.unsound_groups(gm, cg, x, "p") == []
    if cg.scalable:
        new = fxscale.transform(gm, _uniform(cg), init="preserve")
        with torch.no_grad():
            ref, got = model(x), new(x)
        assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-5


class FocalGates(nn.Module):
    """FocalNet's modulation: one linear gives q, ctx and per-level one-channel gates, each gate broadcast over
    the ctx channels (``ctx * gates[:, l:l+1]``)."""

    def __init__(self):
        super().__init__()
        self.f, self.dw, self.h = nn.Conv2d(3, 8 + 8 + 2, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        q, ctx, gates = torch.split(self.f(x), [8, 8, 2], 1)
        ctx = self.dw(ctx)
        out = ctx * gates[:, 0:1] + ctx.mean((2, 3), keepdim=True) * gates[:, 1:]
        return (q * self.h(out)).mean((2, 3))


def test_a_one_channel_label_broadcast_over_channels_is_frozen():
    x = torch.randn(1, 3, 8, 8)
    gm = fxscale.trace(FocalGates().eval(), x)
    cg = fxscale.analyze(gm)
    gates = [g for g in cg.groups if g.width == 1 and g.name.startswith("f[")]
    assert len(gates) == 2 and all(not g.scalable and "is broadcast over a dim of 8" in g.reason for g in gates)
    grow = {g.name: 2 * g.width for g in cg.scalable}
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths=grow), "preserve", cg=cg)
    with torch.no_grad():
        torch.testing.assert_close(new(x), gm(x), rtol=1e-5, atol=1e-6)
