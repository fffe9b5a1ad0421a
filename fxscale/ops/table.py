"""The op table: one row per op, read by analysis, cost, width, depth, resolution and the latency predictor.

Rows are grouped by form (leaf module type, function, tensor method). A key appears in exactly one row
(tested). Lookups: ``module_row(mod)``, ``node_row(node, modules)``; ``list_ops()`` / ``get_op(name)`` follow
timm's registry style. Anything not in the table has no rule: its operands and outputs are frozen.
"""
from __future__ import annotations

import fnmatch
import math
import operator
from typing import Any, Iterable, Mapping, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxscale.analysis import functional as FN
from fxscale.analysis import layers as L
from fxscale.analysis import ops as O
from fxscale.ops.row import Interval, OpRow

_ACT_ZERO = (nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Hardswish,
             nn.Softsign, nn.Tanhshrink)
_ACT_OTHER = (nn.Softplus, nn.Softmax, nn.LogSoftmax)
_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d)
# zero-keeping spatial resamplers that are not max/mean pools (bicubic overshoots, zero padding adds zeros)
_RESAMPLE_MODULES = (nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d, nn.ZeroPad2d,
                     nn.ReflectionPad2d, nn.ReplicationPad2d)
_NORM_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
            nn.SyncBatchNorm)
_POOL_FNS = (F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool1d,
             F.max_pool1d, F.avg_pool1d, F.max_pool3d, F.avg_pool3d, F.adaptive_avg_pool3d)


def _m(name: str, keys: Iterable[type], rule: Any, **kw: Any) -> OpRow:
    return OpRow(name, "module", tuple(keys), rule, **kw)


def _f(name: str, keys: Iterable[Any], rule: Any, **kw: Any) -> OpRow:
    return OpRow(name, "function", tuple(keys), rule, **kw)


def _meth(name: str, keys: Iterable[str], rule: Any, **kw: Any) -> OpRow:
    return OpRow(name, "method", tuple(keys), rule, **kw)


_ALL: Interval = (-math.inf, math.inf)  # identity_on of identities, dropout, contiguous, reshapes
_RELU: Interval = (0.0, math.inf)
_UNIT: Interval = (0.0, 1.0)


def _hardtanh_module(m: nn.Hardtanh) -> Interval:
    return (float(m.min_val), float(m.max_val))


def _hardtanh_call(n: fx.Node) -> Interval:
    lo = n.args[1] if len(n.args) > 1 else n.kwargs.get("min_val", -1.0)
    hi = n.args[2] if len(n.args) > 2 else n.kwargs.get("max_val", 1.0)
    return (float(lo), float(hi))


def _no_rule(name: str, keys: Iterable[Any], cost: Any, kind: str) -> OpRow:
    """Costed, but without a channel rule: every operand is frozen."""
    return _f(name, keys, O.unknown, cost=cost, kind=kind, doc="no channel rule: operands frozen")


_SAME = dict(zero=True, layout=True, kind="view")
ROWS: list[OpRow] = [
    # ---- leaf modules -------------------------------------------------------------------------------------
    _m("conv", (nn.Conv1d, nn.Conv2d, nn.Conv3d), L.conv, cost=L.conv_cost, kind="conv", spatial="pool",
       patch=L.patch_conv),
    _m("conv_transpose", (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), L.conv_transpose,
       cost=L.conv_transpose_cost, kind="convT", spatial="pool", patch=L.patch_conv_transpose),
    _m("linear", (nn.Linear,), L.linear, cost=L.linear_cost, kind="linear", patch=L.patch_linear),
    _m("batchnorm", _NORM_BN, L.batchnorm, kind="norm", patch=L.patch_batchnorm),
    _m("groupnorm", (nn.GroupNorm,), L.groupnorm, kind="norm", patch=L.patch_groupnorm),
    _m("layernorm", (nn.LayerNorm,), L.layernorm, kind="norm", patch=L.patch_layernorm),
    _m("mha", (nn.MultiheadAttention,), L.mha, cost=L.mha_cost, kind="attention", patch=L.patch_mha),
    _m("flatten_module", (nn.Flatten,), L.flatten_module, spatial="view", identity_on=_ALL, **_SAME),
    _m("identity_module", (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                           nn.FeatureAlphaDropout), L.unary, identity_on=_ALL, **_SAME),
    _m("relu", (nn.ReLU,), L.unary, kind="elementwise", zero=True, identity_on=_RELU),
    _m("hardtanh", (nn.Hardtanh, nn.ReLU6), L.unary, kind="elementwise", zero=True, identity_on=_hardtanh_module),
    _m("activation_zero", _ACT_ZERO, L.unary, kind="elementwise", zero=True),
    _m("sigmoid", (nn.Sigmoid, nn.Hardsigmoid), L.unary, kind="elementwise", bounds=_UNIT),
    _m("activation", _ACT_OTHER, L.unary, kind="elementwise"),
    _m("pool_module", _POOL_MODULES, L.spatial, kind="pool", zero=True, spatial="pool"),
    _m("resample_module", _RESAMPLE_MODULES, L.spatial, kind="pool", zero=True, spatial="pool"),
    _m("pad_module", (nn.ConstantPad2d,), L.spatial, kind="pool", spatial="pool"),
    # ---- functions --------------------------------------------------------------------------------------------
    _f("add", (operator.add, operator.iadd, torch.add), O.elementwise, kind="elementwise", arith="add"),
    _f("sub", (operator.sub, operator.isub, torch.sub), O.elementwise, kind="elementwise", arith="sub"),
    _f("mul", (operator.mul, operator.imul, torch.mul), O.elementwise, kind="elementwise", arith="mul"),
    _f("div", (operator.truediv, operator.itruediv, torch.div), O.elementwise, kind="elementwise", arith="div"),
    _f("pow", (operator.pow, torch.pow), O.elementwise, kind="elementwise", arith="pow"),
    _f("minmax", (torch.maximum, torch.minimum), O.elementwise, kind="elementwise", arith="max"),
    _f("where", (torch.where,), O.elementwise, kind="elementwise", arith="where"),
    _f("clamp", (torch.clamp,), O.elementwise, kind="elementwise", arith="clamp"),
    _f("relu_fn", (F.relu, torch.relu, torch.relu_), O.passthrough, kind="elementwise", zero=True, identity_on=_RELU),
    _f("relu6_fn", (F.relu6,), O.passthrough, kind="elementwise", zero=True, identity_on=(0.0, 6.0)),
    _f("hardtanh_fn", (F.hardtanh,), O.passthrough, kind="elementwise", zero=True, identity_on=_hardtanh_call),
    _f("unary_zero", (F.gelu, F.silu, F.hardswish, F.elu, F.leaky_relu, F.mish, torch.tanh, F.tanh, torch.abs,
                      torch.neg, operator.neg, torch.sqrt, F.normalize), O.passthrough, kind="elementwise", zero=True),
    _f("dropout", (F.dropout, F.dropout2d), O.passthrough, kind="elementwise", zero=True, layout=True,
       identity_on=_ALL),
    _f("sigmoid_fn", (F.hardsigmoid, F.sigmoid, torch.sigmoid), O.passthrough, kind="elementwise", bounds=_UNIT),
    _f("unary", (F.softmax, F.log_softmax, torch.softmax, torch.exp, torch.rsqrt), O.passthrough, kind="elementwise"),
    _f("pool", _POOL_FNS, O.spatial_fn, kind="pool", zero=True, spatial="pool"),
    _f("interpolate", (F.interpolate,), O.spatial_fn, kind="resize", zero=True, spatial="pool"),
    _f("pad", (F.pad,), O.pad_fn, kind="elementwise", spatial="pool"),
    _f("getitem", (operator.getitem,), O.getitem, spatial="view", **_SAME),
    _f("flatten", (torch.flatten,), O.flatten_fn, spatial="view", identity_on=_ALL, **_SAME),
    _f("reshape", (torch.reshape,), O.view_like, spatial="view", identity_on=_ALL, **_SAME),
    _f("squeeze", (torch.squeeze,), O.squeeze_unsqueeze, spatial="view", identity_on=_ALL, **_SAME),
    _f("unsqueeze", (torch.unsqueeze,), O.squeeze_unsqueeze, spatial="view", identity_on=_ALL, **_SAME),
    _f("permute", (torch.permute,), O.permute, **_SAME),
    _f("transpose", (torch.transpose, torch.swapaxes), O.transpose, **_SAME),
    _f("movedim", (torch.movedim,), O.movedim, **_SAME),
    _f("cat", (torch.cat, torch.concat), O.cat, kind="concat", zero=True),
    _f("stack", (torch.stack,), O.stack, kind="concat", zero=True),
    _f("split", (torch.split, torch.chunk, torch.unbind), O.split, **_SAME),
    _f("reduce", (torch.mean, torch.sum, torch.amax), O.reduce_dims, kind="reduce", zero=True, spatial="pool"),
    _f("matmul", (torch.matmul, operator.matmul, torch.bmm, torch.mm), O.matmul, cost=O.matmul_cost,
       kind="matmul", zero=True),
    _f("layer_norm_fn", (F.layer_norm,), O.layer_norm_fn, kind="norm"),
    _f("batch_norm_fn", (F.batch_norm,), FN.batch_norm_fn, kind="norm"),
    _f("group_norm_fn", (F.group_norm,), FN.group_norm_fn, kind="norm"),
    _f("linear_fn", (F.linear,), FN.linear_fn, cost=O.linear_fn_cost, kind="linear"),
    _f("conv_fn", (F.conv1d, F.conv2d, F.conv3d), FN.conv_fn, cost=O.conv_fn_cost, kind="conv", spatial="pool"),
    _f("addcmul", (torch.addcmul,), FN.addcmul, kind="elementwise"),
    _f("norm", (torch.norm, torch.linalg.vector_norm), FN.norm, kind="reduce", spatial="pool"),
    _f("size", (getattr,), O.size_of, kind="view", spatial="none"),
    _f("floordiv", (operator.floordiv,), O.size_arith, kind="view", spatial="none"),
    _f("compare", (operator.eq,), O.ignore, kind="view", spatial="none"),
    _f("scalar", (torch._assert, len), O.ignore, kind="view", spatial="none"),
    _f("sdpa", (F.scaled_dot_product_attention,), FN.sdpa, cost=O.sdpa_cost, kind="attention"),
    _no_rule("einsum", (torch.einsum,), O.einsum_cost, "matmul"),
    # ---- tensor methods -------------------------------------------------------------------------------------
    _meth("add_m", ("add", "__add__", "__radd__", "add_"), O.elementwise, kind="elementwise", arith="add"),
    _meth("sub_m", ("sub", "__sub__", "sub_"), O.elementwise, kind="elementwise", arith="sub"),
    _meth("mul_m", ("mul", "__mul__", "__rmul__", "mul_"), O.elementwise, kind="elementwise", arith="mul"),
    _meth("div_m", ("div", "__truediv__", "div_"), O.elementwise, kind="elementwise", arith="div"),
    _meth("pow_m", ("pow", "pow_"), O.elementwise, kind="elementwise", arith="pow"),
    _meth("minmax_m", ("maximum", "minimum"), O.elementwise, kind="elementwise", arith="max"),
    _meth("where_m", ("where", "masked_fill", "masked_fill_"), O.elementwise, kind="elementwise", arith="where"),
    _meth("clamp_m", ("clamp", "clamp_min", "clamp_max", "clamp_", "clamp_min_", "clamp_max_"), O.elementwise, kind="elementwise", arith="clamp"),
    _meth("expand_as", ("expand_as",), O.elementwise, kind="view", arith="expand", zero=True),
    _meth("addcmul_m", ("addcmul", "addcmul_"), FN.addcmul, kind="elementwise"),
    _meth("norm_m", ("norm",), FN.norm, kind="reduce", spatial="pool"),
    _meth("relu_m", ("relu", "relu_"), O.passthrough, kind="elementwise", zero=True, identity_on=_RELU),
    _meth("unary_zero_m", ("tanh", "abs", "abs_", "neg", "sqrt", "tanh_", "neg_", "sqrt_"), O.passthrough, kind="elementwise", zero=True),
    _meth("sigmoid_m", ("sigmoid", "sigmoid_"), O.passthrough, kind="elementwise", bounds=_UNIT),
    _meth("unary_m", ("exp", "softmax", "exp_"), O.passthrough, kind="elementwise"),
    _meth("copy_m", ("clone", "float", "half", "bfloat16", "to", "type", "type_as", "detach"), O.passthrough,
          kind="elementwise", zero=True, layout=True),
    _meth("contiguous", ("contiguous",), O.passthrough, identity_on=_ALL, **_SAME),
    _meth("flatten_m", ("flatten",), O.flatten_fn, spatial="view", identity_on=_ALL, **_SAME),
    _meth("reshape_m", ("view", "reshape"), O.view_like, spatial="view", identity_on=_ALL, **_SAME),
    # sizes come from the other tensor ("pool": from its own arguments, nothing for the resolution solver to
    # re-derive; the spatial-rule tests list the reason next to expand_as); a pure layout op
    _meth("reshape_as", ("reshape_as", "view_as"), FN.reshape_as, kind="view", zero=True, spatial="pool",
          identity_on=_ALL, layout=True),
    _meth("squeeze_m", ("squeeze",), O.squeeze_unsqueeze, spatial="view", identity_on=_ALL, **_SAME),
    _meth("unsqueeze_m", ("unsqueeze",), O.squeeze_unsqueeze, spatial="view", identity_on=_ALL, **_SAME),
    _meth("permute_m", ("permute",), O.permute, **_SAME),
    _meth("transpose_m", ("transpose", "swapaxes"), O.transpose, **_SAME),
    _meth("movedim_m", ("movedim",), O.movedim, **_SAME),
    _meth("reduce_m", ("mean", "sum", "amax"), O.reduce_dims, kind="reduce", zero=True, spatial="pool"),
    _meth("split_m", ("split", "chunk", "unbind"), O.split, **_SAME),
    _meth("expand", ("expand",), O.expand, spatial="view", **_SAME),
    _meth("repeat", ("repeat",), O.repeat, spatial="view", **_SAME),
    _meth("size_m", ("size",), O.size_of, kind="view", spatial="none"),
    _meth("dim_m", ("dim",), O.ignore, kind="view", spatial="none"),
    _meth("matmul_m", ("matmul",), O.matmul, cost=O.matmul_cost, kind="matmul", zero=True),
]


def _torchvision_rows() -> list[OpRow]:
    """torchvision functions that appear as call_function nodes (fx.wrap'ed)."""
    from torchvision.models import swin_transformer as swin
    from torchvision.ops import stochastic_depth
    wins = tuple(f for f in (swin.shifted_window_attention, getattr(swin, "shifted_window_attention_v2", None)) if f)
    return [_f("stochastic_depth", (stochastic_depth,), O.passthrough, kind="elementwise", zero=True),
            _no_rule("window_attention", wins, O.window_attention_cost, "attention")]


def _timm_rows() -> list[OpRow]:
    """timm leaf modules (its FX notrace registry) keyed by import path: timm is optional and never imported here.
    Only those whose forward is a known op; the others are traced into."""
    conv = dict(cost=L.conv_cost, kind="conv", spatial="pool", patch=L.patch_conv)
    return [_m("conv_same", ("timm.layers.conv2d_same.Conv2dSame",), L.conv, **conv),
            _m("std_conv_same", ("timm.layers.std_conv.StdConv2dSame", "timm.layers.std_conv.ScaledStdConv2dSame"),
               L.std_conv, **conv),
            _m("pool_same", ("timm.layers.pool2d_same.MaxPool2dSame", "timm.layers.pool2d_same.AvgPool2dSame"),
               L.spatial, kind="pool", spatial="pool")]


ROWS += _torchvision_rows() + _timm_rows()
UNKNOWN = _f("unknown", (), O.unknown, kind="other", doc="no rule: every operand is frozen")

_BY_FN: Mapping[Any, OpRow] = {k: r for r in ROWS if r.form == "function" for k in r.keys}
_BY_METHOD: Mapping[str, OpRow] = {k: r for r in ROWS if r.form == "method" for k in r.keys}
_MODULE_ROWS = [r for r in ROWS if r.form == "module"]


def _qualname(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def module_class_row(t: type) -> Optional[OpRow]:
    """The row of a leaf module type: its exact type (or import path, for rows of optional packages such as
    timm, which the table never imports), else the first row with a key it subclasses *without overriding
    forward* (a subclass with its own forward computes something else: no rule, its channels are frozen)."""
    name = _qualname(t)
    for r in _MODULE_ROWS:
        if t in r.keys or name in r.keys:
            return r
    for r in _MODULE_ROWS:
        for k in r.keys:
            if isinstance(k, type) and issubclass(t, k) and t.forward is k.forward:
                return r
    return None


def module_row(mod: nn.Module) -> Optional[OpRow]:
    """The row of a leaf module (see module_class_row); None if unknown."""
    return module_class_row(type(mod))


def node_row(node: fx.Node, modules: Optional[Mapping[str, nn.Module]] = None) -> Optional[OpRow]:
    """The row of a call node; UNKNOWN for functions/methods without one, None for other nodes or modules."""
    if node.op == "call_function":
        return _BY_FN.get(node.target, UNKNOWN)
    if node.op == "call_method":
        return _BY_METHOD.get(node.target, UNKNOWN)
    if node.op == "call_module" and modules is not None:
        return module_row(modules[node.target])
    return None


def list_ops(pattern: str = "*") -> list[str]:
    """Row names matching an fnmatch pattern, in table order."""
    return [r.name for r in ROWS if fnmatch.fnmatch(r.name, pattern)]


def get_op(name: str) -> OpRow:
    """The row called `name`."""
    for r in ROWS:
        if r.name == name:
            return r
    raise KeyError(f"no op row {name!r}; known: {', '.join(list_ops())}")


__all__ = ["ROWS", "UNKNOWN", "module_row", "module_class_row", "node_row", "list_ops", "get_op"]
