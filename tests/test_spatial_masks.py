"""Shifted-window attention masks: recomputed, never resampled, at a new resolution; other constants refused."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fxscale
from fxscale.passes.spatial_constants.masks import match_window_mask, shifted_window_mask

timm = pytest.importorskip("timm", reason="timm is not installed (pip install timm): the timm tests are skipped")
swin = pytest.importorskip("timm.models.swin_transformer")


@pytest.mark.parametrize("res,window,shift", [((14, 14), 7, 3), ((28, 14), 7, 2), ((8, 12), 4, 2)])
def test_mask_formula_equals_timm(res, window, shift):
    block = swin.SwinTransformerBlock(dim=8, input_resolution=res, num_heads=2, window_size=window,
                                      shift_size=shift)
    grid = (res[0] // window, res[1] // window)
    got = shifted_window_mask(grid, (window, window), (shift, shift), -100.0)
    assert torch.equal(got, block.attn_mask)
    assert ((window, window), (shift, shift), -100.0) in match_window_mask(block.attn_mask[None, :, None], 1, grid)


def test_not_a_mask_is_not_matched():
    t = torch.randn(1, 4, 1, 49, 49)
    assert match_window_mask(t, 1, (2, 2)) is None
    zero_one = shifted_window_mask((2, 2), (7, 7), (3, 3), -100.0)
    assert match_window_mask(zero_one.flip(-1)[None, :, None], 1, (2, 2)) is None  # not Swin's region rule


def _tiny_swin(img: int) -> nn.Module:
    torch.manual_seed(0)
    return swin.SwinTransformer(img_size=img, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 2),
                                window_size=7, num_classes=5).eval()


def _at_size(model: nn.Module, side: int) -> nn.Module:
    """The same weights, windows and shifts with every block's mask built by timm for the new size."""
    ref = copy.deepcopy(model)
    ref.patch_embed.strict_img_size, ref.patch_embed.img_size = False, (side, side)
    feat = (side // 4, side // 4)
    for i, layer in enumerate(ref.layers):
        feat = feat if i == 0 else ((feat[0] + 1) // 2, (feat[1] + 1) // 2)
        layer.input_resolution = layer.output_resolution = feat
        for b in layer.blocks:
            b.input_resolution = feat
            b._init_buffers()
    return ref


@pytest.mark.parametrize("side", [84, 112])
def test_swin_mask_recomputed_exactly(side):
    model = _tiny_swin(56)
    gm = fxscale.trace(model, torch.randn(1, 3, 56, 56))
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(side, side)), resolution_mode="input")
    masks = [t for n, t in new.named_buffers() if t.dim() == 5]
    assert masks and all(set(torch.unique(t).tolist()) == {-100.0, 0.0} for t in masks)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(new(x), _at_size(model, side)(x), rtol=0, atol=1e-5)


class ConstantBias(nn.Module):
    """A fixed (buffer) table added to the tokens: a constant of the traced grid that no rule recomputes."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, 4)
        self.register_buffer("table", torch.randn(1, 16, 8))

    def forward(self, x):
        return (self.proj(x).flatten(2).transpose(1, 2) + self.table).mean(1)


def test_constant_over_tokens_is_refused_naming_the_node():
    gm = fxscale.trace(ConstantBias().eval(), torch.randn(1, 3, 16, 16))
    with pytest.raises(fxscale.PlanError, match=r"node add: table .*is a constant, not a learned parameter"):
        fxscale.transform(gm, fxscale.ScalingPlan(resolution=(24, 24)))


def _timm_at(name: str, side: int, state: dict) -> nn.Module:
    """timm's own model built for ``side`` with the given weights (buffers it builds itself are kept)."""
    ref = timm.create_model(name, num_classes=5, img_size=side).eval()
    own = ref.state_dict()
    ref.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False)
    return ref


@pytest.mark.parametrize("name,side", [
    ("levit_128s", 96),  # reshape(B, -1, C) of a subsampled (rows, cols) grid; absolute-offset bias tables
    ("coatnet_nano_rw_224", 96),  # Swin-style signed-offset table as the attn_mask of SDPA over the whole map
])
def test_attention_biases_follow_the_grid_like_timm(name, side):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=5, img_size=64).eval()
    gm = fxscale.trace(model, torch.randn(1, 3, 64, 64))
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(side, side)), resolution_mode="input")
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(new(x), _timm_at(name, side, new.state_dict())(x), rtol=0, atol=1e-5)


def lookup(table: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """One table entry per token, indexed by position (valid only up to the table's length)."""
    return table[torch.arange(t.shape[-1])]


class OpaqueTable(nn.Module):
    """Tokens plus a per-position table read inside an fx-wrapped function (opaque to the rules)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Conv2d(3, 4, 4, 4)
        self.table = nn.Parameter(torch.randn(16))

    def forward(self, x):
        t = self.proj(x).flatten(2)
        return (t + lookup(self.table, t)).mean(-1)


def test_opaque_code_is_verified_by_a_real_forward():
    gm = fxscale.trace(OpaqueTable().eval(), torch.randn(1, 3, 16, 16), autowrap_functions=[lookup])
    assert any(n.target is lookup for n in gm.graph.nodes)
    with pytest.raises(fxscale.VerificationError, match=r"opaque_forward: .*node lookup .*IndexError"):
        fxscale.transform(gm, fxscale.ScalingPlan(resolution=(24, 24)), resolution_mode="input")
