"""Resolution scaling of ViT, Swin and MaxViT: baked shape constants, position embeddings, partition sizes.

The rescaled torchvision models are compared with torchvision's own models built for the new size (ViT with
``image_size=``, MaxViT with ``input_size=``) carrying the same weights: equal outputs show that every
rewritten constant (``h == 224`` asserts, MaxViT window/grid partition counts) means what it meant.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

import fxscale
from fxscale import zoo
from fxscale.api import copy_graph_module
from fxscale.passes.resolution import resample_position_embedding, resample_spatial_map, resolution_pass
from fxscale.tracing import META


def _xin(size, seed=1, batch=1):
    h, w = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


# ---------------------------------------------------------------------------------------------------------
# position-embedding numerics
# ---------------------------------------------------------------------------------------------------------

def test_resample_same_grid_is_identity_and_constant_stays_constant():
    pos = torch.randn(1, 1 + 14 * 14, 32)
    assert resample_position_embedding(pos, (14, 14), (14, 14), prefix=1, dim=1) is pos
    const = torch.full((1, 2 + 7 * 7, 8), 0.37)
    const[:, :2] = torch.tensor([1.5, -2.0]).view(1, 2, 1)
    for new in ((10, 10), (5, 5), (9, 12), (7, 7)):
        out = resample_position_embedding(const, (7, 7), new, prefix=2, dim=1)
        assert out.shape == (1, 2 + new[0] * new[1], 8)
        assert torch.equal(out[:, :2], const[:, :2])  # prefix (class, distillation) tokens kept exactly
        torch.testing.assert_close(out[:, 2:], torch.full_like(out[:, 2:], 0.37), rtol=0, atol=1e-6)
    grid = torch.randn(1, 8, 4, 6)
    assert resample_spatial_map(grid, (4, 6), (2, 3)) is grid
    torch.testing.assert_close(resample_spatial_map(torch.ones(1, 8, 4, 6), (8, 9), (2, 3)), torch.ones(1, 8, 8, 9))


def test_resample_matches_grid_interpolation():
    """The grid tokens are the row-major (gh, gw) image, interpolated bicubically (timm's approach)."""
    pos = torch.randn(1, 1 + 4 * 6, 5)
    out = resample_position_embedding(pos, (4, 6), (6, 9), prefix=1, dim=1)
    img = pos[0, 1:].reshape(4, 6, 5).permute(2, 0, 1)[None]
    ref = F.interpolate(img, size=(6, 9), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(54, 5)
    torch.testing.assert_close(out[0, 1:], ref)
    seq_first = resample_position_embedding(pos[0].T.contiguous(), (4, 6), (6, 9), prefix=1, dim=-1)
    torch.testing.assert_close(seq_first, out[0].T)


class TinyViT(nn.Module):
    """timm-style token model: patches flattened, class + distillation tokens, learned position embedding."""

    def __init__(self, dim=16, patch=4, grid=(4, 4), prefix=2):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.tokens = nn.Parameter(torch.randn(1, prefix, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, prefix + grid[0] * grid[1], dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.proj(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.tokens.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.norm(t + self.pos_embed)
        return self.head(t[:, 0] + t[:, 2:].mean(1))


class MapEmbed(nn.Module):
    """An additive NCHW position map on the patch grid."""

    def __init__(self, dim=8):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, dim, 4, 4))
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        return self.head((self.proj(x) + self.pos).mean((2, 3)))


@pytest.mark.parametrize("mode", ["input", "resize"])
def test_token_position_embedding_resampled(mode):
    model = TinyViT().eval()
    gm = fxscale.trace(model, _xin(16))
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(24, 20)), resolution_mode=mode)
    old = model.pos_embed.detach()
    want = resample_position_embedding(old, (4, 4), (6, 5), prefix=2, dim=1)
    assert torch.equal(new.pos_embed.detach(), want) and torch.equal(new.pos_embed[:, :2], old[:, :2])
    assert model.pos_embed.shape == (1, 18, 16) and gm.pos_embed.shape == (1, 18, 16)  # inputs untouched
    (pe,) = new.meta[META]["transform"]["resolution"]["position_embeddings"]
    assert pe == {"name": "pos_embed", "node": "add", "prefix": 2, "old_grid": [4, 4], "new_grid": [6, 5]}
    ref = copy.deepcopy(model)
    ref.pos_embed = nn.Parameter(want)
    x = _xin(16) if mode == "resize" else _xin((24, 20))
    with torch.no_grad():
        expect = ref(x) if mode == "input" else ref(_resize(x, (24, 20)))
        torch.testing.assert_close(new(x), expect, rtol=0, atol=1e-6)


def test_map_position_embedding_resampled():
    model = MapEmbed().eval()
    gm = fxscale.trace(model, _xin(16))
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(32, 24)), resolution_mode="input")
    assert torch.equal(new.pos.detach(), resample_spatial_map(model.pos.detach(), (8, 6), (2, 3)))
    with torch.no_grad():
        assert new(_xin((32, 24))).shape == (1, 10)


class Unprovable(nn.Module):
    """Tokens counted with reshape(..., -1): the sequence length has no row x column structure to resample."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 8, 16))

    def forward(self, x):
        t = self.proj(x)
        return (t.reshape(t.shape[0], t.shape[1], -1) + self.pos).mean(-1)


class SplitsSpace(nn.Module):
    """A reshape that splits the 8x8 map into (4, 16): no way to tell how the pieces follow the input size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.reshape(y.shape[0], 4, 4, 16).mean((2, 3))


def test_unprovable_constants_raise_plan_error_naming_the_node():
    gm = fxscale.trace(Unprovable().eval(), _xin(16))
    with pytest.raises(fxscale.PlanError, match=r"node add: pos .*not come from one 2-D grid"):
        fxscale.transform(gm, fxscale.ScalingPlan(resolution=(24, 24)))
    gm = fxscale.trace(SplitsSpace().eval(), _xin(8))
    with pytest.raises(fxscale.PlanError, match=r"resolution 12x12: .*node reshape .*re-split sizes \[4, 8, 8\] into \[4, 4, 16\]"):
        fxscale.transform(gm, fxscale.ScalingPlan(resolution=(12, 12)), resolution_mode="input")


# ---------------------------------------------------------------------------------------------------------
# torchvision ViT / Swin / MaxViT
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def calibrated_zoo(zoo_model, traced_zoo):
    """``calibrated_zoo(name) -> (spec, model, x, gm)``: the shared zoo model re-initialised by
    ``zoo.randomize_(seed=0, example_input=x)`` at its small example input x, and its trace at x."""
    def get(name):
        gm, _cg, x = traced_zoo(name, calibrated=True)
        return zoo.get_spec(name), zoo_model(name, calibrated=True), x, gm
    return get


def test_vit_matches_torchvision_at_new_size(calibrated_zoo):
    spec, model, x, gm = calibrated_zoo("vit_b_32")
    side = spec.small_input_size
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(320, 320)), resolution_mode="input")
    report = new.meta[META]["transform"]["resolution"]
    assert {(c["node"], c["old"], c["new"]) for c in report["constants"]} == {("eq", side, 320), ("eq_1", side, 320)}
    assert report["position_embeddings"][0]["old_grid"] == [7, 7]
    assert report["position_embeddings"][0]["new_grid"] == [10, 10]
    ref = tvm.vit_b_32(image_size=320).eval()
    state = model.state_dict()
    state["encoder.pos_embedding"] = new.encoder.pos_embedding.detach()
    ref.load_state_dict(state)
    x320 = _xin(320)
    with torch.no_grad():
        assert torch.equal(new(x320), ref(x320))
    # a size that keeps the 7x7 token grid changes only the asserts: same output as the traced size
    keep = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(240, 250)), resolution_mode="input")
    assert torch.equal(keep.encoder.pos_embedding, gm.encoder.pos_embedding)
    x2 = _xin((240, 250))
    with torch.no_grad():
        assert torch.equal(keep(x2), gm(x2[:, :, :224, :224]))


def test_vit_resize_mode_and_non_square(calibrated_zoo):
    spec, model, x, gm = calibrated_zoo("vit_b_32")
    with torch.no_grad():
        ref = gm(x)
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(160, 300)))
    assert new.meta[META]["input_shapes"][0] == tuple(x.shape)
    assert new.encoder.pos_embedding.shape == (1, 1 + 5 * 9, 768)  # 300 // 32: the patch conv floors
    with torch.no_grad():
        out = new(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    # same resolution: the pass is an exact no-op (graph code and weights untouched)
    same = copy_graph_module(gm)
    rep = resolution_pass(same, (224, 224), "input")
    assert rep["constants"] == [] and rep["position_embeddings"] == []
    assert same.code == gm.code and all(torch.equal(a, b) for a, b in zip(same.state_dict().values(),
                                                                          gm.state_dict().values()))
    with torch.no_grad():
        assert torch.equal(same(x), ref)


@pytest.mark.parametrize("size", [96, 100])
def test_swin_windows_follow_the_input(size, calibrated_zoo):
    spec, model, x, gm = calibrated_zoo("swin_t")
    tables = {k: v.clone() for k, v in gm.state_dict().items() if "relative_position" in k}
    new_in = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(size, size)), resolution_mode="input")
    new_rs = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(size, size)))
    for k, v in tables.items():  # per-window relative position bias tables do not change
        assert torch.equal(new_in.state_dict()[k], v)
    xs = _xin(size)
    with torch.no_grad():  # Swin pads its shifted windows at run time: the eager model is the reference
        assert torch.equal(new_in(xs), model(xs))
        torch.testing.assert_close(new_rs(x), model(_resize(x, (size, size))), rtol=0, atol=1e-5)


def test_maxvit_matches_torchvision_at_new_size(calibrated_zoo):
    spec, model, x, gm = calibrated_zoo("maxvit_t")
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(448, 448)), resolution_mode="input")
    changed = {c["node"] for c in new.meta[META]["transform"]["resolution"]["constants"]}
    assert {"reshape_6", "reshape_7", "floordiv_4", "reshape_8"} <= changed  # window departition, grid partition
    ref = tvm.maxvit_t(input_size=(448, 448)).eval()
    ref.load_state_dict(model.state_dict())
    x448 = _xin(448)
    with torch.no_grad():
        assert torch.equal(new(x448), ref(x448))


def test_maxvit_bad_size_names_sizes_that_work(calibrated_zoo):
    spec, model, x, gm = calibrated_zoo("maxvit_t")
    with pytest.raises(fxscale.PlanError) as info:
        fxscale.transform(gm, fxscale.ScalingPlan(resolution=(336, 336)))
    msg = str(info.value)
    assert msg.startswith("resolution 336x336: the graph does not run at this size: node ")
    assert msg.endswith("sizes that work nearby: 224x224, 448x448")
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(448, 448)))  # resize mode at a good size
    with torch.no_grad():
        assert new(x).shape == (1, 1000)
