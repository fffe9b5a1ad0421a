"""Analytic cost model: exact against FlopCounterMode and the rebuilt model's parameter count."""
from __future__ import annotations

import math
import random

import pytest
import torch
from helpers import random_plan
from nets import NETS
from torch import nn

import fxscale
from fxscale import zoo
from fxscale.cost import cost, cost_model, reference_flops

NO_RESOLUTION = {"conv1d", "tiny_vit"}  # 1-D input / fixed position embedding
ZOO = ["resnet18", "mobilenet_v2", "vgg11_bn", "efficientnet_b0", "densenet121", "convnext_tiny",
       "shufflenet_v2_x1_0", "vit_b_16", "swin_t", "maxvit_t", "googlenet", "regnet_y_400mf"]


def _measured(gm, plan, x) -> tuple[int, int]:
    new = fxscale.transform(gm, plan, init="reinit")
    return reference_flops(new, x), sum(p.numel() for p in new.parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(NETS))
def test_cost_exact_on_pattern_nets(name, seed, traced_net):
    gm, cg, x = traced_net(name)
    out = gm.meta["fxscale"]["output_shapes"]
    outs = [o for o in out if isinstance(o, tuple)] or [out]
    dense = any(len(o) > 2 for o in outs)  # a spatial output: resolution would change it
    plan = random_plan(cg, random.Random(seed), None if name in NO_RESOLUTION or dense else x.shape[-1])
    rep = cost(cg, plan)
    flops, params = _measured(gm, plan, x)
    assert rep.flops == flops and rep.flops == 2 * rep.macs
    assert rep.params == params


@pytest.mark.parametrize("name", ZOO)
def test_cost_exact_on_zoo(name, traced_zoo):
    spec = zoo.get_spec(name)
    gm, cg, x = traced_zoo(name)
    fixed = name.startswith(("vit", "swin", "maxvit"))
    plan = random_plan(cg, random.Random(0), None if fixed else spec.small_input_size)
    rep = cost(cg, plan)
    flops, params = _measured(gm, plan, x)
    assert (rep.flops, rep.params) == (flops, params)


def test_baseline_cost_matches_unchanged_model():
    model, x = NETS["residual"]()
    gm = fxscale.trace(model.eval(), x)
    rep = fxscale.cost(gm)
    assert rep.flops == reference_flops(gm, x)
    assert rep.params == sum(p.numel() for p in model.parameters())


def test_single_conv_by_hand():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.ReLU(), nn.Flatten(1), nn.Linear(8 * 36, 5))
    gm = fxscale.trace(model.eval(), torch.randn(2, 3, 6, 6))
    cg = fxscale.analyze(gm)
    rep = cost(cg, fxscale.ScalingPlan(widths={"0": 16}))
    conv, relu, flat, fc = rep.layers
    assert conv.kind == "conv_k3" and conv.macs == 2 * 16 * 36 * 3 * 9
    assert conv.params == 16 * 27 + 16
    assert conv.activations == 2 * 16 * 36
    assert conv.bytes == 4 * (2 * 3 * 36 + 2 * 16 * 36 + conv.params)
    assert relu.kind == "elementwise" and relu.bytes == 4 * 2 * (2 * 16 * 36)
    assert flat.kind == "view" and flat.bytes == 0 and flat.activations == 0
    assert fc.kind == "linear" and fc.macs == 2 * 16 * 36 * 5 and fc.params == 16 * 36 * 5 + 5
    assert rep.activations == conv.activations + relu.activations + fc.activations


def test_depthwise_and_grouped_kinds(traced_net):
    kinds = {r.kind for r in fxscale.cost(traced_net("inverted_residual").gm).layers}
    assert {"dwconv_k3", "conv_k1"} <= kinds


def test_incremental_update_matches_full_evaluation(traced_zoo):
    cg = traced_zoo("resnet18", 64).cg
    cm = cost_model(cg)
    sizes = cm.sizes()
    layers = [cm.layer(i, sizes) for i in range(len(cm.layers))]
    rng = random.Random(0)
    widths = {}
    for _ in range(20):
        g = rng.choice(cg.scalable)
        widths[g.name] = g.width + 10 * rng.randint(1, 5)
        for i in cm.set_width(sizes, g.name, widths[g.name]):
            layers[i] = cm.layer(i, sizes)
    full = cost(cg, fxscale.ScalingPlan(widths=widths))
    assert [r.macs for r in layers] == [r.macs for r in full.layers]
    assert sum(r.params for r in layers) + cm.extra_params == full.params
    assert sum(r.bytes for r in layers) == full.bytes
    assert cm.layers_of("conv1") and all(isinstance(i, int) for i in cm.layers_of("conv1"))


def test_resolution_scales_conv_flops_quadratically(traced_net):
    cg = traced_net("conv_chain").cg
    base = cost(cg).macs
    double = cost(cg, fxscale.ScalingPlan(resolution=(32, 32))).macs
    assert math.isclose(double / base, 4.0, rel_tol=0.02)


def test_cost_rejects_bad_plan_key(traced_net):
    cg = traced_net("conv_chain").cg
    with pytest.raises(fxscale.PlanError, match="names no channel group"):
        cost(cg, fxscale.ScalingPlan(widths={"nope": 8}))


def test_report_formats(traced_net):
    rep = fxscale.cost(traced_net("residual").gm)
    d = rep.to_dict()
    assert d["flops"] == rep.flops and len(d["layers"]) == len(rep.layers)
    assert "total" in rep.table() and sum(v["macs"] for v in rep.by_kind().values()) == rep.macs


def test_depth_plan_is_costed_on_the_deeper_graph(traced_zoo):
    gm = traced_zoo("resnet18", 64).gm
    plan = fxscale.ScalingPlan(depths={"layer1": 3})
    rep = fxscale.cost(gm, plan)
    new = fxscale.transform(gm, plan)
    assert rep.flops == reference_flops(new, torch.randn(1, 3, 64, 64)) > fxscale.cost(gm).flops
    assert rep.params == sum(p.numel() for p in new.parameters())
