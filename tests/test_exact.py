"""ChannelGraph.preserve_exact: exactness of init="preserve" is claimed only where the op rules prove it, and every
claim holds (float64), over the construct nets, random plans and the cases that break it."""
from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from nets import NETS
from torch import nn

import fxscale

REL_TOL = 1e-6  # float64 forward; rebuilt weights (attention's rescaled queries) carry float32 rounding


def _rel_diff(gm, new, x) -> float:
    with torch.no_grad():
        ref = copy.deepcopy(gm).double()(x.double())
        got = copy.deepcopy(new).double()(x.double())
    ref, got = (t[0] if isinstance(t, (tuple, list)) else t for t in (ref, got))
    return float((got - ref).abs().max() / ref.abs().max())


def _plans(cg, seed: str):
    """Uniform x2 (whole multiples) and a random x1..x2 growth of every scalable group."""
    rng = random.Random(seed)
    yield {g.name: 2 * g.width for g in cg.scalable}
    yield {g.name: max(g.width, round(g.width * rng.uniform(1.0, 2.0) / g.divisor) * g.divisor) for g in cg.scalable}


# nets whose uniform x2 growth is not claimed, with the reason (each checked to be really inexact)
NOT_CLAIMED = {"group_norm": "GroupNorm with several groups: the replicas of one group land in another"}


@pytest.mark.parametrize("name", sorted(NETS))
def test_every_claim_holds_on_the_construct_nets(name):
    model, x = NETS[name]()
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    claims = []
    for widths in _plans(cg, name):
        plan = fxscale.ScalingPlan(widths=widths)
        claimed, why = cg.preserve_exact(plan)
        assert claimed == (not why)
        if claimed:
            assert _rel_diff(gm, fxscale.transform(gm, plan, "preserve", cg=cg), x) < REL_TOL, name
        elif name in NOT_CLAIMED:
            assert _rel_diff(gm, fxscale.transform(gm, plan, "preserve", cg=cg), x) > 1e-3
        claims.append(claimed)
    assert claims[0] is (name not in NOT_CLAIMED) or not cg.scalable, f"{name}: {why}"


class AlongDim(nn.Module):
    """A conv, then an op along one dim (softmax / normalize over the channels, or a softmax over the width)."""

    def __init__(self, op: str):
        super().__init__()
        self.conv, self.head, self.op = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 1), op

    def forward(self, x):
        y = self.conv(x)
        y = {"softmax": lambda: torch.softmax(y, dim=1), "normalize": lambda: F.normalize(y, dim=1),
             "softmax_w": lambda: y.softmax(-1)}[self.op]()
        return self.head(y).mean((2, 3))


@pytest.mark.parametrize("op,claim", [("softmax", False), ("normalize", False), ("softmax_w", True)])
def test_ops_along_a_dim(op, claim):
    x = torch.randn(2, 3, 8, 8)
    gm = fxscale.trace(AlongDim(op).eval(), x)
    cg = fxscale.analyze(gm)
    (g,) = [g for g in cg.scalable if g.width == 6]
    plan = fxscale.ScalingPlan(widths={g.name: 12})
    claimed, why = cg.preserve_exact(plan)
    assert claimed is claim, why
    diff = _rel_diff(gm, fxscale.transform(gm, plan, "preserve", cg=cg), x)
    if claimed:
        assert diff < REL_TOL
    else:  # the refusal names the node, and the growth is indeed inexact
        assert diff > 1e-3 and "works along a grown channel dim" in why[0]


def test_reductions_over_channels_freeze_the_group():
    class Mean(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3)

        def forward(self, x):
            return self.conv(x).mean(1)
    cg = fxscale.analyze(fxscale.trace(Mean().eval(), torch.randn(1, 3, 8, 8)))
    assert not cg["conv"].scalable and "reduction over a channel dim" in cg["conv"].reason


def test_layernorm_needs_whole_multiples_and_names_the_node():
    model, x = NETS["layernorm_channels_last"]()
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    ln = [g for g in cg.scalable if any("norm" in f for f in g.followers + [c for c, _o in g.consumers])]
    assert ln
    g = ln[0]
    claimed, why = cg.preserve_exact(fxscale.ScalingPlan(widths={g.name: g.width * 3 // 2}))
    assert not claimed and "statistics span a group grown by a non-integer factor" in why[0]
    assert cg.preserve_exact(fxscale.ScalingPlan(widths={g.name: g.width * 3}))[0]


def test_narrowing_and_resolution_are_never_claimed():
    model, x = NETS["conv_chain"]()
    cg = fxscale.analyze(fxscale.trace(model, x))
    g = cg.scalable[0]
    claimed, why = cg.preserve_exact(fxscale.ScalingPlan(widths={g.name: g.width // 2}))
    assert not claimed and f"group {g.name} narrows" in why[0]
    claimed, why = cg.preserve_exact(fxscale.ScalingPlan(resolution=(24, 24)))
    assert not claimed and "resolution" in why[0]
    assert cg.preserve_exact(fxscale.ScalingPlan())[0]
