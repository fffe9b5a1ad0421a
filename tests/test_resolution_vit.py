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


class FlattenByReshape(nn.Module):
    """Tokens counted with reshape(B, C, -1): a flatten of the rows x columns grid, resampled as such."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, 4)
        self.pos = nn.Parameter(torch.randn(1, 8, 16))

    def forward(self, x):
        t = self.proj(x)
        return (t.reshape(t.shape[0], t.shape[1], -1) + self.pos).mean(-1)


class Unprovable(nn.Module):
    """Tokens of two grids (strides 4 and 8) side by side: no one rows x columns grid to resample."""

    def __init__(self):
        super().__init__()
        self.p4, self.p8 = nn.Conv2d(3, 8, 4, 4), nn.Conv2d(3, 8, 8, 8)
        self.pos = nn.Parameter(torch.randn(1, 8, 20))

    def forward(self, x):
        t = torch.cat([self.p4(x).flatten(2), self.p8(x).flatten(2)], -1)
        return (t + self.pos).mean(-1)


def test_reshape_minus_one_flattens_the_grid():
    model = FlattenByReshape().eval()
    gm = fxscale.trace(model, _xin(16))
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(24, 24)), resolution_mode="input")
    want = resample_position_embedding(model.pos.detach(), (4, 4), (6, 6), dim=2)
    assert torch.equal(new.pos.detach(), want)
    ref = copy.deepcopy(model)
    ref.pos = nn.Parameter(want)
    x = _xin(24)
    with torch.no_grad():
        torch.testing.assert_close(new(x), ref(x), rtol=0, atol=0)


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
    with pytest.raises(fxscale.PlanError, match=r"node add: pos .*not one block after fixed prefix"):
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


# ---------------------------------------------------------------------------------------------------------
# timm constructs: gathered relative-position biases, token-mixing weights, flattens of non-spatial maps
# ---------------------------------------------------------------------------------------------------------

class _GatheredBiasAttention(nn.Module):
    """LeViT / EfficientFormer attention: scores + ``table[:, idx]``, idx[q, k] = |dy| * W + |dx| on the token grid."""

    def __init__(self, dim: int = 8, heads: int = 2, grid: int = 4) -> None:
        super().__init__()
        from fxscale.passes.spatial_constants.relbias import offset_index
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.qk = nn.Linear(dim, 2 * dim)
        self.table = nn.Parameter(torch.randn(heads, grid * grid))
        self.register_buffer("idx", offset_index((grid, grid), (grid, grid)))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)  # B, N, C
        B, N, C = t.shape
        q, k = self.qk(t).reshape(B, N, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1)) + self.table[:, self.idx]
        v = t.reshape(B, N, self.heads, C // self.heads).transpose(1, 2)
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.head(y.mean(1))


def test_gathered_relative_bias_is_resampled_and_its_index_rebuilt():
    from fxscale.passes.spatial_constants.relbias import offset_index
    model = _GatheredBiasAttention().eval()
    gm = fxscale.trace(model, _xin(16))
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(24, 24)), resolution_mode="input")
    assert torch.equal(new.idx, offset_index((6, 6), (6, 6)))
    assert tuple(new.table.shape) == (2, 36)
    with torch.no_grad():
        assert new(_xin(24)).shape == (1, 5)
    report = new.meta[META]["transform"]["resolution"]
    assert report["relative_biases"][0]["new_grid"] == [6, 6]


def test_offset_index_with_a_query_stride():
    from fxscale.passes.spatial_constants.relbias import offset_index
    got = offset_index((2, 2), (4, 4), 2)
    assert got.shape == (4, 16)
    assert got[1, 2].item() == 0 and got[3, 0].item() == 2 * 4 + 2  # query (0, 1) at key (0, 2); (1, 1) at (0, 0)


class _TokenMixer(nn.Module):
    """MLP-Mixer's token mixing: a Linear over the token dim, one weight per spatial position."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 4, 4)
        self.tokens = nn.Linear(16, 16)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        t = self.embed(x).flatten(2)  # B, C, N
        return self.head(self.tokens(t).mean(-1))


def test_token_mixing_weights_refuse_a_resolution_change_naming_the_node():
    gm = fxscale.trace(_TokenMixer().eval(), _xin(16))
    with pytest.raises(fxscale.PlanError, match=r"node tokens .*spans? a spatial dimension.*without new weights"):
        fxscale.transform(gm, fxscale.ScalingPlan(resolution=(24, 24)))


class _RadixGate(nn.Module):
    """ResNeSt's split attention: a gate reshaped (B, radix, 1, C/radix) -> (B, -1), a 4-D map that is not spatial."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        y = self.conv(x)
        B = y.shape[0]
        g = self.fc(y.mean((2, 3), keepdim=True)).view(B, 2, 1, -1).softmax(1).reshape(B, -1)
        return self.head((y * g.view(B, -1, 1, 1)).mean((2, 3)))


def test_widened_non_spatial_flatten_follows_the_new_width_at_a_new_resolution():
    gm = fxscale.trace(_RadixGate().eval(), _xin(16))
    cg = fxscale.analyze(gm)
    (g,) = [g for g in cg.groups if g.scalable and g.width == 8]
    new = fxscale.transform(gm, fxscale.ScalingPlan(widths={g.name: 12}, resolution=(24, 24)), cg=cg)
    with torch.no_grad():
        assert new(_xin(24)).shape == (1, 5)


class _ClassTokenConvPos(nn.Module):
    """CoaT's conv position encoding: class token prepended, then ``x[:, 1:]`` re-split into the H x W map."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        B, N, C = t.shape
        t = torch.cat([self.cls.expand(B, -1, -1), t], dim=1)
        img = t[:, 1:].transpose(1, 2).reshape(B, C, 4, 4)  # the traced 4 x 4 grid, baked in
        return self.head(self.pos(img).mean((2, 3)) + t[:, 0])


def test_slicing_off_the_class_token_keeps_the_token_grid():
    gm = fxscale.trace(_ClassTokenConvPos().eval(), _xin(16))
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(24, 24)), resolution_mode="input")
    changed = {(c["old"], c["new"]) for c in new.meta[META]["transform"]["resolution"]["constants"]}
    assert changed == {(4, 6)}
    with torch.no_grad():
        assert new(_xin(24)).shape == (1, 5)


class Unroll(nn.Module):
    """Hiera's unroll: each side of the token map cut by literals into (side // 2, 2), sizes computed at init."""

    def __init__(self, side: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, 4)
        self.half = side // 8

    def forward(self, x):
        y = self.proj(x).permute(0, 2, 3, 1)
        y = y.reshape(y.shape[0], self.half, 2, self.half, 2, 8)
        return y.amax((1, 3)).flatten(1)  # the stride-2 phases stay: (B, 2 * 2 * 8)


def test_one_factor_cut_in_two_keeps_the_stride_piece():
    model = Unroll().eval()
    gm = fxscale.trace(model, _xin(16))
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(24, 24)), resolution_mode="input")
    ref = Unroll(24).eval()
    ref.load_state_dict(model.state_dict())
    x = _xin(24)
    with torch.no_grad():
        torch.testing.assert_close(new(x), ref(x), rtol=0, atol=0)
