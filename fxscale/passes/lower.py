"""Lower ops the ONNX exporters cannot write at low opsets (TensorRT on Jetson TX2 needs opset 13) into
opset-13 primitives, on an fx graph, before export.

* ``F.scaled_dot_product_attention`` (torchscript exporter: opset >= 14 only) becomes
  ``softmax(q @ k^T * scale + mask) @ v`` with torch's semantics (bool masks via masked_fill(-inf), causal
  masks as ``j <= i``, default scale 1/sqrt(E), GQA head repetition, fully masked rows -> 0 like torch's safe
  softmax). Dropout is dropped: export is for inference.
  ``nn.MultiheadAttention`` called with ``need_weights=False`` runs SDPA inside (torchvision's ViT does): it
  is switched to its ``need_weights=True`` path, the same math as explicit bmm/softmax (the unused weights
  output is dropped by the exporter).
* ``F.interpolate(..., antialias=True)`` (torchscript: never; dynamo: opset >= 18 only) becomes EXACTLY the
  separable linear map torch computes, ``W_h @ x @ W_w^T``, with both matrices read off torch's own kernel by
  resizing one-hot bases (so align_corners, scale_factor and recompute_scale_factor behave the same). Two
  MatMuls export at any opset and match the antialiased resize to float rounding (~1e-6), unlike a low-pass
  conv plus plain interpolation, which only approximates it.
* ``adaptive_avg_pool2d`` to an output size that does not divide the input (torchscript: never) becomes the
  same separable average, ``P_h @ x @ P_w^T`` with torch's bins ``[floor(i*H/o), ceil((i+1)*H/o))``.

Nodes keep their identity and ``node.meta`` (including ``node.meta["fxscale"]`` shapes): only their target and
arguments change. ``lower_for_onnx`` edits a graph in place; ``lowered_copy`` never touches the caller's module.
"""
from __future__ import annotations

import copy
import inspect
import math
import operator
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from fxscale.errors import LoweringError
from fxscale.tracing import META

SDPA = "scaled_dot_product_attention"
ANTIALIAS = "antialias_resize"
UNFOLD = "tensor_unfold"
ADAPTIVE = "adaptive_avg_pool"
KINDS = (SDPA, ANTIALIAS, UNFOLD, ADAPTIVE)
# First opset at which each exporter writes the op itself; None: never (no symbolic for aten::_upsample_*_aa).
NATIVE_OPSET: dict[str, dict[str, int | None]] = {
    # Tensor.unfold: the torchscript symbolic needs the unfolded dim's size, which is lost after a dynamic pad
    # (timm's HaloAttn), so it is always lowered to an index_select with a fixed window index
    "torchscript": {SDPA: 14, ANTIALIAS: None, UNFOLD: None, ADAPTIVE: None},
    # dynamo decomposes SDPA with Trilu (opset 14) and, for a dynamic batch, Shape(start, end) (opset 15);
    # its antialiased Resize needs opset 18
    "dynamo": {SDPA: 15, ANTIALIAS: 18, UNFOLD: 1, ADAPTIVE: 1},
}
# The torchscript exporter's SDPA symbolic refuses enable_gqa=True at every opset.
_SDPA_TARGETS = {F.scaled_dot_product_attention, torch.ops.aten.scaled_dot_product_attention,
                 torch.ops.aten.scaled_dot_product_attention.default}
_INTERPOLATE_SIG = inspect.signature(F.interpolate)
_MHA_SIG = inspect.signature(nn.MultiheadAttention.forward)


def _sdpa_signature(query: Any, key: Any, value: Any, attn_mask: Any = None, dropout_p: Any = 0.0,
                    is_causal: Any = False, scale: Any = None, enable_gqa: Any = False) -> None:
    """Argument names and defaults of F.scaled_dot_product_attention (a builtin without a signature)."""


_SDPA_SIG = inspect.signature(_sdpa_signature)


# ------------------------------------------------------------------------------------------ runtime ops

def sdpa_math(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
              is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention (inference, no dropout) from MatMul/Softmax/Where-level ops only."""
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    if enable_gqa:  # lower_for_onnx clears the flag when the shapes show equal head counts
        key = _repeat_heads(key, query.shape[-3] // key.shape[-3])
        value = _repeat_heads(value, query.shape[-3] // value.shape[-3])
    scores = torch.matmul(query, key.transpose(-2, -1)) * scale
    if is_causal:
        rows = torch.arange(query.shape[-2], device=query.device).unsqueeze(-1)
        cols = torch.arange(key.shape[-2], device=query.device)
        scores = scores.masked_fill(cols > rows, float("-inf"))  # keep tril(ones(L, S)), like torch
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(attn_mask.logical_not(), float("-inf"))
        else:
            scores = scores + attn_mask
    probs = torch.softmax(scores, dim=-1)
    if attn_mask is not None:  # torch's safe softmax: a row masked everywhere gives zeros, not NaN
        probs = probs.masked_fill(scores.amax(dim=-1, keepdim=True) == float("-inf"), 0.0)
    return torch.matmul(probs, value)


def _repeat_heads(t: torch.Tensor, groups: int) -> torch.Tensor:
    """repeat_interleave(groups, dim=-3) as Unsqueeze/Expand/Reshape."""
    sizes = [-1] * (t.dim() - 2) + [groups, -1, -1]
    return t.unsqueeze(-3).expand(*sizes).flatten(-4, -3)


def resize_separable(x: torch.Tensor, rows: torch.Tensor, cols_t: torch.Tensor) -> torch.Tensor:
    """Separable 2-D resize as two MatMuls: rows [Ho, H] @ x [..., H, W] @ cols_t [W, Wo]."""
    return torch.matmul(torch.matmul(rows, x), cols_t)


# ------------------------------------------------------------------------------------------ weights

def _pair(v: Any) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def antialias_matrix(n_in: int, axis: int, size: tuple[int, int] | None, scale_factor: tuple | None,
                     mode: str, align_corners: bool | None, recompute_scale_factor: bool | None,
                     dtype: torch.dtype = torch.float32, device: Any = "cpu") -> torch.Tensor:
    """[n_out, n_in] weights torch's antialiased `mode` resize applies along `axis` (0: H, 1: W).

    Read off torch's kernel: channel i of the basis is one-hot at index i along `axis` and constant along the
    other axis (length 2, resized 2 -> 2, which must be the identity; checked).
    """
    eye = torch.eye(n_in, dtype=dtype, device=device).unsqueeze(-1).expand(n_in, n_in, 2)
    basis = (eye if axis == 0 else eye.transpose(1, 2)).unsqueeze(0).contiguous()
    if size is not None:
        sizes = (int(size[0]), 2) if axis == 0 else (2, int(size[1]))
        out = F.interpolate(basis, size=sizes, mode=mode, align_corners=align_corners, antialias=True)
    else:
        factors = (float(scale_factor[0]), 1.0) if axis == 0 else (1.0, float(scale_factor[1]))
        out = F.interpolate(basis, scale_factor=factors, mode=mode, align_corners=align_corners,
                            recompute_scale_factor=recompute_scale_factor, antialias=True)
    out = out[0] if axis == 0 else out[0].transpose(1, 2)  # [n_in, n_out, 2]
    if out.shape[-1] != 2 or not torch.equal(out[..., 0], out[..., 1]):
        raise LoweringError(f"antialiased {mode} resize is not separable along axis {axis} (torch changed?)")
    return out[..., 0].t().contiguous()


# ------------------------------------------------------------------------------------------ graph rewrite

def kinds_to_lower(opset: int, exporter: str = "torchscript") -> tuple[str, ...]:
    """Op kinds `exporter` cannot write at `opset` and that lower_for_onnx therefore rewrites."""
    native = NATIVE_OPSET.get(exporter)
    if native is None:
        raise LoweringError(f"unknown exporter {exporter!r}; choose one of {', '.join(NATIVE_OPSET)}")
    return tuple(k for k, v in native.items() if v is None or opset < v)


def _mha_args(node: fx.Node) -> dict[str, Any] | None:
    """Arguments by name of a call to an nn.MultiheadAttention leaf, else None."""
    if node.op != "call_module" or not isinstance(node.graph.owning_module, nn.Module):
        return None
    if not isinstance(node.graph.owning_module.get_submodule(node.target), nn.MultiheadAttention):
        return None
    try:
        return dict(_MHA_SIG.bind(None, *node.args, **node.kwargs).arguments)
    except TypeError:
        return None


def _kind(node: fx.Node) -> str | None:
    """SDPA / ANTIALIAS / UNFOLD for nodes lower_for_onnx handles (torch has no Tensor-method form of the first
    two; ``x.unfold(dim, size, step)`` is a method only)."""
    if node.op == "call_method" and node.target == "unfold" and len(node.args) == 4 and not node.kwargs \
            and all(isinstance(a, int) for a in node.args[1:]):
        return UNFOLD
    if _adaptive_sizes(node) is not None:
        return ADAPTIVE
    if node.op == "call_module":
        mha = _mha_args(node)
        return SDPA if mha is not None and mha.get("need_weights", True) is False else None
    if node.op != "call_function":
        return None
    if node.target in _SDPA_TARGETS:
        return SDPA
    if node.target is F.interpolate:
        try:
            bound = _INTERPOLATE_SIG.bind(*node.args, **node.kwargs)
        except TypeError:
            return None
        return ANTIALIAS if bound.arguments.get("antialias") is True else None
    return None


def _select(gm: fx.GraphModule, opset: int, exporter: str, kinds: Iterable[str] | None
            ) -> list[tuple[fx.Node, str]]:
    """(node, kind) for every node to lower: `kinds` if given, else what `exporter` cannot write at `opset`."""
    wanted = set(kinds_to_lower(opset, exporter) if kinds is None else kinds)
    if wanted - set(KINDS):
        raise LoweringError(f"unknown lowering kinds {sorted(wanted - set(KINDS))}; choose from {', '.join(KINDS)}")
    out = []
    for n in gm.graph.nodes:
        kind = _kind(n)
        gqa = (kind == SDPA and n.op == "call_function" and kinds is None and exporter == "torchscript"
               and _sdpa_args(n).get("enable_gqa"))
        if kind in wanted or gqa:
            out.append((n, kind))
    return out


def _sdpa_args(node: fx.Node) -> dict[str, Any]:
    """Arguments of an SDPA node by name (defaults omitted)."""
    try:
        return dict(_SDPA_SIG.bind(*node.args, **node.kwargs).arguments)
    except TypeError as e:
        raise LoweringError(f"cannot read the arguments of scaled_dot_product_attention node {node.name!r}: "
                            f"{e}") from e


def _shape(node: Any) -> tuple[int, ...] | None:
    """Static tensor shape of a node from ShapeProp's tensor_meta or fxscale's shape metadata."""
    if not isinstance(node, fx.Node):
        return None
    tm = node.meta.get("tensor_meta")
    if tm is not None and hasattr(tm, "shape"):
        return tuple(int(s) for s in tm.shape)
    shape = node.meta.get(META, {}).get("shape")
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return shape
    return None


def _dtype(node: fx.Node) -> torch.dtype:
    tm = node.meta.get("tensor_meta")
    return getattr(tm, "dtype", None) or torch.float32


def _lower_sdpa(gm: fx.GraphModule, node: fx.Node) -> str:
    """Point an SDPA node at sdpa_math (same node, same meta); the default scale is fixed from q's shape."""
    a = _sdpa_args(node)
    scale = a.get("scale")
    q_shape = _shape(a["query"])
    if scale is None and q_shape is not None:
        scale = 1.0 / math.sqrt(q_shape[-1])
    k_shape = _shape(a["key"])
    gqa = bool(a.get("enable_gqa", False))
    if gqa and q_shape is not None and k_shape is not None and len(q_shape) >= 3 and q_shape[-3] == k_shape[-3]:
        gqa = False
    node.target = sdpa_math
    node.args = (a["query"], a["key"], a["value"])
    node.kwargs = {"attn_mask": a.get("attn_mask"), "is_causal": a.get("is_causal", False), "scale": scale,
                   "enable_gqa": gqa}
    dropout = a.get("dropout_p", 0.0)
    mask = a.get("attn_mask")
    parts = ["causal" if a.get("is_causal") else "", "mask" if mask is not None else "",
             "gqa" if a.get("enable_gqa") else "",
             f"dropout_p={dropout} dropped (inference)" if dropout not in (0, 0.0) else ""]
    detail = ", ".join(p for p in parts if p) or "plain"
    return f"{node.name}: scaled_dot_product_attention ({detail}) -> matmul/softmax"


def _lower_mha(gm: fx.GraphModule, node: fx.Node) -> str:
    """nn.MultiheadAttention(need_weights=False) -> need_weights=True, whose path has no SDPA call."""
    for user in node.users:
        index = user.args[1] if user.op == "call_function" and user.target is operator.getitem else None
        if not (index == 0 or (index in (1, -1) and not user.users)):
            raise LoweringError(f"nn.MultiheadAttention node {node.name!r} (need_weights=False) runs "
                                f"scaled_dot_product_attention; cannot lower it because {user.name!r} uses its "
                                "output tuple beyond the attention output")
    a = _mha_args(node) or {}
    a.pop("self", None)
    node.args = (a.pop("query"), a.pop("key"), a.pop("value"))
    node.kwargs = {**a, "need_weights": True}
    return f"{node.name}: nn.MultiheadAttention(need_weights=False) -> need_weights=True path (bmm/softmax, no SDPA)"


def _lower_antialias(gm: fx.GraphModule, node: fx.Node, device: Any) -> str:
    """Replace an antialiased F.interpolate by resize_separable with its exact weight matrices as buffers."""
    bound = _INTERPOLATE_SIG.bind(*node.args, **node.kwargs)
    bound.apply_defaults()
    a = bound.arguments
    x, mode = a["input"], a["mode"]
    in_shape, out_shape = _shape(x), _shape(node)
    if in_shape is None or len(in_shape) != 4:
        raise LoweringError(f"antialiased interpolate node {node.name!r}: the input shape is unknown or not 4-D "
                            f"({in_shape}); trace with fxscale.trace or pass example inputs")
    if mode not in ("bilinear", "bicubic"):
        raise LoweringError(f"antialiased interpolate node {node.name!r}: mode {mode!r} is not bilinear/bicubic")
    size, factor = a["size"], a["scale_factor"]
    if size is not None:
        size = _pair(size)
        if any(isinstance(s, fx.Node) for s in size):  # e.g. size=y.shape[-2:]: use the recorded output size
            if out_shape is None:
                raise LoweringError(f"antialiased interpolate node {node.name!r}: size is computed in the graph "
                                    "and the output shape is unknown; pass example inputs")
            size = out_shape[2:]
    else:
        factor = _pair(factor)
        if any(isinstance(f, fx.Node) for f in factor):
            raise LoweringError(f"antialiased interpolate node {node.name!r}: scale_factor is computed in the "
                                "graph; use a constant size or scale_factor to export at this opset")
    kw = {"size": size, "scale_factor": factor, "mode": mode, "align_corners": a["align_corners"],
          "recompute_scale_factor": a["recompute_scale_factor"], "dtype": _dtype(x), "device": device}
    rows = antialias_matrix(in_shape[2], 0, **kw)
    cols_t = antialias_matrix(in_shape[3], 1, **kw).t().contiguous()
    attrs = _buffer_args(gm, node, f"_fxscale_aa_{node.name}", {"rows": rows, "cols_t": cols_t})
    node.target = resize_separable
    node.args = (x, *attrs)
    node.kwargs = {}
    out = (rows.shape[0], cols_t.shape[1])
    return f"{node.name}: antialiased {mode} resize {tuple(in_shape[2:])} -> {out} as W_h @ x @ W_w^T (exact)"


def _adaptive_sizes(node: fx.Node) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((H, W), (oh, ow)) of a 2-D adaptive average pool whose output does not divide its static input."""
    if node.op == "call_module" and isinstance(node.graph.owning_module, nn.Module):
        mod = node.graph.owning_module.get_submodule(node.target)
        out = mod.output_size if isinstance(mod, nn.AdaptiveAvgPool2d) else None
    elif node.op == "call_function" and node.target is F.adaptive_avg_pool2d:
        out = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
    else:
        return None
    shape = _shape(node.args[0]) if out is not None and node.args else None
    if shape is None or len(shape) < 3 or not all(isinstance(o, int) or o is None for o in _pair(out)):
        return None
    hw = tuple(shape[-2:])
    o = tuple(h if v is None else v for h, v in zip(hw, _pair(out)))
    return None if all(h % v == 0 for h, v in zip(hw, o)) else (hw, o)


def adaptive_matrix(n_in: int, n_out: int, dtype: torch.dtype = torch.float32, device: Any = "cpu") -> torch.Tensor:
    """[n_out, n_in] averaging over torch's adaptive pooling bins ``[floor(i*n/o), ceil((i+1)*n/o))``."""
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m.to(dtype=dtype, device=device)


def _lower_adaptive(gm: fx.GraphModule, node: fx.Node, device: Any) -> str:
    """Point an adaptive average pool node at resize_separable with its bin-averaging matrices as buffers."""
    (h, w), (oh, ow) = _adaptive_sizes(node)  # type: ignore[misc]
    x = node.args[0]
    attrs = _buffer_args(gm, node, f"_fxscale_pool_{node.name}", {
        "rows": adaptive_matrix(h, oh, _dtype(x), device),
        "cols_t": adaptive_matrix(w, ow, _dtype(x), device).t().contiguous()})
    node.op, node.target, node.args, node.kwargs = "call_function", resize_separable, (x, *attrs), {}
    return f"{node.name}: adaptive average pool {(h, w)} -> {(oh, ow)} as P_h @ x @ P_w^T"


def unfold_gather(x: torch.Tensor, index: torch.Tensor, dim: int, windows: int, size: int) -> torch.Tensor:
    """``x.unfold(dim, size, step)`` as one index_select of the window positions ``index`` (``windows * size``
    entries) and a reshape: the same values, exported with Gather at any opset."""
    d = dim % x.dim()
    y = x.index_select(d, index)
    y = y.reshape(tuple(y.shape[:d]) + (windows, size) + tuple(y.shape[d + 1:]))
    return y.movedim(d + 1, -1)


def _lower_unfold(gm: fx.GraphModule, node: fx.Node) -> str:
    """Point an ``x.unfold(dim, size, step)`` node at unfold_gather with a fixed window index buffer."""
    x, dim, size, step = node.args
    shape = _shape(x)
    if shape is None:
        raise LoweringError(f"node {node.name}: unfold input has no static shape; cannot lower it")
    length = shape[dim % len(shape)]
    windows = (length - size) // step + 1
    index = (torch.arange(windows)[:, None] * step + torch.arange(size)[None]).reshape(-1)
    name = _free_attr(gm, f"_unfold_index_{node.name}")
    gm.register_buffer(name, index, persistent=False)
    with gm.graph.inserting_before(node):
        idx = gm.graph.get_attr(name)
    node.op, node.target = "call_function", unfold_gather
    node.args, node.kwargs = (x, idx, dim, windows, size), {}
    return f"{node.name}: unfold({dim}, {size}, {step}) of {length} as index_select of {windows} windows"


def _buffer_args(gm: fx.GraphModule, node: fx.Node, base: str, values: dict[str, torch.Tensor]) -> list[fx.Node]:
    """Register each value as a buffer ``{base}_{key}`` and read it with a get_attr inserted before ``node``."""
    attrs = []
    for suffix, value in values.items():
        name = _free_attr(gm, f"{base}_{suffix}")
        gm.register_buffer(name, value)
        with gm.graph.inserting_before(node):
            attr = gm.graph.get_attr(name)
        attr.meta[META] = {"inserted": "onnx lowering", "shape": tuple(value.shape)}
        attrs.append(attr)
    return attrs


def _free_attr(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    return name


def lower_for_onnx(gm: fx.GraphModule, opset: int, *example_inputs: torch.Tensor, exporter: str = "torchscript",
                   kinds: Iterable[str] | None = None) -> list[str]:
    """Rewrite IN PLACE the nodes of `gm` that `exporter` cannot write at `opset`; one line per lowered node.

    `kinds` overrides the choice (any of KINDS). With `example_inputs` the graph's shapes are propagated first;
    otherwise the shapes recorded by fxscale.trace / ShapeProp are used. Call it on a copy (see lowered_copy).
    """
    if example_inputs:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    nodes = _select(gm, opset, exporter, kinds)
    if not nodes:
        return []
    device = example_inputs[0].device if example_inputs else next(
        (t.device for t in [*gm.parameters(), *gm.buffers()]), torch.device("cpu"))
    done = [_lower_antialias(gm, n, device) if k == ANTIALIAS else _lower_unfold(gm, n) if k == UNFOLD else
            _lower_adaptive(gm, n, device) if k == ADAPTIVE else
            _lower_mha(gm, n) if n.op == "call_module" else _lower_sdpa(gm, n) for n, k in nodes]
    gm.graph.lint()
    gm.recompile()
    return done


def copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """A GraphModule with a copied graph (and per-node fxscale metadata) sharing `gm`'s submodules/weights."""
    graph = copy.deepcopy(gm.graph)
    for n in graph.nodes:  # graph copies share node.meta values: give the copy its own fxscale dicts
        if isinstance(n.meta.get(META), dict):
            n.meta[META] = dict(n.meta[META])
    new = fx.GraphModule(gm, graph, class_name=type(gm).__name__)
    new.meta = dict(gm.meta)
    new.train(gm.training)
    return new


def lowered_copy(model: torch.nn.Module, opset: int, *example_inputs: torch.Tensor, exporter: str = "torchscript",
                 kinds: Iterable[str] | None = None) -> tuple[torch.nn.Module, list[str]]:
    """(`model` itself, []) when nothing needs lowering, else (a lowered copy, what was lowered).

    Only GraphModules are rewritten; the caller's module, graph and metadata are never modified.
    """
    if not isinstance(model, fx.GraphModule):
        return model, []
    if not _select(model, opset, exporter, kinds):
        return model, []
    new = copy_graph_module(model)
    return new, lower_for_onnx(new, opset, *example_inputs, exporter=exporter, kinds=kinds)


__all__ = [
    "ADAPTIVE",
    "ANTIALIAS",
    "KINDS",
    "NATIVE_OPSET",
    "SDPA",
    "UNFOLD",
    "LoweringError",
    "adaptive_matrix",
    "antialias_matrix",
    "copy_graph_module",
    "kinds_to_lower",
    "lower_for_onnx",
    "lowered_copy",
    "resize_separable",
    "sdpa_math",
    "unfold_gather",
]
