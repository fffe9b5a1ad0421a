"""Which width plans ``init="preserve"`` grows exactly: a claim proven from the op rows, never measured.

Preserve growth replicates channels (``channel_map``: identity, then each old channel again in turn) and divides
every consumer's weights by the replica counts (Net2Net). An op keeps the grown model's output equal to the
original's when it commutes with that replication. Each op row is in one class (declarative, below):

* ``EXACT``: per-channel and elementwise ops, views, concatenation, spatial pooling, and the layers whose input
  channels are summed with divided weights (conv, linear): exact for any growth;
* ``UNIFORM``: ops whose statistics or scores span the channels (LayerNorm, GroupNorm with one group, attention,
  matmul): a mean over replicated channels is unchanged only when every channel has the same number of replicas,
  so exact when each grown group's new width is a whole multiple of its old one (GroupNorm with several groups
  is not: the replicas of one group land in another);
* reductions (``reduce``, ``norm`` rows) read their dims: over non-channel dims they are ``EXACT``; over a grown
  channel dim a mean is ``UNIFORM``, a max/min ``EXACT``, anything else (sum, std, p-norms) not exact;
* ops along one dim (softmax, log_softmax, normalize) are ``EXACT`` unless that dim is a grown channel dim;
  spatial rows (pools, resampling, padding) unless a grown channel sits on a dim they pool over (dim >= 2);
* every other op that touches a grown group (a leaf module without a row, weight standardisation, an op with no
  class) is not proven: the claim is refused, naming the node.

Narrowing drops channels and is never claimed exact.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxscale.analysis.graph import ChannelGraph
from fxscale.ops.table import module_row, node_row
from fxscale.plan import ScalingPlan
from fxscale.tracing import META

EXACT = frozenset({
    "activation", "activation_zero", "add", "add_m", "sub", "sub_m", "mul", "mul_m", "div", "div_m", "addcmul",
    "addcmul_m", "batch_norm_fn", "batchnorm", "cat", "stack", "clamp", "clamp_m", "contiguous", "copy_m", "conv",
    "conv_fn", "conv_same", "conv_transpose", "linear", "linear_fn", "dropout", "stochastic_depth",
    "identity_module", "expand", "expand_as", "flatten", "flatten_m", "flatten_module", "getitem", "hardtanh",
    "hardtanh_fn", "minmax", "minmax_m", "movedim", "movedim_m",
    "permute", "permute_m", "transpose", "transpose_m", "pow",
    "pow_m", "relu", "relu_m", "relu_fn", "relu6_fn", "repeat", "reshape", "reshape_m", "reshape_as", "scalar",
    "sigmoid", "sigmoid_fn", "sigmoid_m", "size", "size_m", "dim_m", "split", "split_m", "squeeze", "squeeze_m",
    "unsqueeze", "unsqueeze_m", "unary", "unary_m", "unary_zero", "unary_zero_m", "where", "where_m", "compare",
    "floordiv",
})
UNIFORM = frozenset({"layernorm", "layer_norm_fn", "matmul", "matmul_m", "einsum", "sdpa", "mha",
                     "window_attention"})
GROUPNORM = frozenset({"groupnorm", "group_norm_fn"})  # UNIFORM with one group; replicas change other groups
REDUCTIONS = frozenset({"reduce", "reduce_m", "norm", "norm_m"})
SPATIAL = frozenset({"pool", "pool_module", "pool_same", "resample_module", "pad", "pad_module", "interpolate"})
# functions, methods and modules of elementwise rows that work along one dim: (default dim, or None: required)
_ALONG = {F.softmax: None, F.log_softmax: None, torch.softmax: None, F.normalize: 1, "softmax": None,
          "log_softmax": None, nn.Softmax: None, nn.LogSoftmax: None}
_MEAN = frozenset({"mean", "nanmean"})
_MAXMIN = frozenset({"amax", "amin", "max", "min"})


def _name(node: fx.Node, cg: ChannelGraph) -> Optional[str]:
    if node.op == "call_module":
        row = module_row(cg.ctx.modules[node.target])
    else:
        row = node_row(node)
    return None if row is None else row.name


def _roots(cg: ChannelGraph, labels: Any) -> set[int]:
    """Size-class roots of every channel label in a (nested) per-dim label list."""
    at = cg.ctx.atoms
    if isinstance(labels, (list, tuple)) and labels and hasattr(labels[0], "atom"):
        return {at.sized.find(a) for a in at.leaves(labels)}
    if isinstance(labels, (list, tuple)):
        return set().union(*(_roots(cg, x) for x in labels)) if labels else set()
    return set()


def _reduced_roots(cg: ChannelGraph, node: fx.Node) -> Optional[set[int]]:
    """Roots of the channel labels on the dims a reduction reduces (None: the dims cannot be read)."""
    src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    labels = src.meta.get(META, {}).get("labels") if src is not None else None
    if not isinstance(labels, list):
        return None
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 and not isinstance(node.args[1], bool) else None)
    dims = range(len(labels)) if dim is None else [dim] if isinstance(dim, int) else dim
    return _dim_roots(cg, node, list(dims)) if isinstance(dims, (range, list, tuple)) else None


def _dim_roots(cg: ChannelGraph, node: fx.Node, dims: Any) -> Optional[set[int]]:
    """Roots of the channel labels of the first input on ``dims`` (ints; None: unreadable)."""
    src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
    labels = src.meta.get(META, {}).get("labels") if src is not None else None
    if not isinstance(labels, list) or not all(isinstance(d, int) for d in dims):
        return None
    return set().union(set(), *(_roots(cg, [labels[d % len(labels)]]) for d in dims
                                if labels and labels[d % len(labels)] is not None))


def _along_dim(cg: ChannelGraph, node: fx.Node) -> Any:
    """For a softmax/normalize-like node: the dim it works along (None when unreadable); False for other ops."""
    key = type(cg.ctx.modules[node.target]) if node.op == "call_module" else node.target
    if key not in _ALONG:
        return False
    if node.op == "call_module":
        return getattr(cg.ctx.modules[node.target], "dim", None)
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else _ALONG[key])
    return dim if isinstance(dim, int) else None


def _groups(cg: ChannelGraph, node: fx.Node) -> Any:
    if node.op == "call_module":
        return getattr(cg.ctx.modules[node.target], "num_groups", None)
    return node.kwargs.get("num_groups", node.args[1] if len(node.args) > 1 else None)


def _op_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def preserve_exact(cg: ChannelGraph, plan: ScalingPlan) -> tuple[bool, list[str]]:
    """(claimed, reasons): whether ``transform(gm, plan, "preserve")`` is proven to compute the same outputs as
    the traced model (to float rounding), and why not where it is not (each reason names a group or node).

    Only the plan's widths are considered: a resolution change is never exact (the input is resized)."""
    reasons: list[str] = []
    if plan.resolution is not None:
        reasons.append("the plan changes the resolution")
    groups = cg.by_name
    grown: dict[int, bool] = {}  # root -> uniform (new width a whole multiple of the old one)
    for name, width in (plan.widths or {}).items():
        g = groups[name]
        if width < g.width:
            reasons.append(f"group {name} narrows {g.width} -> {width} (channels are dropped)")
        elif width > g.width:
            grown[g.root] = width % g.width == 0
    for node in cg.gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        touched = _roots(cg, [node.meta.get(META, {}).get("labels")]) | set().union(
            *(_roots(cg, [a.meta.get(META, {}).get("labels")]) for a in node.all_input_nodes))
        touched &= set(grown)
        if not touched:
            continue
        row = _name(node, cg)
        along = _along_dim(cg, node)
        if along is not False:
            over = None if along is None else _dim_roots(cg, node, [along])
            if over is None or over & touched:
                reasons.append(f"node {node.name} ({_op_name(node)}) works along a grown channel dim, or one that "
                               "cannot be read")
            continue
        if row in SPATIAL:
            shape = node.args[0].meta.get(META, {}).get("shape") if node.args and isinstance(node.args[0], fx.Node) \
                else None
            pooled = _dim_roots(cg, node, list(range(2, len(shape)))) if isinstance(shape, tuple) else None
            if pooled is None or pooled & touched:
                reasons.append(f"node {node.name} ({row}) pools or resamples over a grown channel dim")
            continue
        if row in EXACT:
            continue
        need_uniform = row in UNIFORM or row in GROUPNORM and _groups(cg, node) == 1
        if row in REDUCTIONS:
            over = _reduced_roots(cg, node)
            if over is None:
                reasons.append(f"node {node.name} ({_op_name(node)}): its reduced dims cannot be read")
                continue
            over &= touched
            if not over or _op_name(node) in _MAXMIN:
                continue
            if _op_name(node) not in _MEAN:
                reasons.append(f"node {node.name} ({_op_name(node)}) reduces over a grown channel dim")
                continue
            need_uniform, touched = True, over
        if not need_uniform:
            reasons.append(f"node {node.name} ({row or _op_name(node)}): no exactness rule for this op")
        elif not all(grown[r] for r in touched):
            reasons.append(f"node {node.name} ({row}): its statistics span a group grown by a non-integer factor")
    return not reasons, reasons


__all__ = ["preserve_exact", "EXACT", "UNIFORM", "GROUPNORM", "REDUCTIONS", "SPATIAL"]
