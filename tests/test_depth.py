"""Depth pass: repeated blocks with identity init, stage keys, renumbering, plans, bad input."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.vgg import make_layers

import fxscale
from fxscale.passes.depth import depth_pass, stage_keys, value_range
from fxscale.zoo import create_model, randomize_
from nets import NETS

torch.set_num_threads(1)


def _rel_err(a, b) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _block_params(gm, *paths) -> int:
    return sum(_params(gm.get_submodule(p)) for p in paths)


def _traced(model: nn.Module, x: torch.Tensor, seed: int = 0):
    randomize_(model, seed).eval()  # random BN statistics and gammas: identity init must hold for any values
    return fxscale.trace(model, x)


def _deeper(gm, depths, **kw):
    return fxscale.transform(gm, fxscale.ScalingPlan(depths=depths, widths=kw.pop("widths", {})), **kw)


@pytest.fixture(scope="module")
def resnet18():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return _traced(torchvision.models.resnet18(num_classes=10), x), x


@pytest.fixture(scope="module")
def vgg11_bn():
    model = torchvision.models.vgg11_bn()
    model.classifier = nn.Linear(512 * 7 * 7, 10)  # the 120M-parameter head is not what this tests
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    return _traced(model, x), x


# ------------------------------------------------------------------------------------------ function preserved

def test_resnet18_stages_grow_with_zero_gamma_blocks(resnet18):
    gm, x = resnet18
    code, n_params = gm.code, _params(gm)
    new = _deeper(gm, {"layer1": 3, "layer3": 4})
    with torch.no_grad():
        assert _rel_err(gm(x), new(x)) < 1e-5
    assert _params(new) - n_params == _block_params(gm, "layer1.1") + 2 * _block_params(gm, "layer3.1")
    keys = new.state_dict().keys()
    assert {"layer1.2.conv1.weight", "layer1.2.bn2.running_var", "layer3.2.conv2.weight", "layer3.3.bn2.bias"} <= keys
    assert not any(k.startswith(("layer1.3.", "layer3.4.", "layer2.2.")) for k in keys)
    assert not new.get_submodule("layer1.2.bn2").weight.detach().any()  # the branch is zeroed
    assert torch.equal(new.get_submodule("layer1.2.conv1").weight, gm.get_submodule("layer1.1.conv1").weight)
    assert "layer1_2_conv1" in new.code and "layer3_3_relu_1" in new.code
    rep = new.meta["fxscale"]["transform"]["depth"]["blocks"]
    assert rep["layer1"]["added"] == ["layer1.2"] and rep["layer3"]["added"] == ["layer3.2", "layer3.3"]
    assert "zeroed the last norm layer1.1.bn2" in rep["layer1"]["identity"]
    assert gm.code == code and _params(gm) == n_params  # the input is never mutated
    names = {g.name for g in fxscale.analyze(new).groups}
    assert {"layer1.2.conv1", "layer3.3.conv1"} <= names


def test_vgg11_bn_flat_features_repeat_conv_bn_relu(vgg11_bn):
    gm, x = vgg11_bn
    assert stage_keys(gm) == ["features.0", "features.4", "features.8", "features.11", "features.15",
                              "features.18", "features.22", "features.25"]
    new = _deeper(gm, {"features.11": 2, "features.25": 3})
    with torch.no_grad():
        assert _rel_err(gm(x), new(x)) < 1e-5
    assert _params(new) - _params(gm) == _block_params(gm, "features.11", "features.12") + 2 * _block_params(
        gm, "features.25", "features.26")
    kinds = [type(m).__name__ for m in new.features.children()]
    assert list(new.features._modules) == [str(i) for i in range(len(kinds))]  # renumbered like a real VGG
    assert kinds[11:17] == ["Conv2d", "BatchNorm2d", "ReLU"] * 2 and kinds[17] == "MaxPool2d"
    assert kinds[28:37] == ["Conv2d", "BatchNorm2d", "ReLU"] * 3 and kinds[37] == "MaxPool2d"
    conv = new.get_submodule("features.14")
    assert conv.weight.detach()[:, :, 1, 1].equal(torch.eye(256)) and not conv.bias.detach().any()
    bn = new.get_submodule("features.15")
    assert not bn.running_mean.any() and torch.allclose(bn.weight.detach(), torch.full((256,), (1 + bn.eps) ** 0.5))
    assert len(fxscale.analyze(new).groups) == len(fxscale.analyze(gm).groups) + 3


class _Features(nn.Module):
    """torchvision VGG feature layout (make_layers) with small widths and a small head."""

    def __init__(self, cfg) -> None:
        super().__init__()
        self.features = make_layers(cfg, batch_norm=True)
        self.fc = nn.Linear(cfg[-2], 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def test_vgg13_to_vgg16_layout_loads_into_the_deeper_architecture():
    small = lambda cfg: [c // 8 if isinstance(c, int) else c for c in cfg]  # noqa: E731
    b = small([64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"])
    d = small([64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    gm = _traced(_Features(b), x)
    new = _deeper(gm, {"features.17": 2, "features.24": 2, "features.31": 2})
    vgg16 = _Features(d).eval()
    vgg16.load_state_dict(new.state_dict(), strict=True)  # same key names and shapes as the vgg16 layout
    with torch.no_grad():
        assert _rel_err(gm(x), vgg16(x)) < 1e-5


@pytest.mark.parametrize("name, depths, copied", [
    ("digits_resnet", {"stages.0": 4}, ["stages.0.1"] * 2),
    ("digits_resnet", {"stages.0": 3, "stages.1": 3}, ["stages.0.1", "stages.1.1"]),
    ("digits_vgg", {"features.3": 2, "features.10": 3}, ["features.3", "features.4"] + ["features.10",
                                                                                         "features.11"] * 2),
])
def test_zoo_digits_models(name, depths, copied):
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    gm = _traced(create_model(name), x)
    new = _deeper(gm, depths)
    with torch.no_grad():
        assert _rel_err(gm(x), new(x)) < 1e-5
    assert _params(new) - _params(gm) == _block_params(gm, *copied)
    assert fxscale.analyze(new).scalable


@pytest.mark.parametrize("name, key, added", [
    ("residual", "blocks.0", "blocks.1"),  # BasicBlock with an nn.Identity shortcut and F.relu after the add
    ("inverted_residual", "blocks.0", "blocks.1"),  # x + conv(x), no activation after the add
])
def test_blocks_inside_a_sequential_are_repeated_in_place(name, key, added):
    model, x = NETS[name]()
    gm = fxscale.trace(model, x)
    last = f"blocks.{len(gm.blocks._modules) - 1}"
    new = _deeper(gm, {key: 3})
    with torch.no_grad():
        assert _rel_err(gm(x), new(x)) < 1e-5
    assert list(new.blocks._modules) == ["0", "1", "2", "3"]  # the stride-2 block moved from 1 to 3
    assert _params(new.get_submodule("blocks.3")) == _params(gm.get_submodule(last))
    assert _params(new) - _params(gm) == 2 * _params(gm.get_submodule(key))
    assert new.meta["fxscale"]["transform"]["depth"]["blocks"][key]["added"] == [added, "blocks.2"]


def test_layer_scale_residual_is_zeroed():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    gm = _traced(torchvision.models.convnext_tiny(num_classes=10), x)
    new = _deeper(gm, {"features.1": 4})
    with torch.no_grad():
        assert _rel_err(gm(x), new(x)) < 1e-5
    assert not new.get_submodule("features.1.3").layer_scale.detach().any()


def test_width_and_depth_together(resnet18):
    gm, x = resnet18
    widths = {"layer1.0.conv1": 96, "layer1.1.conv1": 80, "layer2.0.conv2": 192}  # growth only: exact
    new = _deeper(gm, {"layer1": 3, "layer2": 3}, widths=widths)
    with torch.no_grad():
        assert _rel_err(gm(x), new(x)) < 1e-5
    assert new.get_submodule("layer1.2.conv1").out_channels == 80  # copies inherit the rescaled widths
    assert new.get_submodule("layer2.2.conv2").out_channels == 192
    assert new.get_submodule("layer2.2.conv1").in_channels == 192
    cg = fxscale.analyze(new)
    assert cg["layer1.2.conv1"].width == 80 and cg["layer2.0.conv2"].width == 192
    # the deeper model is a normal input again: widen a copied block, deepen once more
    again = _deeper(new, {"layer1.2": 2}, widths={"layer1.2.conv1": 128})
    with torch.no_grad():
        assert _rel_err(gm(x), again(x)) < 1e-5
    assert again.get_submodule("layer1.3.conv1").out_channels == 128


def test_width_resolution_depth_order_and_reinit():
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(6))
    gm = _traced(create_model("digits_resnet"), x)
    plan = fxscale.ScalingPlan(widths={"stem.0": 24}, resolution=(12, 12), depths={"stages.0": 3})
    new = fxscale.transform(gm, plan, resolution_mode="input")
    assert new(torch.randn(2, 1, 12, 12)).shape == (2, 10)
    assert new.get_submodule("stages.0.2.conv1").in_channels == 24
    assert fxscale.analyze(new)["stem.0"].width == 24
    fresh = _deeper(gm, {"stages.0": 3}, init="reinit")
    assert fresh.meta["fxscale"]["transform"]["depth"]["blocks"]["stages.0"]["identity"] == "reinit"
    assert fresh.get_submodule("stages.0.2.bn2").weight.detach().all()


def test_depth_pass_report_and_no_op():
    x = torch.randn(2, 1, 8, 8)
    gm = _traced(create_model("digits_resnet"), x)
    assert depth_pass(gm, {"stages.0": 2}) == {}  # the current count: nothing to do
    rep = depth_pass(gm, {"stages.1": 4})
    assert rep["max_rel_err"] < 1e-6
    assert rep["blocks"]["stages.1"] == {
        "stage": "stages.1", "form": "stage", "from": 2, "to": 4, "block": ["stages.1.1"],
        "identity": "residual: zeroed the last norm stages.1.1.bn2 (BatchNorm2d gamma and beta)",
        "params": 2 * _params(create_model("digits_resnet").stages[1][1]), "added": ["stages.1.2", "stages.1.3"]}
    assert [n.meta["fxscale"]["shape"] for n in gm.graph.nodes if n.target == "stages.1.3.conv2"] == [(2, 32, 4, 4)]


def test_value_range_sees_relu_through_pools(vgg11_bn):
    gm, _x = vgg11_bn
    nodes = {n.target: n for n in gm.graph.nodes if n.op == "call_module"}
    assert value_range(nodes["features.3"], gm) == (0.0, float("inf"))  # max-pool of a ReLU
    assert value_range(nodes["features.1"], gm) == (-float("inf"), float("inf"))  # BatchNorm


# ------------------------------------------------------------------------------------------ plans

def test_plan_json_round_trip_with_depths():
    plan = fxscale.ScalingPlan(widths={"conv1": 96}, resolution=(96, 96), depths={"layer2": 3, "features.11": 2})
    text = plan.to_json()
    assert json.loads(text)["depths"] == {"features.11": 2, "layer2": 3}
    assert fxscale.ScalingPlan.from_json(text) == plan
    assert "depths" not in json.loads(fxscale.ScalingPlan(widths={"a": 8}).to_json())  # unchanged format
    old = '{"version": 1, "widths": {"conv1": 96}, "resolution": null, "meta": {}}'
    assert fxscale.ScalingPlan.from_json(old).depths == {}
    with pytest.raises(fxscale.PlanError, match="unknown plan keys"):
        fxscale.ScalingPlan.from_json('{"depth": {"layer1": 3}}')
    with pytest.raises(fxscale.PlanError, match="'depths' must be an object"):
        fxscale.ScalingPlan.from_json('{"depths": [3]}')
    with pytest.raises(fxscale.PlanError, match="depth for stage 'layer1' must be an int"):
        fxscale.ScalingPlan(depths={"layer1": 2.5})
    with pytest.raises(fxscale.PlanError, match="depth for stage 'layer1' must be >= 1"):
        fxscale.ScalingPlan(depths={"layer1": 0})


@pytest.mark.parametrize("depths, message", [
    ({"layer5": 3}, r"'layer5': names no stage .*did you mean \['layer"),
    ({"layr1": 3}, r"'layr1': names no stage .*did you mean \['layer1'"),
    ({"layer1": 1}, r"'layer1': count 1 is smaller than the current 2"),
    ({"layer2.0": 2}, r"'layer2.0': block layer2.0 maps \(2, 64, 16, 16\) -> \(2, 128, 8, 8\); only blocks whose "
                      r"input and output shapes are equal"),
    ({"layer3": 3, "layer2": 2, "layer4.0": 3}, r"'layer4.0': block layer4.0 maps"),
    ({"layer1.0.conv1": 2}, r"'layer1.0.conv1': 'layer1.0.conv1' \(Conv2d\) is not a repeatable stage: .*parent "
                            r"'layer1.0' \(BasicBlock\) is not an nn.Sequential"),
    ({"fc": 2}, r"'fc' \(Linear\) is not a repeatable stage"),
    ({"layer1": 3, "layer1.1": 2}, r"keys 'layer1' and 'layer1.1' both change block layer1.1"),
])
def test_bad_depth_keys_are_named(resnet18, depths, message):
    gm, _x = resnet18
    plan = fxscale.ScalingPlan(depths=depths)
    with pytest.raises(fxscale.PlanError, match=message):
        plan.validate(fxscale.analyze(gm))
    with pytest.raises(fxscale.PlanError, match=message):
        fxscale.transform(gm, plan)


def test_flat_sequential_needs_a_conv_key(vgg11_bn):
    gm, _x = vgg11_bn
    with pytest.raises(fxscale.PlanError, match=r"'features' \(Sequential\) is a flat Sequential of layers.*"
                                                r"'features.K'"):
        _deeper(gm, {"features": 30})
    with pytest.raises(fxscale.PlanError, match=r"'features.12': names a BatchNorm2d .* name a Conv"):
        _deeper(gm, {"features.12": 2})
    with pytest.raises(fxscale.PlanError, match=r"'features.8': block features.8, features.9, features.10 maps "
                                                r"\(2, 128, 8, 8\) -> \(2, 256, 8, 8\)"):
        _deeper(gm, {"features.8": 2})


class _PostNorm(nn.Module):
    """out = norm(x + conv(x)): the norm after the add means no init makes a copy the identity."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(2, c)

    def forward(self, x):
        return self.norm(x + self.conv(x))


class _Blocks(nn.Module):
    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stage = nn.Sequential(*blocks)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.stage(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("block, why", [
    (lambda: _PostNorm(8), r"its output stage_1_norm is not an add of the block input.*not a single chain"),
    (lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU()),
     r"not a residual block.*\(GELU\) cannot be set to the identity"),
    (lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8)),  # output not post-ReLU
     r"activations are the identity only on \(0.0, inf\), but the block output ranges over \(-inf, inf\)"),
    (lambda: nn.Sequential(nn.Conv2d(8, 8, 2, padding=1, dilation=2), nn.ReLU()), r"even kernel"),
])
def test_blocks_that_cannot_be_identities_need_reinit(block, why):
    x = torch.randn(2, 3, 8, 8)
    gm = _traced(_Blocks(block(), block()), x)
    code = gm.code
    with pytest.raises(fxscale.PlanError, match=r"'stage': block stage.1 cannot be made an identity.*" + why):
        _deeper(gm, {"stage": 3})
    assert gm.code == code
    new = _deeper(gm, {"stage": 3}, init="reinit")  # allowed: freshly initialised blocks, a different function
    assert list(new.stage._modules) == ["0", "1", "2"] and new(x).shape == (2, 5)


def test_plain_block_after_relu_output_is_identity():
    """conv-bn-relu blocks: the second copy's input is the ReLU output of the first, so ReLU is exact."""
    block = lambda: nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())  # noqa: E731
    x = torch.randn(2, 3, 8, 8)
    gm = _traced(_Blocks(block(), block()), x)
    new = _deeper(gm, {"stage": 4})
    with torch.no_grad():
        assert _rel_err(gm(x), new(x)) < 1e-5


def test_widths_that_break_a_repeatable_block_are_reported():
    x = torch.randn(2, 1, 8, 8)
    gm = _traced(create_model("digits_vgg"), x)
    with pytest.raises(fxscale.PlanError, match=r"'features.3': block features.3, features.4, features.5 maps "
                                                r"\(2, 24, 8, 8\) -> \(2, 16, 8, 8\)"):
        _deeper(gm, {"features.3": 2}, widths={"features.0": 24})


class _Aux(nn.Module):
    """A repeatable stage plus a train-only aux head (like GoogLeNet): eval and train graphs differ."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage = nn.Sequential(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
        self.aux, self.fc = nn.Linear(8, 5), nn.Linear(8, 5)

    def forward(self, x):
        f = self.stage(self.stem(x)).mean((2, 3))
        return (self.fc(f), self.aux(f)) if self.training else self.fc(f)


def test_models_with_a_train_graph_are_refused():
    gm = _traced(_Aux(), torch.randn(2, 3, 8, 8))
    assert gm.meta["fxscale"]["train_gm"] is not None
    with pytest.raises(fxscale.PlanError, match="'depths': depth scaling of models with a train-mode graph"):
        _deeper(gm, {"stage": 2})
    assert _deeper(gm, {"stage": 1}).stage._modules.keys() == gm.stage._modules.keys()  # no-op plans pass


def test_deeper_model_exports_to_onnx(tmp_path):
    x = torch.randn(1, 1, 8, 8)
    gm = _traced(create_model("digits_resnet"), x)
    new = _deeper(gm, {"stages.1": 3})
    fxscale.export_onnx(new, str(tmp_path / "deep.onnx"), x)


class _InplaceRes(nn.Module):
    """A BasicBlock-like residual block whose residual add is written as `form`, with or without a ReLU after it."""

    def __init__(self, c: int, form: str, relu: bool = True) -> None:
        super().__init__()
        self.form, self.post = form, relu
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = x
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.form == "+":
            out = out + identity
        elif self.form == "+=":
            out += identity
        else:  # bare in-place: fx records later reads of `out` as reads of bn2, which the add_ node wrote
            out.add_(identity)
        return self.relu(out) if self.post else out


@pytest.mark.parametrize("form, relu", [("+=", True), ("add_", True), ("add_", False)])
def test_in_place_residual_add_is_recognised_like_an_add(form, relu):
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    runs = {}
    for f in ("+", form):
        torch.manual_seed(0)
        gm = _traced(_Blocks(_InplaceRes(8, f, relu), _InplaceRes(8, f, relu)), x)
        new = _deeper(gm, {"stage": 4})
        with torch.no_grad():
            assert _rel_err(gm(x), new(x)) < 1e-5
        if f == "add_":  # the in-place node is really there, in the block and in each copy
            assert sum(n.op == "call_method" and n.target == "add_" for n in new.graph.nodes) == 4
        runs[f] = (stage_keys(gm), new.meta["fxscale"]["transform"]["depth"]["blocks"], list(new.state_dict()))
    assert runs[form] == runs["+"]
    assert runs[form][1]["stage"]["identity"] == ("residual: zeroed the last norm stage.1.bn2 "
                                                  "(BatchNorm2d gamma and beta)")
