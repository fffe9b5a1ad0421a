"""Dense outputs (segmentation masks, stride-s feature maps) across resolution changes.

An output leaf is dense when its trailing H, W follow the input's spatial size (found by a shape-only probe at
trace time, never by its name). In 'input' mode a dense output follows the new input size; in 'resize' mode it
is resized back, so the model stays drop-in. Non-dense outputs never change.
"""
from __future__ import annotations

import collections
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxscale
from fxscale.errors import VerificationError
from fxscale.passes.verify import dense_output_errors, verify
from fxscale.tracing import _shapes_of, dense_outputs


class DictSeg(nn.Module):
    """Classifier logits N x K plus a full-resolution mask N x C x H x W (stride 4, upsampled to the input)."""

    def __init__(self, classes: int = 5, channels: int = 4) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, 2, 1)
        self.b = nn.Conv2d(8, channels, 3, 2, 1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> dict:
        f = torch.relu(self.a(x))
        mask = F.interpolate(self.b(f), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": self.fc(f.mean((2, 3))), "mask": mask}


class TupleStride4(nn.Module):
    """(logits, stride-4 map N x 6 x H/4 x W/4, stride-4 label map N x H/4 x W/4 of int64)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, 2, 1)
        self.b = nn.Conv2d(8, 6, 3, 2, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> tuple:
        m = self.b(torch.relu(self.a(x)))
        return self.fc(m.mean((2, 3))), m, m.argmax(1)


class DictHead(nn.Module):
    """A leaf module returning an OrderedDict, so fx sees the whole result as one node."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, 4, 1)

    def forward(self, x: torch.Tensor) -> collections.OrderedDict:
        y = self.c(x)
        return collections.OrderedDict(feat=y, pooled=y.mean((2, 3)))


class LeafDictNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = DictHead()

    def forward(self, x: torch.Tensor) -> collections.OrderedDict:
        return self.head(x)


def _traced(model: nn.Module, size: int = 32, batch: int = 2, **kw):
    torch.manual_seed(0)
    model = model.eval()
    x = torch.randn(batch, 3, size, size)
    return model, x, fxscale.trace(model, x, **kw)


def _shapes(out):
    return _shapes_of(out)


def test_dense_outputs_are_found_by_rule_not_name():
    _, _, gm = _traced(DictSeg())
    dense = dense_outputs(gm)
    assert set(dense) == {("mask",)}
    assert dense[("mask",)]["affine"] == ((Fraction(1), Fraction(0)),) * 2
    _, _, gm = _traced(TupleStride4())
    dense = dense_outputs(gm)
    assert set(dense) == {(1,), (2,)}  # the logits (index 0) are not dense
    assert all(d["affine"] == ((Fraction(1, 4), Fraction(0)),) * 2 for d in dense.values())
    assert dense[(2,)]["dtype"] == torch.int64


def test_classifier_has_no_dense_outputs():
    class Cls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3, 2, 1)
            self.pool = nn.AdaptiveAvgPool2d(2)  # 4-D output whose H, W do not follow the input

        def forward(self, x):
            return self.pool(self.c(x))

    _, _, gm = _traced(Cls())
    assert dense_outputs(gm) == {}


@pytest.mark.parametrize("size", [24, 48])
def test_dict_seg_input_mode_mask_follows_the_input(size):
    model, _, gm = _traced(DictSeg())
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(size, size)), resolution_mode="input")
    out = new(torch.randn(2, 3, size, size))
    assert _shapes(out) == {"logits": (2, 5), "mask": (2, 4, size, size)}
    assert new.meta["fxscale"]["output_shapes"] == _shapes(out)
    assert gm.meta["fxscale"]["output_shapes"] == {"logits": (2, 5), "mask": (2, 4, 32, 32)}  # input untouched
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():  # 'input' mode only changes shapes: the weights and the maths are the original model's
        torch.testing.assert_close(new(x)["mask"], model(x)["mask"])


@pytest.mark.parametrize("size", [24, 48])
def test_dict_seg_resize_mode_stays_drop_in(size):
    model, x, gm = _traced(DictSeg())
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(size, size)), resolution_mode="resize")
    out = new(x)
    assert _shapes(out) == _shapes(gm(x)) == {"logits": (2, 5), "mask": (2, 4, 32, 32)}
    with torch.no_grad():  # the body runs at `size`, its mask is resized back bilinearly to 32x32
        xs = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < 32)
        ref = F.interpolate(model(xs)["mask"], size=(32, 32), mode="bilinear", align_corners=False,
                            antialias=size > 32)
        torch.testing.assert_close(out["mask"], ref)


@pytest.mark.parametrize("mode", ["resize", "input"])
@pytest.mark.parametrize("size", [16, 48])
def test_tuple_stride4_both_modes(mode, size):
    _, x, gm = _traced(TupleStride4())
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(size, size)), resolution_mode=mode)
    xi = x if mode == "resize" else torch.randn(2, 3, size, size)
    out = new(xi)
    hw = 8 if mode == "resize" else size // 4
    assert _shapes(out) == ((2, 5), (2, 6, hw, hw), (2, hw, hw))
    assert out[2].dtype == torch.int64  # label maps are resized by nearest neighbour and keep their dtype
    assert set(out[2].unique().tolist()) <= set(range(6))


@pytest.mark.parametrize("model_cls", [DictSeg, TupleStride4, LeafDictNet])
@pytest.mark.parametrize("mode", ["resize", "input"])
def test_traced_size_is_an_exact_noop(model_cls, mode):
    _, x, gm = _traced(model_cls(), leaf_modules=[DictHead])
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(32, 32)), resolution_mode=mode)
    assert [n.op for n in new.graph.nodes] == [n.op for n in gm.graph.nodes]
    with torch.no_grad():
        a, b = gm(x), new(x)
    for (pa, ta), (pb, tb) in zip(fxscale.tracing.output_leaves(a), fxscale.tracing.output_leaves(b)):
        assert pa == pb and torch.equal(ta, tb)


def test_leaf_module_container_output_is_resized_inside_its_container():
    _, x, gm = _traced(LeafDictNet(), leaf_modules=[DictHead])
    assert set(dense_outputs(gm)) == {("feat",)}
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(64, 64)))
    out = new(x)
    assert isinstance(out, collections.OrderedDict)
    assert _shapes(out) == {"feat": (2, 4, 8, 8), "pooled": (2, 4)}
    again = fxscale.transform(new, fxscale.ScalingPlan(resolution=(48, 48)))  # not resized back twice
    assert _shapes(again(x)) == {"feat": (2, 4, 8, 8), "pooled": (2, 4)}


def test_verification_knows_dense_outputs():
    _, _, gm = _traced(TupleStride4())
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(48, 48)), resolution_mode="input")
    verify(new)
    assert dense_output_errors(new, _shapes(new(torch.randn(2, 3, 48, 48)))) == []
    shrunk = dense_output_errors(new, ((2, 5), (2, 6, 4, 4), (2, 4, 4)))  # input grew, maps shrank
    assert len(shrunk) == 2 and all("does not follow the input size" in e for e in shrunk)
    at_traced = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(48, 48)), resolution_mode="resize")
    assert dense_output_errors(at_traced, _shapes(at_traced(torch.randn(2, 3, 32, 32)))) == []
    assert "does not follow" in dense_output_errors(at_traced, ((2, 5), (2, 6, 12, 12), (2, 12, 12)))[0]
    assert "leading dims" in dense_output_errors(new, ((2, 5), (2, 7, 12, 12), (2, 12, 12)))[0]
    new.meta["fxscale"]["output_shapes"] = gm.meta["fxscale"]["output_shapes"]  # as if the maps had to stay 8x8
    with pytest.raises(VerificationError, match="dense outputs"):
        verify(new)


@pytest.fixture(scope="module")
def lraspp():
    tv = pytest.importorskip("torchvision")
    model = tv.models.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    return _traced(model, size=64, batch=1)


@pytest.mark.parametrize("mode", ["resize", "input"])
def test_torchvision_lraspp_both_modes(lraspp, mode):
    _, x, gm = lraspp
    assert set(dense_outputs(gm)) == {("out",)}
    for size in (48, 96):
        new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(size, size)), resolution_mode=mode)
        xi = x if mode == "resize" else torch.randn(1, 3, size, size)
        with torch.no_grad():
            out = new(xi)
        hw = 64 if mode == "resize" else size
        assert _shapes(out) == {"out": (1, 3, hw, hw)}


def test_torchvision_fcn_out_and_aux_both_modes():
    tv = pytest.importorskip("torchvision")
    model = tv.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=True)
    _, x, gm = _traced(model, size=64, batch=1)
    assert set(dense_outputs(gm)) == {("out",), ("aux",)}
    plan = fxscale.ScalingPlan(resolution=(48, 48))
    with torch.no_grad():
        out = fxscale.transform(gm, plan, resolution_mode="resize")(x)
        assert _shapes(out) == {"out": (1, 3, 64, 64), "aux": (1, 3, 64, 64)}
        out = fxscale.transform(gm, plan, resolution_mode="input")(torch.randn(1, 3, 48, 48))
        assert _shapes(out) == {"out": (1, 3, 48, 48), "aux": (1, 3, 48, 48)}
