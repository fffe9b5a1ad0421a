"""Model-zoo transforms: the representative slice always runs; the whole torchvision zoo behind -m zoo."""
from __future__ import annotations

import pytest
import torch
from helpers import random_widths

import fxscale
from fxscale import zoo
from fxscale.export import export_onnx

# Every model takes the resolution step (ViT: position embeddings resampled and the image-size asserts
# rewritten; Swin: windows padded at run time). MaxViT's partitions (size 7 at stride 32) need inputs that are
# multiples of 224, so it steps x2 instead of x1.5 (336 raises a PlanError naming 224 and 448).
RESOLUTION_SCALE = {"maxvit": 2.0}
MAX_PARAMS_M = 100  # resource cap for the full sweep on this 2-core machine
# AdaptiveAvgPool2d((7, 7)) on a map that 7 does not divide has no ONNX export (TorchScript exporter):
# these families are exported at their full 224 input instead of the small test input.
ONNX_AT_FULL_SIZE = ("vgg", "alexnet")
# nn.MultiheadAttention exports as scaled_dot_product_attention, which the TorchScript exporter has from opset 14.
ONNX_OPSET = {"vit": 14}


def _run(name: str, seed: int = 0, onnx_dir=None) -> None:
    spec = zoo.get_spec(name)
    # fxscale.trace runs the train-mode graph too: inception_v3's aux head needs 299 px and batch 2 there
    side = max(spec.small_input_size, spec.train_input_size)
    x = spec.example_input(batch=2 if side > spec.small_input_size else 1, size=side)
    # calibrated init (unit std at every conv/linear on x): deep stacks otherwise give 1e3..1e12 logits
    model = zoo.randomize_(zoo.create_model(name), seed=seed, example_input=x).eval()
    gm = fxscale.trace(model, x)
    cg = fxscale.analyze(gm)
    assert cg.scalable, f"{name}: no scalable group"
    if any(isinstance(m, (torch.nn.LayerNorm, torch.nn.MultiheadAttention)) for m in model.modules()):
        grow = {g.name: 2 * g.width for g in cg.scalable}  # LayerNorm stats are exact only under x2 replication
    else:
        grow = {g.name: g.width + max(g.divisor, g.width // 4 // g.divisor * g.divisor) for g in cg.scalable}
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths=grow), init="preserve")
    with torch.no_grad():
        ref, out = gm(x), new(x)
    assert ((ref - out).abs().max() / ref.abs().max()).item() <= 1e-4, f"{name}: growth not preserving"
    widths = random_widths(cg, 0.5, 2, seed)
    res = (int(side * RESOLUTION_SCALE.get(spec.family, 1.5)),) * 2
    for init in ("preserve", "prune", "reinit"):
        new = fxscale.transform(gm, fxscale.ScalingPlan(widths=widths, resolution=res), init=init)
        with torch.no_grad():
            assert new(x).shape == ref.shape
    if onnx_dir is not None and spec.family in ONNX_AT_FULL_SIZE:
        big = spec.example_input(size=spec.full_input_size)
        gm = fxscale.trace(model, big)
        half = {g.name: max(g.divisor, g.width // 2 // g.divisor * g.divisor) for g in cg.scalable}
        new = fxscale.transform(gm, fxscale.ScalingPlan(widths=half), init="prune")
        x = big
    if onnx_dir is not None:
        opset = ONNX_OPSET.get(spec.family, 13)
        rep = export_onnx(new, onnx_dir / f"{name}.onnx", x, opset=opset)
        assert rep.opset == opset and rep.max_abs_diff < 1e-3


@pytest.mark.timeout(600)  # the heaviest default tests: vit_b_16 ~30 s, vgg11_bn ~19 s on a contended 2-core box
@pytest.mark.parametrize("name", zoo.representative_slice())
def test_representative_slice(name, tmp_path):
    _run(name, onnx_dir=None if name.startswith(("vit_", "convnext")) else tmp_path)


@pytest.mark.zoo
@pytest.mark.timeout(900)  # up to ~60 s per model (vit_b_32, ONNX export included) on a contended 2-core box
@pytest.mark.parametrize("name", [n for n in zoo.list_models() if zoo.get_spec(n).params_millions <= MAX_PARAMS_M])
def test_full_zoo(name, tmp_path):
    _run(name, onnx_dir=tmp_path)
