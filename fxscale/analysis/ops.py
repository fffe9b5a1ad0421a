"""Channel rules for call_function / call_method nodes (elementwise, reshape, permute, cat, split, ...)."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch.fx as fx

from fxscale.analysis.context import Ctx
from fxscale.analysis.labels import Incompatible, concat
from fxscale.analysis.indexing import getitem  # noqa: F401 - re-exported rule
from fxscale.analysis.reshape import (  # noqa: F401 - re-exported rules
    _arg, _dim, flatten_fn, reshape_labels, size_arith, size_of, squeeze_unsqueeze, tie_size_args, view_like)

OpRule = Callable[[Ctx, fx.Node], Any]
# Cost formula of a function/method call: (node, input shapes, output shape) -> (kernel kind, multiply-accumulates).
OpCost = Callable[[fx.Node, list, tuple], tuple[str, int]]




# ---- elementwise ------------------------------------------------------------------------------
def elementwise(ctx: Ctx, node: fx.Node) -> Any:
    """Broadcasting elementwise op: tie the channel labels of every operand dim that is not broadcast."""
    shape = ctx.shape(node)
    if not isinstance(shape, tuple) or (shape and not isinstance(shape[0], int)):
        return size_arith(ctx, node)  # int arithmetic on sizes
    nd = len(shape)
    out: list = [None] * nd
    unlabelled: list = [None] * nd  # per output dim: an operand that meets it with no channel label
    operands = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(ctx.shape(a), tuple)]
    opaque = [a for a in operands if not isinstance(ctx.lab(a), list)]
    operands = [a for a in operands if a not in opaque]
    for a in operands:
        la, sa = ctx.lab(a), ctx.shape(a)
        off = nd - len(sa)
        for i, (s, lab) in enumerate(zip(sa, la)):
            j = off + i
            if s == 1 and shape[j] != 1:
                if lab is not None:  # a one-channel label broadcast over a wider dim: it must stay one wide
                    ctx.atoms.freeze(lab, f"node {node.name}: {getattr(a, 'name', a)} is broadcast over a dim of "
                                          f"{shape[j]}")
                continue
            if lab is None:
                unlabelled[j] = unlabelled[j] or a
            elif out[j] is None:
                out[j] = lab
            else:
                ctx.tie(out[j], lab, f"node {node.name}")
    for j in range(nd):
        if unlabelled[j] is not None and out[j] is not None and j > 0:
            ctx.atoms.freeze(out[j], f"node {node.name}: channel dim combined with a non-channel dim of "
                                     f"{getattr(unlabelled[j], 'name', unlabelled[j])}")
    if opaque:  # an operand of unknown layout: the channels it meets cannot change
        ctx.freeze_value(out, f"node {node.name}: combined with {opaque[0].name}, whose channel layout is unknown")
    return out


def passthrough(ctx: Ctx, node: fx.Node) -> Any:
    """Shape-preserving op on its first argument."""
    return ctx.lab(node.args[0]) if node.args else None


def spatial_fn(ctx: Ctx, node: fx.Node) -> Any:
    """Pooling/interpolation function: the channel dim (1) passes, spatial dims change."""
    labels = ctx.lab(node.args[0])
    shape = ctx.shape(node)
    if not isinstance(labels, list) or not isinstance(shape, tuple):
        return None
    freeze_spatial(ctx, node, labels)
    return [labels[0], labels[1]] + [None] * (len(shape) - 2)


def pad_fn(ctx: Ctx, node: fx.Node) -> Any:
    """F.pad: a dim padded by literal (0, 0) keeps its label (channels-last layouts pad (0, 0, l, r, t, b)); any
    other padded dim is spatial, and a channel label there is frozen; dims the pad tuple does not reach pass."""
    labels, pads = ctx.lab(node.args[0]), _arg(node, 1, "pad")
    if not isinstance(labels, list) or not isinstance(pads, (list, tuple)) or len(pads) % 2:
        return spatial_fn(ctx, node)
    out, nd = list(labels), len(labels)
    for k in range(min(len(pads) // 2, nd)):
        d = nd - 1 - k
        lo, hi = pads[2 * k], pads[2 * k + 1]
        if isinstance(lo, int) and isinstance(hi, int) and lo == 0 and hi == 0 and not isinstance(lo, bool):
            continue
        if out[d] is not None:
            ctx.atoms.freeze(out[d], f"node {node.name}: channel dim used as a spatial dim")
        out[d] = None
    return out


def freeze_spatial(ctx: Ctx, node: fx.Node, labels: Any) -> None:
    """A conv/pool/resize reads dims 2.. as space: a channel label that arrives there (channels-last layouts, a
    linear over a spatial dim) cannot change width, since the op mixes or resizes those positions."""
    if isinstance(labels, list):
        ctx.freeze_value(labels[2:], f"node {node.name}: channel dim used as a spatial dim")


def reduce_dims(ctx: Ctx, node: fx.Node) -> Any:
    """mean/sum/amax over dims: reduced channel dims are frozen, the others pass."""
    labels, shape_in = ctx.lab(node.args[0]), ctx.shape(node.args[0])
    if not isinstance(labels, list):
        return None
    dims = _arg(node, 1, "dim")
    keep = bool(_arg(node, 2, "keepdim", False))
    nd = len(shape_in)
    if dims is None:
        ctx.freeze_value(labels, f"node {node.name}: reduction over all dims")
        return [] if not keep else [None] * nd
    dims = {_dim(d, nd) for d in (dims if isinstance(dims, (list, tuple)) else [dims])}
    out = []
    for i, lab in enumerate(labels):
        if i in dims:
            if lab is not None:
                ctx.atoms.freeze(lab, f"node {node.name}: reduction over a channel dim")
            if keep:
                out.append(None)
        else:
            out.append(lab)
    return out


# ---- layout -----------------------------------------------------------------------------------
def permute(ctx: Ctx, node: fx.Node) -> Any:
    """permute(x, dims) / x.permute(*dims)."""
    labels = ctx.lab(node.args[0])
    dims = node.args[1:] if node.op == "call_method" else (_arg(node, 1, "dims"),)
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    nd = len(labels)
    return [labels[_dim(d, nd)] for d in dims]


def transpose(ctx: Ctx, node: fx.Node) -> Any:
    """transpose/swapaxes of two dims."""
    labels = list(ctx.lab(node.args[0]))
    nd = len(labels)
    a, b = _dim(_arg(node, 1, "dim0"), nd), _dim(_arg(node, 2, "dim1"), nd)
    labels[a], labels[b] = labels[b], labels[a]
    return labels


def movedim(ctx: Ctx, node: fx.Node) -> Any:
    """movedim(x, src, dst) for single ints."""
    labels = list(ctx.lab(node.args[0]))
    nd = len(labels)
    src, dst = _dim(_arg(node, 1, "source"), nd), _dim(_arg(node, 2, "destination"), nd)
    lab = labels.pop(src)
    labels.insert(dst, lab)
    return labels


def expand(ctx: Ctx, node: fx.Node) -> Any:
    """expand/repeat to a larger shape: existing dims keep labels, new dims are unlabelled."""
    labels, shape = ctx.lab(node.args[0]), ctx.shape(node)
    src = ctx.shape(node.args[0])
    off = len(shape) - len(src)
    out = [None] * off + [lab if src[i] == shape[off + i] else None for i, lab in enumerate(labels)]
    sizes = list(node.args[1:])
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        return out
    for j, lab in enumerate(out):
        if lab is not None and j < len(sizes) and isinstance(sizes[j], int) and sizes[j] != -1:
            ctx.literal(node, "varargs", j, lab)
    return out


def _sequence_labels(ctx: Ctx, tensors: Any) -> Any:
    """Per-tensor labels of a cat/stack operand: a list of nodes, or one node holding a tuple (split output).

    None when any tensor's layout is unknown.
    """
    labs = list(ctx.lab(tensors) or ()) if isinstance(tensors, fx.Node) else [ctx.lab(t) for t in tensors]
    return labs if labs and all(isinstance(lab, list) for lab in labs) else None


def repeat(ctx: Ctx, node: fx.Node) -> Any:
    """x.repeat(*counts): dims repeated once keep their labels; a channel dim tiled k > 1 times is frozen."""
    labels = ctx.lab(node.args[0])
    counts = node.args[1:]
    if len(counts) == 1 and isinstance(counts[0], (list, tuple)):
        counts = counts[0]
    out: list = [None] * (len(counts) - len(labels))
    for lab, k in zip(labels, counts[len(counts) - len(labels):]):
        if k == 1:
            out.append(lab)
            continue
        if lab is not None:
            ctx.atoms.freeze(lab, f"node {node.name}: repeat tiles a channel dim")
        out.append(None)
    return out


def cat(ctx: Ctx, node: fx.Node) -> Any:
    """torch.cat along a dim: concatenation of channel labels; other dims tied."""
    labs = _sequence_labels(ctx, _arg(node, 0, "tensors"))
    if labs is None:
        return unknown(ctx, node)
    d = _arg(node, 1, "dim", 0)
    nd = len(ctx.shape(node))
    d = _dim(d, nd)
    out = list(labs[0])
    for lab in labs[1:]:
        for i in range(nd):
            if i != d:
                out[i] = _tie_or_keep(ctx, node, out[i], lab[i])
    along = [lab[d] for lab in labs]
    if all(a is not None for a in along):
        out[d] = concat(along)
    else:
        for a in along:
            if a is not None:
                ctx.atoms.freeze(a, f"node {node.name}: concatenated with a non-channel dimension")
        out[d] = None
    return out


def _tie_or_keep(ctx: Ctx, node: fx.Node, a: Any, b: Any) -> Any:
    if a is None and b is None:
        return None
    ctx.tie(a, b, f"node {node.name}")
    return a if a is not None else b


def stack(ctx: Ctx, node: fx.Node) -> Any:
    """torch.stack: a new unlabelled dim, every other dim tied."""
    labs = _sequence_labels(ctx, _arg(node, 0, "tensors"))
    if labs is None:
        return unknown(ctx, node)
    d = _dim(_arg(node, 1, "dim", 0), len(ctx.shape(node)))
    out = list(labs[0])
    for lab in labs[1:]:
        out = [_tie_or_keep(ctx, node, a, b) for a, b in zip(out, lab)]
    out.insert(d, None)
    return out


def split(ctx: Ctx, node: fx.Node) -> Any:
    """split/chunk/unbind along a dim: the channel label is cut at the chunk boundaries."""
    labels = ctx.lab(node.args[0])
    shapes = ctx.shape(node)
    nd = len(labels)
    name = node.target if isinstance(node.target, str) else node.target.__name__
    d = _dim(_arg(node, 1 if name == "unbind" else 2, "dim", 0), nd)
    lab = labels[d]
    sizes = [s[d] for s in shapes] if name != "unbind" else [1] * len(shapes)
    pieces = _cut(ctx, node, lab, sizes) if lab is not None and name != "unbind" else [None] * len(shapes)
    if name == "unbind" and lab is not None:
        ctx.atoms.freeze(lab, f"node {node.name}: unbind over a channel dim")
    if name in ("chunk", "split") and lab is not None and all(p is not None for p in pieces):
        _equal_parts(ctx, node, pieces, sizes)
    out = []
    for piece in pieces:
        lab_k = list(labels)
        if name == "unbind":
            lab_k.pop(d)
        else:
            lab_k[d] = piece
        out.append(lab_k)
    return tuple(out)


def _cut(ctx: Ctx, node: fx.Node, lab: tuple, sizes: list) -> list:
    """Slice a label into consecutive pieces of the given widths (refining atoms at the boundaries)."""
    pieces = [ctx.atoms.label(s, f"{node.name}[{k}]") for k, s in enumerate(sizes)]
    try:
        ctx.atoms.tie(lab, concat(pieces))
    except Incompatible as e:
        ctx.atoms.freeze(lab, f"node {node.name}: {e}")
        return [None] * len(sizes)
    return pieces


def _equal_parts(ctx: Ctx, node: fx.Node, pieces: list, sizes: list) -> None:
    """chunk / split(int): pieces are defined relative to the total, so their widths stay equal."""
    sec = _arg(node, 1, "split_size_or_sections")
    if node.target == "split" or getattr(node.target, "__name__", "") == "split":
        if isinstance(sec, (list, tuple)):
            for k, piece in enumerate(pieces):
                if isinstance(sec[k], int):
                    ctx.literal(node, "seq1", k, piece)
            return
        if isinstance(sec, int):
            ctx.literal(node, "arg", 1, pieces[0])
    if len(set(sizes)) != 1:
        ctx.freeze_value([p for p in pieces], f"node {node.name}: unequal chunks")
        return
    for p in pieces[1:]:
        try:
            ctx.atoms.tie_size_labels(pieces[0], p)
        except Incompatible as e:
            ctx.atoms.freeze(pieces[0], f"node {node.name}: {e}")
            ctx.atoms.freeze(p, f"node {node.name}: {e}")


def matmul(ctx: Ctx, node: fx.Node) -> Any:
    """a @ b: the contracted dims are tied; batch dims broadcast. A parameter operand's contracted dim is a consumer
    dim (divided by replica counts); between two activations (attention scores) the contraction is recorded, and
    preserve growth counts each channel once there (replicas of the left operand are zeroed)."""
    from fxscale.analysis.functional import param_target
    a, b = node.args[:2]
    la, lb = ctx.lab(a), ctx.lab(b)
    if not isinstance(la, list) or not isinstance(lb, list):
        return unknown(ctx, node)
    if len(la) < 2 or len(lb) < 2:
        ctx.freeze_value((la, lb), f"node {node.name}: matmul of vectors")
        return [None] * len(ctx.shape(node))
    ctx.tie(la[-1], lb[-2], f"node {node.name}")
    for operand, dim in ((b, len(lb) - 2), (a, len(la) - 1)):
        target = param_target(ctx, operand)
        if target is not None and len(operand.users) == 1 and dim in ctx.uses[target].params.get("", {}):
            lab, _mode = ctx.uses[target].params[""][dim]
            ctx.uses[target].params[""][dim] = (lab, "reduce")
            break
    else:
        ctx.contraction(node, 0, la[-1])
    sa, sb = ctx.shape(a), ctx.shape(b)
    n = max(len(la), len(lb)) - 2
    batch: list = []
    for k in range(n):  # batch dims broadcast like an elementwise op: dims that meet are tied
        ia, ib = len(la) - 2 - n + k, len(lb) - 2 - n + k
        xa = la[ia] if ia >= 0 and sa[ia] != 1 else None
        xb = lb[ib] if ib >= 0 and sb[ib] != 1 else None
        meet = ia >= 0 and ib >= 0 and sa[ia] != 1 and sb[ib] != 1
        if meet and (xa is None) != (xb is None):
            ctx.atoms.freeze(xa or xb, f"node {node.name}: batch dim of a matmul meets a non-channel dim")
        elif meet and xa is not None:
            ctx.tie(xa, xb, f"node {node.name}")
        batch.append(xa if xa is not None else xb)
    return batch + [la[-2], lb[-1]]


def _bcast(a: tuple, b: tuple) -> int:
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    return math.prod(max(x, y) for x, y in zip(a, b))


def matmul_cost(node: fx.Node, ins: list, out: tuple) -> tuple[str, int]:
    """a @ b MACs = broadcast batch * M * K * N."""
    a, b = ins[0], ins[1]
    if len(a) < 2 or len(b) < 2:
        return "matmul", math.prod(out) * a[-1]
    return "matmul", _bcast(a[:-2], b[:-2]) * a[-2] * a[-1] * b[-1]


def linear_fn_cost(node: fx.Node, ins: list, out: tuple) -> tuple[str, int]:
    """F.linear(x, W[out, in]) MACs = rows * in * out."""
    return "linear", math.prod(out[:-1]) * ins[1][1] * ins[1][0]


def conv_fn_cost(node: fx.Node, ins: list, out: tuple) -> tuple[str, int]:
    """F.convNd(x, W[Cout, Cin/g, *k]) MACs = N * Cout * prod(out spatial) * Cin/g * prod(k)."""
    w = ins[1]
    return f"conv_k{w[2] if len(w) > 2 else 1}", out[0] * out[1] * math.prod(out[2:]) * math.prod(w[1:])


def sdpa_cost(node: fx.Node, ins: list, out: tuple) -> tuple[str, int]:
    """scaled_dot_product_attention MACs = batch * L * S * (E + Ev) (scores plus mixing)."""
    q, k, v = ins[:3]
    return "attention", math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def einsum_cost(node: fx.Node, ins: list, out: tuple) -> tuple[str, int]:
    """Two-operand einsum MACs = product of the sizes of all distinct indices (one-operand: none)."""
    eq = node.args[0] if isinstance(node.args[0], str) else ""
    terms = eq.replace(" ", "").split("->")[0].split(",")
    if len(terms) != 2 or len(ins) != 2 or "." in eq:
        return "matmul", 0
    size = {c: d for term, shp in zip(terms, ins) for c, d in zip(term, shp)}
    return "matmul", math.prod(size.values())


def window_attention_cost(node: fx.Node, ins: list, out: tuple) -> tuple[str, int]:
    """torchvision shifted_window_attention: qkv (T*C*3C) + scores and mixing (2*T*N*C) + proj (T*C*C).

    T counts tokens after padding H, W to multiples of the window; N = tokens per window.
    """
    b, h, w, c = ins[0]
    win = _arg(node, 4, "window_size")
    hp, wp = -(-h // win[0]) * win[0], -(-w // win[1]) * win[1]
    t, n = b * hp * wp, win[0] * win[1]
    return "attention", t * c * ins[1][0] + 2 * t * n * c + t * c * ins[2][0]


def layer_norm_fn(ctx: Ctx, node: fx.Node) -> Any:
    """F.layer_norm(x, shape, weight, bias): weight/bias follow the last dim; the shape literal is rewritten."""
    labels = ctx.lab(node.args[0])
    shape = ctx.shape(node.args[0])
    last = ctx.need(labels[-1], shape[-1], f"node {node.name}")
    nshape = _arg(node, 1, "normalized_shape")
    if not isinstance(nshape, (list, tuple)) or len(nshape) != 1:
        ctx.atoms.freeze(last, f"node {node.name}: layer_norm over several dims")
    elif isinstance(nshape[0], int):
        ctx.literal(node, "seq1", 0, last)
    for i, key in ((2, "weight"), (3, "bias")):
        p = _arg(node, i, key)
        if isinstance(p, fx.Node):
            ctx.tie(last, (ctx.lab(p) or [None])[-1], f"node {node.name}")
    return list(labels[:-1]) + [last]


def unknown(ctx: Ctx, node: fx.Node) -> Any:
    """Anything without a rule freezes the channels it touches."""
    reason = f"node {node.name}: no channel rule for {node.op} {_target_name(node)}"
    for a in list(node.args) + list(node.kwargs.values()):
        for item in (a if isinstance(a, (list, tuple)) else [a]):
            ctx.freeze_value(ctx.lab(item), reason)
    return opaque_output(ctx, node)


def opaque_output(ctx: Ctx, node: fx.Node) -> Any:
    """The labels of an output no rule explains: a tensor of known shape with no channel space (every dim
    unlabelled), so whatever it meets downstream is frozen there; None for a non-tensor or a container."""
    shape = ctx.shape(node)
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return [None] * len(shape)
    return None


def _target_name(node: fx.Node) -> str:
    t = node.target
    return t if isinstance(t, str) else f"{getattr(t, '__module__', '')}.{getattr(t, '__name__', t)}"


def ignore(ctx: Ctx, node: fx.Node) -> Any:
    """Ops that produce no channel-carrying tensor (size, dim, asserts)."""
    return None


__all__ = ["elementwise", "passthrough", "spatial_fn", "reduce_dims", "permute", "transpose", "movedim", "flatten_fn",
           "view_like", "squeeze_unsqueeze", "expand", "cat", "stack", "split", "getitem", "matmul", "layer_norm_fn",
           "unknown", "ignore", "size_of", "repeat", "matmul_cost", "linear_fn_cost", "conv_fn_cost", "sdpa_cost", "einsum_cost",
           "window_attention_cost"]
