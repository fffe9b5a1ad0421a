"""fxscale.zoo: names, specs, small-input forwards, aux heads, seeded re-initialisation, digits models."""
from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from fxscale import zoo
from fxscale.errors import FxscaleError


@pytest.mark.parametrize("name", zoo.representative_slice())
def test_slice_forward_at_small_input(name: str, zoo_model: Callable[[str], nn.Module]) -> None:
    spec = zoo.get_spec(name)
    assert spec.in_slice and spec.small_input_size <= spec.full_input_size
    with torch.no_grad():
        out = zoo_model(name)(spec.example_input())
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_slice_covers_the_required_families() -> None:
    required = {"resnet18", "mobilenet_v2", "efficientnet_b0", "densenet121", "shufflenet_v2_x1_0",
                "squeezenet1_1", "vgg11_bn", "regnet_y_400mf", "convnext_tiny", "vit_b_16"}
    assert required <= set(zoo.representative_slice()) <= set(zoo.list_models())


def test_list_models_covers_torchvision_and_digits() -> None:
    names = zoo.list_models()
    assert set(torchvision.models.list_models(module=torchvision.models)) <= set(names)
    assert {"digits_vgg", "digits_resnet"} <= set(names) and names == sorted(names)
    fast = zoo.list_models(include_slow=False)
    assert {"vit_h_14", "regnet_y_128gf"}.isdisjoint(fast) and "resnet18" in fast


def test_segmentation_models_are_in_the_zoo(monkeypatch, capsys) -> None:
    seg = zoo.list_models(task="segmentation")
    assert seg == sorted(torchvision.models.list_models(module=torchvision.models.segmentation))
    assert set(seg).isdisjoint(zoo.list_models()) and set(zoo.list_models(task=None)) == set(seg) | set(
        zoo.list_models())
    with pytest.raises(FxscaleError, match="task must be one of classification, segmentation"):
        zoo.list_models(task="detection")
    spec = zoo.get_spec("lraspp_mobilenet_v3_large")
    assert (spec.task, spec.family, spec.num_classes, spec.full_input_size) == ("segmentation", "lraspp", 21, 520)
    assert zoo.get_spec("fcn_resnet50").family == "fcn" and zoo.get_spec("resnet18").task == "classification"

    def no_download(*args, **kwargs):
        raise AssertionError("the zoo must not download weights unless asked")
    import torchvision.models._api as tv_api
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_download)  # where torchvision's weights load from
    model = zoo.create_model("lraspp_mobilenet_v3_large").eval()  # no ImageNet backbone download
    with torch.no_grad():
        out = model(spec.example_input(size=32))
    assert set(out) == {"out"} and out["out"].shape == (1, 21, 32, 32)
    from fxscale.cli import main
    assert main(["analyze", "deeplabv3_mobilenet_v3_large", "--input-size", "32", "--json"]) == 0
    import json
    assert sum(g["scalable"] for g in json.loads(capsys.readouterr().out)) > 10


def test_specs_record_measured_sizes() -> None:
    inception, vit, resnet = zoo.get_spec("inception_v3"), zoo.get_spec("vit_b_16"), zoo.get_spec("resnet18")
    assert (inception.small_input_size, inception.full_input_size, inception.train_input_size) == (75, 299, 299)
    assert vit.small_input_size == 224 and vit.family == "vit"
    assert (resnet.small_input_size, resnet.family, resnet.num_classes) == (64, "resnet", 1000)
    assert 11.0 < resnet.params_millions < 12.0
    assert zoo.get_spec("swin_v2_t").family == "swin_v2" and zoo.get_spec("wide_resnet50_2").family == "wide_resnet"


@pytest.mark.parametrize("name,n_aux", [("googlenet", 2), ("inception_v3", 1)])
def test_aux_heads_in_train_mode(name: str, n_aux: int) -> None:
    spec = zoo.get_spec(name)
    model = zoo.create_model(name).train()
    with torch.no_grad():
        out = model(spec.example_input(batch=2, size=spec.train_input_size))
    aux = [t for t in out[1:] if t is not None]
    assert len(aux) == n_aux and all(t.shape == (2, 1000) for t in aux)
    with torch.no_grad():
        assert isinstance(model.eval()(spec.example_input()), torch.Tensor)


def test_randomize_makes_vit_logits_nondegenerate(zoo_model: Callable[[str], nn.Module]) -> None:
    model = copy.deepcopy(zoo_model("vit_b_16"))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.count_nonzero(model(x)) == 0, "torchvision's ViT head is zero-initialised"
        out = zoo.randomize_(model, seed=0)(x)
    assert torch.count_nonzero(out) == out.numel() and out.std() > 0.1
    assert (out[0] - out[1]).abs().max() > 0.1


def test_randomize_is_deterministic_by_seed() -> None:
    a = zoo.randomize_(zoo.create_model("resnet18"), seed=3).state_dict()
    b = zoo.randomize_(zoo.create_model("resnet18"), seed=3).state_dict()
    c = zoo.randomize_(zoo.create_model("resnet18"), seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layer1.0.bn2.weight"], c["layer1.0.bn2.weight"])
    var = a["bn1.running_var"]
    assert 0.5 <= var.min() and var.max() <= 1.5 and a["bn1.running_mean"].abs().max() > 0


def test_randomize_fixes_tiny_mobilenet_v3_logits() -> None:
    model = zoo.create_model("mobilenet_v3_small").eval()
    x = zoo.get_spec("mobilenet_v3_small").example_input(batch=2)
    with torch.no_grad():
        assert model(x).abs().max() < 1e-6, "torchvision init gives ~1e-10 logits"
        out = zoo.randomize_(model, seed=0)(x)
    assert out.std() > 0.1 and (out[0] - out[1]).abs().max() > 0.1


def test_randomize_with_example_input_calibrates_deep_residual_nets() -> None:
    model = zoo.create_model("resnet50").eval()
    x = zoo.get_spec("resnet50").example_input(batch=2)
    with torch.no_grad():
        raw = zoo.randomize_(model, seed=0)(x).std()
        calibrated = zoo.randomize_(model, seed=0, example_input=x)(x)
    assert raw > 100.0 and 0.5 < calibrated.std() < 2.0
    assert (calibrated[0] - calibrated[1]).abs().max() > 0.05


@pytest.mark.parametrize("bad,close", [("resnet81", "resnet18"), ("vit_b16", "vit_b_16"), ("digit_vgg", "digits_vgg")])
def test_unknown_name_suggests_close_matches(bad: str, close: str) -> None:
    with pytest.raises(FxscaleError, match=close):
        zoo.create_model(bad)
    with pytest.raises(ValueError, match=close):
        zoo.get_spec(bad)


def test_model_from_string() -> None:
    assert isinstance(zoo.model_from_string("torchvision.models:resnet18"), torchvision.models.ResNet)
    assert isinstance(zoo.model_from_string("digits_resnet"), zoo.DigitsResNet)
    with pytest.raises(FxscaleError, match="cannot import"):
        zoo.model_from_string("no_such_pkg.sub:build")
    with pytest.raises(FxscaleError, match="no attribute"):
        zoo.model_from_string("torchvision.models:resnet_missing")
    with pytest.raises(FxscaleError, match="not an nn.Module"):
        zoo.model_from_string("builtins:list")


def test_create_model_forwards_num_classes() -> None:
    with torch.no_grad():
        assert zoo.create_model("squeezenet1_1", num_classes=7).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 7)
    assert zoo.create_model("digits_vgg", num_classes=3).classifier.out_features == 3
    with pytest.raises(FxscaleError, match="no pretrained weights"):
        zoo.create_model("digits_vgg", weights="DEFAULT")


@pytest.mark.parametrize("name", ["digits_vgg", "digits_resnet"])
def test_digits_models_train_forward(name: str) -> None:
    model = zoo.create_model(name).train()
    spec = zoo.get_spec(name)
    assert (spec.in_channels, spec.small_input_size, spec.num_classes) == (1, 8, 10)
    assert 5_000 <= sum(p.numel() for p in model.parameters()) <= 50_000
    out = model(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_digits_resnet_has_identity_and_projection_shortcuts() -> None:
    blocks = [m for m in zoo.digits_resnet().modules() if isinstance(m, torchvision.models.resnet.BasicBlock)]
    shortcuts = [b.downsample is None for b in blocks]
    assert True in shortcuts and False in shortcuts


# ---------------------------------------------------------------------------------------- create_model(plan=...)


def _bn_stats_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics (a trained model's), so an exactness check can fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


@pytest.mark.parametrize("name", ["digits_resnet", pytest.param("resnet18", marks=pytest.mark.slow)])
def test_create_model_with_weights_file_and_plan_keeps_the_function(name: str, tmp_path) -> None:
    import fxscale
    from fxscale.plan import ScalingPlan
    torch.manual_seed(0)
    src = _bn_stats_(zoo.create_model(name)).eval()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    spec = zoo.get_spec(name)
    size = 8 if name.startswith("digits") else 32
    cg = fxscale.analyze(fxscale.trace(src, spec.example_input(size=size)))
    plan = ScalingPlan(widths={g.name: 2 * g.width for g in cg.scalable[:3]})
    (tmp_path / "plan.json").write_text(plan.to_json())
    for given in (plan, str(tmp_path / "plan.json")):
        new = zoo.create_model(name, weights=str(tmp_path / "w.pt"), plan=given, input_size=size).eval()
        assert isinstance(new, torch.fx.GraphModule)
        assert sum(p.numel() for p in new.parameters()) > sum(p.numel() for p in src.parameters())
        x = spec.example_input(batch=4, size=size, seed=1)
        with torch.no_grad():
            ref, out = src(x), new(x)
        assert torch.allclose(out, ref, atol=1e-5 * float(ref.abs().max()))
    fresh = zoo.create_model(name, plan=plan, init="reinit", input_size=size).eval()  # random weights, same shapes
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in new.state_dict().items()}


def test_create_model_weights_and_plan_errors(tmp_path) -> None:
    from fxscale.errors import PlanError
    from fxscale.plan import ScalingPlan
    with pytest.raises(FxscaleError, match="does not exist"):
        zoo.create_model("digits_vgg", weights=str(tmp_path / "missing.pt"))
    torch.save(zoo.create_model("digits_resnet").state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(FxscaleError, match="does not fit the model"):
        zoo.create_model("digits_vgg", weights=str(tmp_path / "resnet.pt"))
    with pytest.raises(PlanError, match="readable plan JSON"):
        zoo.create_model("digits_vgg", plan=str(tmp_path / "missing.json"))
    with pytest.raises(PlanError, match="init must be one of"):
        zoo.create_model("digits_vgg", plan=ScalingPlan(), init="copy")


@pytest.mark.skipif(not __import__("importlib").util.find_spec("timm"), reason="timm not installed")
def test_create_model_timm_weights_file_and_no_download_names(tmp_path) -> None:
    src = zoo.create_model("timm:resnet10t", num_classes=5)
    torch.save(src.state_dict(), tmp_path / "t.pt")
    loaded = zoo.create_model("timm:resnet10t", weights=str(tmp_path / "t.pt"), num_classes=5)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(FxscaleError, match="weights='pretrained'"):
        zoo.create_model("timm:resnet10t", weights="IMAGENET1K_V1")
