"""timm models through trace -> analyze -> grow (init="preserve", exact) -> random plans (verify), at small inputs.

Skipped without timm. Models cover timm's norm-act layers (BatchNormAct2d traced into: F.batch_norm with parameter
arguments), squeeze-excite, GhostNet's concat-then-slice, ViT's fused attention with its optional forward
arguments (attn_mask=None, is_causal=False: concrete, not inputs), ConvNeXt's LayerNorm2d (F.layer_norm) and
timm layers used directly (StdConv2d, ScaledStdConv2d, BlurPool2d). Random weights only (pretrained=False).
"""
from __future__ import annotations

import pytest
import torch
from helpers import random_widths, rel_err
from torch import nn

import fxscale
from fxscale import zoo
from fxscale.ops.table import node_row

timm = pytest.importorskip("timm", reason="timm is not installed (pip install timm): the timm tests are skipped")

torch.set_num_threads(1)

# name -> (input side, build kwargs); 32 px keeps the file well under a minute on two cores
MODELS = {
    "resnet10t": (32, {}),
    "mobilenetv3_small_050": (32, {}),   # BatchNormAct2d, SE gates, hard-swish
    "efficientnet_lite0": (32, {}),      # BatchNormAct2d (ReLU6), depthwise, no SE
    "ghostnet_050": (32, {}),            # cat([x1, cheap(x1)])[:, :out_chs]
    "vit_tiny_patch16_224": (32, {"img_size": 32}),  # fused attention, concrete attn_mask / is_causal
    "convnext_atto": (32, {}),           # LayerNorm2d via F.layer_norm, layer scale
}
# LayerNorm statistics and attention span these models' groups: growth is exact under uniform x2 (README)
UNIFORM = {"vit_tiny_patch16_224", "convnext_atto"}
BN_ACT = {"mobilenetv3_small_050", "efficientnet_lite0", "ghostnet_050"}


def _build(name: str) -> tuple[nn.Module, torch.Tensor]:
    size, kwargs = MODELS[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = zoo.create_model(f"timm:{name}", **kwargs).eval()
    return zoo.randomize_(model, seed=0, example_input=x).eval(), x


@pytest.fixture(scope="module")
def traced() -> dict:
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model, x = _build(name)
            gm = fxscale.trace(model, x)
            cache[name] = (model, gm, fxscale.analyze(gm), x)
        return cache[name]
    return get


@pytest.mark.parametrize("name", sorted(MODELS))
def test_timm_growth_is_exact_and_random_plans_verify(name, traced):
    model, gm, cg, x = traced(name)
    assert cg.scalable, f"{name}: no scalable group\n{cg.table()}"
    widths = {g.name: 2 * g.width for g in cg.scalable} if name in UNIFORM else random_widths(cg, 1.0, 2.0, 0)
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths=widths), init="preserve", cg=cg)
    with torch.no_grad():
        ref = model(x)
        assert rel_err(ref, new(x)) <= 1e-5
        for seed, init in ((1, "prune"), (2, "preserve")):  # every plan that validates transforms and verifies
            plan = fxscale.ScalingPlan(widths=random_widths(cg, 0.5, 2.0, seed))
            out = fxscale.transform(gm, plan, init=init, cg=cg)(x)
            assert out.shape == ref.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(BN_ACT))
def test_timm_norm_act_layers_are_not_frozen(name, traced):
    _model, gm, cg, _x = traced(name)
    assert any(n.target is torch.nn.functional.batch_norm for n in gm.graph.nodes)  # traced into BatchNormAct2d
    assert not [g for g in cg.groups if "batch_norm" in g.reason], cg.table()
    assert len(cg.scalable) >= len(cg.groups) - 2  # all but the input and the classifier


def test_timm_vit_optional_arguments_are_not_inputs(traced, tmp_path):
    _model, gm, cg, x = traced("vit_tiny_patch16_224")
    assert [n.op for n in gm.graph.nodes].count("placeholder") == 1
    assert any(getattr(node_row(n), "name", "") == "sdpa" for n in gm.graph.nodes if n.op == "call_function")
    embed = [g for g in cg.scalable if g.producers and g.producers[0] == "patch_embed.proj"]
    assert embed and embed[0].width == 192
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths={g.name: 2 * g.width for g in cg.scalable}),
                            init="preserve", cg=cg)
    rep = fxscale.export_onnx(new, tmp_path / "vit.onnx", x[:1], opset=17, rtol=0.0, atol=1e-4)
    assert rep.max_abs_diff is not None and rep.max_abs_diff <= 1e-4


def test_timm_layers_used_directly():
    from timm.layers import BatchNormAct2d, BlurPool2d, ScaledStdConv2d, StdConv2d

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.bn = BatchNormAct2d(8, act_layer=nn.SiLU)
            self.blur = BlurPool2d(8, filt_size=3, stride=2)
            self.std = StdConv2d(8, 12, 3, padding=1)
            self.sstd = ScaledStdConv2d(12, 10, 1)
            self.head = nn.Linear(10, 4)

        def forward(self, x):
            x = self.std(self.blur(self.bn(self.stem(x))))
            return self.head(self.sstd(torch.relu(x)).mean((2, 3)))

    model, x = zoo.randomize_(Net(), seed=0).eval(), torch.randn(2, 3, 16, 16)
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    by_producer = {p: g for g in cg.groups for p in g.producers}
    assert not by_producer["stem"].scalable and "weight standardisation" in by_producer["stem"].reason
    assert not by_producer["std"].scalable  # read by the ScaledStdConv2d
    assert by_producer["sstd"].scalable and "sstd.gain" in by_producer["sstd"].followers
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths={g.name: g.width + 3 for g in cg.scalable}),
                            init="preserve", cg=cg)
    with torch.no_grad():
        assert rel_err(model(x), new(x)) <= 1e-5
