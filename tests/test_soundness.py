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
