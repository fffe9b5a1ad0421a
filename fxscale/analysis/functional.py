"""Channel rules of functional ops whose weights are graph tensors: F.conv*/F.linear/F.batch_norm/F.group_norm
with get_attr parameters (what fx records when it traces into timm's BatchNormAct2d, StdConv2d, BlurPool2d,
attention with separate q/v biases), weight standardisation (ops on the weight before the conv),
reshape_as and addcmul.

A conv/linear whose weight is a parameter read directly (a get_attr of an nn.Parameter or registered buffer used
by this call only) is a producer of its output rows and a consumer of its input columns, like nn.Conv2d: the
parameter's dims become "select" and "reduce". A weight computed from parameters (weight standardisation,
``gain * weight``) still produces its rows (labels only flow along per-channel ops), but whatever computed it may
mix its input columns, so the input channels are fixed.
"""
from __future__ import annotations

from typing import Any, Optional

import torch.fx as fx

from fxscale.analysis.context import Ctx
from fxscale.analysis.labels import Label
from fxscale.analysis.reshape import _arg, reshape_labels


def param_target(ctx: Ctx, n: Any) -> Optional[str]:
    """The path of the parameter or registered buffer a get_attr node reads; None for anything else (plain tensor
    attributes such as fx's _tensor_constant are constants, not weights)."""
    if not isinstance(n, fx.Node) or n.op != "get_attr":
        return None
    owner_path, _, leaf = str(n.target).rpartition(".")
    owner = ctx.modules.get(owner_path) if owner_path else ctx.gm
    if owner is None or leaf.startswith("_tensor_constant"):  # fx's buffers for tensors built in forward
        return None
    return n.target if leaf in owner._parameters or leaf in owner._buffers else None


def _no_rule(ctx: Ctx, node: fx.Node, why: str) -> Any:
    from fxscale.analysis.ops import _target_name
    reason = f"node {node.name}: no channel rule for {_target_name(node)} ({why})"
    for a in list(node.args) + list(node.kwargs.values()):
        for item in (a if isinstance(a, (list, tuple)) else [a]):
            ctx.freeze_value(ctx.lab(item), reason)
    return None


def _origin(n: fx.Node) -> str:
    """A name for a computed weight: the first parameter it is computed from (without '.weight')."""
    seen, todo = set(), [n]
    while todo:
        m = todo.pop(0)
        if m.op == "get_attr":
            return str(m.target).removesuffix(".weight")
        for a in m.all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return n.name


def _weight_like(lw: Any) -> bool:
    """Labels of a weight whose rows carry a channel space (not an op's output of unknown layout: all None)."""
    return isinstance(lw, list) and len(lw) >= 2 and lw[0] is not None


def _weight(ctx: Ctx, node: fx.Node, w: fx.Node, lw: list, lin: Label, in_dim: int, out_dim: int) -> Label:
    """Tie a dense weight [out, in, ...] to its input label; returns the output label (see the module doc), or None
    when the weight is a constant (everything the call touches is frozen)."""
    lout = ctx.need(lw[out_dim], ctx.shape(w)[out_dim], f"node {node.name}: weight rows")
    target = param_target(ctx, w)
    if target is None and w.op == "get_attr":
        _no_rule(ctx, node, "the weight is a constant, not a parameter")
        return None
    if target is not None and len(w.users) == 1:
        u = ctx.uses[target]
        if u.producer:  # the same parameter called again
            ctx.tie(u.inputs[0], lin, f"node {node.name} (weight used twice)")
            return u.outputs[0]
        ctx.tie(lin, lw[in_dim], f"node {node.name}")
        u.params[""] = {out_dim: (lout, "select"), in_dim: (lin, "reduce")}  # kernel dims are not channels
        u.producer, u.inputs, u.outputs = True, [lin], [lout]
        u.extra["group"] = target.removesuffix(".weight")
        return lout
    why = f"node {node.name}: weight computed from parameters (e.g. weight standardisation): input channels fixed"
    ctx.atoms.freeze(lin, why)
    if lw[in_dim] is not None:
        ctx.atoms.freeze(lw[in_dim], why)
    name = _origin(w)
    if name in ctx.uses and ctx.uses[name].kind != "weight_fn":
        name = f"{name}#{node.name}"
    u, seen = ctx.use(name, "weight_fn")
    if seen:
        ctx.tie(u.outputs[0], lout, f"node {node.name}")
        return u.outputs[0]
    u.producer, u.inputs, u.outputs = True, [lin], [lout]
    return lout


def _bias(ctx: Ctx, node: fx.Node, b: Any, lout: Label) -> None:
    if isinstance(b, fx.Node):
        lb = ctx.lab(b)
        if not isinstance(lb, list) or len(lb) != 1:
            ctx.atoms.freeze(lout, f"node {node.name}: bias of unknown layout")
            ctx.freeze_value(lb, f"node {node.name}: bias of unknown layout")
        else:
            ctx.tie(lout, lb[0], f"node {node.name}: bias")


def conv_fn(ctx: Ctx, node: fx.Node) -> Any:
    """F.conv1d/2d/3d(x, weight, bias, stride, padding, dilation, groups): dense or depthwise."""
    x, w = _arg(node, 0, "input"), _arg(node, 1, "weight")
    lx, lw, sx, sw = ctx.lab(x), ctx.lab(w), ctx.shape(x), ctx.shape(w)
    if not isinstance(lx, list) or not _weight_like(lw) or len(lx) < 2:
        return _no_rule(ctx, node, "weight or input of unknown layout")
    groups = _arg(node, 6, "groups", 1)
    from fxscale.analysis.ops import freeze_spatial
    freeze_spatial(ctx, node, lx)
    lin = ctx.need(lx[1], sx[1], f"input of node {node.name}")
    mark = ctx.lab(groups) if isinstance(groups, fx.Node) else None
    if groups == 1:
        lout = _weight(ctx, node, w, lw, lin, 1, 0)
        if lout is None:
            return [None] * len(ctx.shape(node))
    elif (isinstance(mark, dict) and mark.get("size") is not None) or (groups == sx[1] and sw[0] == sx[1] == groups):
        if isinstance(mark, dict):  # groups read from the input's channel count: follows it by itself
            ctx.tie(mark["size"], lin, f"node {node.name}: groups")
        else:  # depthwise with a literal group count: rewritten with the width
            ctx.literal(node, "arg" if len(node.args) > 6 else "kwarg", 6 if len(node.args) > 6 else "groups",
                        lin)
        ctx.tie(lin, lw[0], f"node {node.name}: depthwise weight")
        target = param_target(ctx, w)
        if target is not None:  # a fixed filter per channel (blur pool): its kernel dims are not channels
            ctx.uses[target].params[""] = {0: (lw[0], "select")}
        lout = lin
    else:
        return _no_rule(ctx, node, f"groups={groups}")
    _bias(ctx, node, _arg(node, 2, "bias"), lout)
    return [lx[0], lout] + [None] * (len(ctx.shape(node)) - 2)


def linear_fn(ctx: Ctx, node: fx.Node) -> Any:
    """F.linear(x, weight[out, in], bias): x's last dim is consumed, the output's last dim produced."""
    x, w = _arg(node, 0, "input"), _arg(node, 1, "weight")
    lx, lw = ctx.lab(x), ctx.lab(w)
    if not isinstance(lx, list) or not _weight_like(lw) or len(lw) != 2:
        return _no_rule(ctx, node, "weight or input of unknown layout")
    lin = ctx.need(lx[-1], ctx.shape(x)[-1], f"input of node {node.name}")
    lout = _weight(ctx, node, w, lw, lin, 1, 0)
    if lout is None:
        return [None] * len(ctx.shape(node))
    _bias(ctx, node, _arg(node, 2, "bias"), lout)
    return list(lx[:-1]) + [lout]


def _affine(ctx: Ctx, node: fx.Node, ch: Label, specs: tuple) -> None:
    """Tie per-channel parameters (running stats, weight, bias) to the channel label."""
    for i, key, fresh in specs:
        p = _arg(node, i, key)
        if not isinstance(p, fx.Node):
            continue
        lp = ctx.lab(p)
        if not isinstance(lp, list) or len(lp) != 1:
            ctx.freeze_value([ch], f"node {node.name}: {key} of unknown layout")
            ctx.freeze_value(lp, f"node {node.name}: {key} of unknown layout")
            continue
        ctx.tie(ch, lp[0], f"node {node.name}: {key}")
        target = param_target(ctx, p)
        if target is not None:  # new channels of prune/reinit start as a fresh norm would
            ctx.uses[target].extra["fresh"] = fresh


_BN_PARAMS = ((1, "running_mean", 0.0), (2, "running_var", 1.0), (3, "weight", 1.0), (4, "bias", 0.0))


def batch_norm_fn(ctx: Ctx, node: fx.Node) -> Any:
    """F.batch_norm(x, running_mean, running_var, weight, bias, training): per-channel on dim 1. Batch statistics
    (training=True, or a non-literal flag) reduce over every other dim, which must not be a channel dim."""
    labels = ctx.lab(_arg(node, 0, "input"))
    if not isinstance(labels, list) or len(labels) < 2:
        return _no_rule(ctx, node, "input of unknown layout")
    if _arg(node, 5, "training", False) is not False:
        for i, lab in enumerate(labels):
            if i != 1 and lab is not None:
                ctx.atoms.freeze(lab, f"node {node.name}: batch statistics over a channel dim")
    _affine(ctx, node, labels[1], _BN_PARAMS)
    return list(labels)


def group_norm_fn(ctx: Ctx, node: fx.Node) -> Any:
    """F.group_norm(x, num_groups, weight, bias): like nn.GroupNorm, the width stays a multiple of num_groups."""
    labels = ctx.lab(_arg(node, 0, "input"))
    groups = _arg(node, 1, "num_groups")
    if not isinstance(labels, list) or len(labels) < 2 or not isinstance(groups, int):
        return _no_rule(ctx, node, "input of unknown layout or computed num_groups")
    for lab in labels[2:]:
        if lab is not None:
            ctx.atoms.freeze(lab, f"node {node.name}: group statistics over a channel dim")
    ch = ctx.need(labels[1], ctx.shape(node)[1], f"input of node {node.name}")
    ctx.atoms.require_divisor(ch, groups)
    _affine(ctx, node, ch, ((2, "weight", 1.0), (3, "bias", 0.0)))
    return [labels[0], ch] + list(labels[2:])


def reshape_as(ctx: Ctx, node: fx.Node) -> Any:
    """x.reshape_as(y) / x.view_as(y): a reshape to y's shape, whose dims then equal y's dims."""
    out = reshape_labels(ctx, node, node.args[0])
    ly = ctx.lab(node.args[1])
    if not isinstance(out, list):
        return out
    if not isinstance(ly, list) or len(ly) != len(out):
        ctx.freeze_value(out, f"node {node.name}: reshaped like a tensor of unknown layout")
        return [None] * len(out)
    return [_tie_keep(ctx, node, a, b) for a, b in zip(out, ly)]


def _tie_keep(ctx: Ctx, node: fx.Node, a: Label, b: Label) -> Label:
    ctx.tie(a, b, f"node {node.name}")
    return a if b is not None else None


def addcmul(ctx: Ctx, node: fx.Node) -> Any:
    """torch.addcmul(input, t1, t2, value=v) = input + v * t1 * t2: a broadcasting elementwise op."""
    from fxscale.analysis.ops import elementwise
    return elementwise(ctx, node)


def sdpa(ctx: Ctx, node: fx.Node) -> Any:
    """F.scaled_dot_product_attention(q [..., L, E], k [..., S, E], v [..., S, Ev]) -> [..., L, Ev]: q and k are
    contracted over E (recorded: preserve growth counts each channel once and keeps the 1/sqrt(E) scale), the
    token dims of k and v meet, v's channels pass through. A tensor mask must carry no channel dim."""
    q, k, v = (_arg(node, i, key) for i, key in enumerate(("query", "key", "value")))
    lq, lk, lv = ctx.lab(q), ctx.lab(k), ctx.lab(v)
    if not all(isinstance(lab, list) and len(lab) >= 2 for lab in (lq, lk, lv)) or \
            not (len(lq) == len(lk) == len(lv)) or _arg(node, 7, "enable_gqa", False) is not False:
        return _no_rule(ctx, node, "operands of unknown layout or grouped-query attention")
    mask = _arg(node, 3, "attn_mask")
    if isinstance(mask, fx.Node):
        ctx.freeze_value(ctx.lab(mask), f"node {node.name}: attention mask")
    where = f"node {node.name}"
    ctx.tie(lq[-1], lk[-1], where)
    ctx.contraction(node, 0, lq[-1])
    for a, b in ((lk[-2], lv[-2]),) + tuple(zip(lq[:-2], lk[:-2])) + tuple(zip(lq[:-2], lv[:-2])):
        if (a is None) != (b is None):
            ctx.freeze_value([a, b], f"{where}: batch or token dim meets a non-channel dim")
        elif a is not None:
            ctx.tie(a, b, where)
    return list(lq[:-1]) + [lv[-1]]


def norm(ctx: Ctx, node: fx.Node) -> Any:
    """x.norm(p, dim, keepdim) / torch.norm / torch.linalg.vector_norm: a reduction over `dim` (all dims when
    None): reduced channel dims are frozen, the others pass."""
    labels = ctx.lab(node.args[0])
    if not isinstance(labels, list):
        return _no_rule(ctx, node, "input of unknown layout")
    dims, keep = _arg(node, 2, "dim"), bool(_arg(node, 3, "keepdim", False))
    nd = len(labels)
    dims = range(nd) if dims is None else [d % nd for d in (dims if isinstance(dims, (list, tuple)) else [dims])]
    ctx.freeze_value([labels[d] for d in dims], f"node {node.name}: norm over a channel dim")
    return [None if d in dims else lab for d, lab in enumerate(labels) if keep or d not in dims]


__all__ = ["norm", "param_target", "conv_fn", "linear_fn", "batch_norm_fn", "group_norm_fn", "reshape_as", "addcmul", "sdpa"]
