"""fxscale.passes.lower: SDPA and antialiased resizes rewritten into opset-13 ops, checked against the unlowered
graph in torch and, after export_onnx at opset 13, in ONNX Runtime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

import fxscale
from fxscale.export import ExportError, export_onnx
from fxscale.passes.lower import (
    ADAPTIVE,
    ANTIALIAS,
    SDPA,
    UNFOLD,
    LoweringError,
    antialias_matrix,
    kinds_to_lower,
    lower_for_onnx,
    lowered_copy,
    sdpa_math,
)
from fxscale.tracing import META

torch.set_num_threads(1)


def _targets(gm: fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def _ort(path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


# ------------------------------------------------------------------------------------------ attention

class Attention(nn.Module):
    """q/k/v projection, then F.scaled_dot_product_attention with the given options (mask built from x)."""

    def __init__(self, mask: str | None = None, kv_heads: int = 4, kv_len: int | None = None, **sdpa) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.qkv = nn.Linear(16, 48)
        self.mask, self.kv_heads, self.kv_len, self.sdpa = mask, kv_heads, kv_len, sdpa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, 4, 4).permute(2, 0, 3, 1, 4).unbind(0)
        k, v = k[:, :self.kv_heads, :self.kv_len], v[:, :self.kv_heads, :self.kv_len]
        kw = dict(self.sdpa)
        if self.mask == "bool":  # broadcast [N, 1, L, S]; row 0 of every sample is fully masked
            keep = (q[:, :1].sum(-1, keepdim=True) > 0) | (k[:, :1].sum(-1).unsqueeze(-2) > 0)
            kw["attn_mask"] = torch.cat([torch.zeros_like(keep[:, :, :1]), keep[:, :, 1:]], dim=2)
        elif self.mask == "float":  # additive [N, H, L, S] bias with some -inf entries
            bias = q @ k[:, :1].transpose(-2, -1)
            kw["attn_mask"] = bias.masked_fill(bias > 1.0, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, **kw)


SDPA_CASES = {
    "plain": {},
    "scale": {"scale": 0.3},
    "causal": {"is_causal": True},
    "causal_short_kv": {"is_causal": True, "kv_len": 3},
    "bool_mask": {"mask": "bool"},
    "float_mask_scale": {"mask": "float", "scale": 0.7},
    "gqa": {"kv_heads": 2, "enable_gqa": True},
    "gqa_causal": {"kv_heads": 1, "enable_gqa": True, "is_causal": True},
}


@pytest.mark.parametrize("case", SDPA_CASES)
def test_lowered_sdpa_equals_unlowered(case):
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(1))
    gm = fxscale.trace(Attention(**SDPA_CASES[case]), x)
    low, done = lowered_copy(gm, 13, x)
    assert len(done) == 1 and "matmul/softmax" in done[0]
    assert F.scaled_dot_product_attention in _targets(gm)
    assert F.scaled_dot_product_attention not in _targets(low) and sdpa_math in _targets(low)
    with torch.no_grad():
        ref, got = gm(x), low(x)
    assert torch.isfinite(got).all() and ref.abs().max() > 0.1
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape_q,shape_kv", [((3, 4), (3, 4)), ((2, 5, 8), (2, 7, 8)), ((1, 2, 4, 1, 8), (1, 2, 4, 6, 8))])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_math_matches_torch_on_any_rank(shape_q, shape_kv, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(shape_q, generator=g), torch.randn(shape_kv, generator=g), torch.randn(shape_kv, generator=g)
    mask = torch.rand(shape_q[-2], shape_kv[-2], generator=g) > 0.4
    mask[0] = False  # a fully masked row: torch returns zeros there, not NaN
    for kw in ({"is_causal": causal}, {} if causal else {"attn_mask": mask}):
        torch.testing.assert_close(sdpa_math(q, k, v, **kw), F.scaled_dot_product_attention(q, k, v, **kw),
                                   atol=1e-5, rtol=1e-5)


def test_sdpa_dropout_is_dropped_for_inference():
    q = torch.randn(1, 2, 4, 8)
    gm = fx.symbolic_trace(_DropoutAttn())
    low, done = lowered_copy(gm, 13, q)
    assert "dropout_p=0.1 dropped" in done[0]
    torch.testing.assert_close(low(q), F.scaled_dot_product_attention(q, q, q), atol=1e-6, rtol=1e-6)


class _DropoutAttn(nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)


# ------------------------------------------------------------------------------------------ antialiased resize

class Resize(nn.Module):
    def __init__(self, **kw) -> None:
        super().__init__()
        self.kw = kw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, antialias=True, **self.kw) * 2.0


AA_CASES = [{"size": (16, 16)}, {"size": (13, 11)}, {"scale_factor": 0.37}, {"scale_factor": (0.5, 0.7)},
            {"size": (9, 20), "align_corners": True}, {"scale_factor": 0.45, "recompute_scale_factor": True},
            {"size": (40, 17)}]


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("kw", AA_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_lowered_antialias_resize_is_exact(mode, kw):
    x = torch.randn(2, 3, 32, 29, generator=torch.Generator().manual_seed(2))
    gm = fxscale.trace(Resize(mode=mode, **kw), x)
    low, done = lowered_copy(gm, 13, x)
    assert len(done) == 1 and "(exact)" in done[0] and F.interpolate not in _targets(low)
    with torch.no_grad():
        ref, got = gm(x), low(x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-5
    # antialiasing matters here, so dropping it would fail the comparison above
    plain = 2.0 * F.interpolate(x, mode=mode, **kw)
    if ref.shape[-1] < x.shape[-1] and ref.shape[-2] < x.shape[-2]:
        assert (plain - ref).abs().max().item() > 1e-2


def test_antialias_matrix_rows_are_normalised_low_pass():
    w = antialias_matrix(32, 0, (8, 8), None, "bilinear", False, None)
    assert w.shape == (8, 32)
    torch.testing.assert_close(w.sum(1), torch.ones(8))
    # triangle support scaled by the 4x downscale factor: 8 taps inside (plain bilinear: 2), cut at the borders
    assert (w[1:-1] > 0).sum(1).tolist() == [8] * 6 and (w[[0, -1]] > 0).sum(1).tolist() == [6, 6]


class ResizeToLike(nn.Module):
    """size computed in the graph (y.shape[-2:]): lowered with the recorded output size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.avg_pool2d(x, 3)
        return F.interpolate(x, size=y.shape[-2:], mode="bilinear", antialias=True) + y


class ResizeByGraphFactor(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=x.shape[-1] / 64, mode="bilinear", antialias=True)


def test_antialias_size_from_graph_and_factor_from_graph():
    x = torch.randn(1, 2, 24, 24)
    gm = fxscale.trace(ResizeToLike(), x)
    low, _ = lowered_copy(gm, 13, x)
    assert (low(x) - gm(x)).abs().max().item() < 1e-5
    gm2 = fx.symbolic_trace(ResizeByGraphFactor())
    with pytest.raises(LoweringError, match="'interpolate'.*scale_factor is computed in the graph"):
        lowered_copy(gm2, 13, x)


# ------------------------------------------------------------------------------------------ when to lower

def test_kinds_to_lower_follow_native_exporter_support():
    assert kinds_to_lower(13) == (SDPA, ANTIALIAS, UNFOLD, ADAPTIVE)
    # torchscript never writes the AA resize, nor Tensor.unfold after a dynamic pad (timm HaloAttn), nor an
    # adaptive average pool whose output does not divide its input
    assert kinds_to_lower(14) == kinds_to_lower(18) == (ANTIALIAS, UNFOLD, ADAPTIVE)
    assert kinds_to_lower(13, "dynamo") == (SDPA, ANTIALIAS)
    assert kinds_to_lower(17, "dynamo") == (ANTIALIAS,) and kinds_to_lower(18, "dynamo") == ()
    x = torch.randn(1, 6, 16)
    assert lowered_copy(fxscale.trace(Attention(), x), 17, x)[1] == []
    gqa = fxscale.trace(Attention(kv_heads=2, enable_gqa=True), x)
    assert len(lowered_copy(gqa, 17, x)[1]) == 1  # the torchscript SDPA symbolic refuses enable_gqa at any opset
    with pytest.raises(LoweringError, match="unknown"):
        lower_for_onnx(gqa, 13, kinds=["flash"])


class AdaptivePools(nn.Module):
    """An nn.AdaptiveAvgPool2d and an F.adaptive_avg_pool2d whose outputs do not divide their inputs."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(7)

    def forward(self, x):
        return self.pool(x).sum((2, 3)) + F.adaptive_avg_pool2d(x, (3, None)).mean((2, 3))


@pytest.mark.parametrize("hw", [(10, 10), (9, 13), (14, 21)])
def test_adaptive_pool_lowered_exactly_and_exported(tmp_path, hw):
    x = torch.randn(2, 4, *hw, generator=torch.Generator().manual_seed(0))
    gm = fxscale.trace(AdaptivePools(), x)
    low, what = lowered_copy(gm, 17, x)
    expect = int(hw[0] % 7 != 0 or hw[1] % 7 != 0) + int(hw[0] % 3 != 0)  # only bins that do not divide
    assert len(what) == expect and all("adaptive average pool" in w for w in what)
    with torch.no_grad():
        torch.testing.assert_close(low(x), gm(x), rtol=1e-5, atol=1e-6)
    rep = export_onnx(gm, tmp_path / "pool.onnx", x, opset=17)
    assert rep.max_abs_diff < 1e-5 and len(rep.lowered) == len(what)


# ------------------------------------------------------------------------------------------ ONNX at opset 13

def test_sdpa_model_exports_at_opset13(tmp_path):
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(3))
    gm = fxscale.trace(Attention(mask="float", kv_heads=2, enable_gqa=True, scale=0.5), x)
    rep = export_onnx(gm, tmp_path / "attn.onnx", x, dynamic_batch=True)
    assert rep.opset == 13 and len(rep.lowered) == 1 and rep.max_abs_diff < 1e-5
    ops = {n.op_type for n in onnx.load(str(rep.path)).graph.node}
    assert {"MatMul", "Softmax"} <= ops
    x3 = torch.randn(3, 6, 16)
    with torch.no_grad():
        ref = gm(x3).numpy()
    np.testing.assert_allclose(_ort(rep.path, x3), ref, atol=1e-5, rtol=1e-4)


def test_causal_sdpa_exports_at_opset13(tmp_path):
    x = torch.randn(1, 6, 16)
    gm = fxscale.trace(Attention(is_causal=True), x)
    rep = export_onnx(gm, tmp_path / "causal.onnx", x)
    assert "Trilu" not in {n.op_type for n in onnx.load(str(rep.path)).graph.node}  # Trilu needs opset 14
    np.testing.assert_allclose(_ort(rep.path, x), gm(x).detach().numpy(), atol=1e-5, rtol=1e-4)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.conv(x).relu()), 1))


@pytest.mark.parametrize("size", [(20, 20), (16, 22)])  # 1.6x both ways; 2x and 1.45x
def test_resolution_down_resize_exports_at_opset13(tmp_path, size):
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    gm = fxscale.transform(fxscale.trace(SmallCNN(), x), fxscale.ScalingPlan(resolution=size),
                           resolution_mode="resize")
    node = next(n for n in gm.graph.nodes if n.target is F.interpolate)
    assert node.kwargs["antialias"] is True
    rep = export_onnx(gm, tmp_path / "down.onnx", x, dynamic_batch=True)
    assert rep.opset == 13 and len(rep.lowered) == 1 and rep.max_abs_diff < 1e-5
    x3 = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = gm(x3).numpy()
    assert ref.std() > 1e-3
    np.testing.assert_allclose(_ort(rep.path, x3), ref, atol=1e-5, rtol=1e-4)


def _snapshot(gm: fx.GraphModule) -> dict:
    return {"code": gm.code, "state": {k: v.clone() for k, v in gm.state_dict().items()},
            "attrs": sorted(dict(gm.named_buffers())) + sorted(dict(gm.named_modules())),
            "node_meta": [(n.name, repr(n.meta.get(META)), sorted(n.meta)) for n in gm.graph.nodes],
            "targets": [(n.op, n.target, n.args, dict(n.kwargs)) for n in gm.graph.nodes],
            "gm_meta": sorted(gm.meta), "training": gm.training}


def test_users_graph_module_is_unchanged_by_export(tmp_path):
    x = torch.randn(1, 3, 32, 32)
    gm = fxscale.transform(fxscale.trace(SmallCNN(), x), fxscale.ScalingPlan(resolution=(20, 20)),
                           resolution_mode="resize").train()
    xa = torch.randn(1, 6, 16)
    attn = fxscale.trace(Attention(mask="bool"), xa)
    for model, inp in ((gm, x), (attn, xa)):
        before = _snapshot(model)
        rep = export_onnx(model, tmp_path / "m.onnx", inp)
        assert rep.lowered
        after = _snapshot(model)
        assert {k: v for k, v in after.items() if k != "state"} == {k: v for k, v in before.items() if k != "state"}
        assert after["state"].keys() == before["state"].keys()
        assert all(torch.equal(before["state"][k], v) for k, v in after["state"].items())
    low, _ = lowered_copy(gm, 13, x)
    assert low.conv.weight is gm.conv.weight  # the copy shares the weights instead of duplicating them


class MHA(nn.Module):
    def __init__(self, need_weights: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mha, self.need_weights = nn.MultiheadAttention(16, 4, batch_first=True), need_weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.mha(x, x, x, need_weights=self.need_weights)
        return out


@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_exports_at_opset13(tmp_path, need_weights):
    """need_weights=True already exports; need_weights=False runs SDPA inside the leaf and is switched over."""
    x = torch.randn(2, 5, 16)
    gm = fxscale.trace(MHA(need_weights), x)
    low, done = lowered_copy(gm, 13, x)
    assert len(done) == (0 if need_weights else 1)
    torch.testing.assert_close(low(x), gm(x), atol=1e-5, rtol=1e-5)
    rep = export_onnx(gm, tmp_path / "mha.onnx", x)
    assert rep.lowered == tuple(done) and rep.max_abs_diff < 1e-5
    assert len(onnx.load(str(rep.path)).graph.output) == 1


def test_torchvision_vit_exports_at_opset13(tmp_path):
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=4)
    nn.init.normal_(vit.heads.head.weight)  # torchvision zero-initialises the head: outputs would all be 0
    x = torch.randn(1, 3, 32, 32)
    gm = fxscale.trace(vit, x)
    rep = export_onnx(gm, tmp_path / "vit.onnx", x)
    assert len(rep.lowered) == 2 and all("MultiheadAttention" in line for line in rep.lowered)
    with torch.no_grad():
        ref = gm(x).numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(_ort(rep.path, x), ref, atol=1e-5, rtol=1e-4)


def test_plain_module_with_sdpa_gets_a_hint(tmp_path):
    with pytest.raises(ExportError, match="fxscale.trace"):
        export_onnx(Attention(), tmp_path / "m.onnx", torch.randn(1, 6, 16))
