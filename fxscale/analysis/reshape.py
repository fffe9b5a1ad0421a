"""Channel rules of reshapes: view/reshape/flatten/squeeze as factorisations of channel dims, and size reads."""
from __future__ import annotations

import math
import operator
from typing import Any, Optional

import torch
import torch.fx as fx

from fxscale.analysis.context import Ctx
from fxscale.analysis.labels import Incompatible, with_inner


def _dim(d: int, nd: int) -> int:
    return d + nd if d < 0 else d


def _arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _blocks(si: tuple, so: tuple) -> Optional[list]:
    """Pair runs of input dims with runs of output dims whose sizes multiply to the same number."""
    i = j = 0
    out = []
    while i < len(si) or j < len(so):
        if i < len(si) and si[i] == 1 and (j >= len(so) or so[j] != 1):
            out.append(([i], []))
            i += 1
            continue
        if j < len(so) and so[j] == 1 and (i >= len(si) or si[i] != 1):
            out.append(([], [j]))
            j += 1
            continue
        if i >= len(si) or j >= len(so):
            return None
        bi, bj, pi, pj = [i], [j], si[i], so[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(si):
                    return None
                pi *= si[i]
                bi.append(i)
                i += 1
            else:
                if j >= len(so):
                    return None
                pj *= so[j]
                bj.append(j)
                j += 1
        out.append((bi, bj))
    return out


def _size_args(node: fx.Node) -> tuple[Optional[list], str]:
    """The explicit size arguments of a view/reshape node, and where they sit."""
    if node.target in ("view", "reshape") and node.op == "call_method":
        rest = node.args[1:]
        if len(rest) == 1 and isinstance(rest[0], (list, tuple)):
            return list(rest[0]), "seq1"
        return list(rest), "varargs"
    if node.target is torch.reshape:
        return list(_arg(node, 1, "shape")), "seq1"
    return None, ""


def reshape_labels(ctx: Ctx, node: fx.Node, src: Any, _unused: Any = None) -> Any:
    """view/reshape/flatten as dimension factorisations: merges and splits of channel dims."""
    labels, si, so = ctx.lab(src), ctx.shape(src), ctx.shape(node)
    sizes, where = _size_args(node)
    if not isinstance(labels, list):
        out = [None] * len(so) if isinstance(so, tuple) else None
        tie_size_args(ctx, node, out or [], sizes)
        return out
    blocks = _blocks(tuple(si), tuple(so))
    if blocks is None:
        ctx.freeze_value(labels, f"node {node.name}: reshape {si} -> {so} not understood")
        return [None] * len(so)
    out: list = [None] * len(so)
    for bi, bj in blocks:
        labs = [labels[i] for i in bi if labels[i] is not None]
        if not labs or not bj:
            if labs:
                ctx.freeze_value(labs, f"node {node.name}: channel dim squeezed away")
            continue
        if len(bi) == 1 and len(bj) == 1:
            out[bj[0]] = labels[bi[0]]
        elif len(bi) == 1:
            out[bj[0]:bj[-1] + 1] = _split_dim(ctx, node, labels[bi[0]], bj, so, sizes)
        elif len(bj) == 1 and len(labs) == 1:
            c = next(i for i in bi if labels[i] is not None)
            outer = math.prod(si[i] for i in bi if i < c)
            inner = math.prod(si[i] for i in bi if i > c)
            out[bj[0]] = with_inner(labels[c], inner) * outer
        else:
            ctx.freeze_value(labs, f"node {node.name}: reshape mixes several channel dims")
            continue
        for j in bj:
            if out[j] is not None and sizes is not None and isinstance(sizes[j], int) and sizes[j] != -1:
                ctx.literal(node, where, j, out[j])
    tie_size_args(ctx, node, out, sizes)
    return out


def _split_dim(ctx: Ctx, node: fx.Node, lab: tuple, bj: list, so: tuple, sizes: Optional[list]) -> list:
    """Factor one channel dim into several: one variable dim carries the channels, the others are fixed."""
    def variable(j: int) -> bool:
        return sizes is not None and (sizes[j] == -1 or _channel_size(ctx, sizes[j]))
    var = [j for j in bj if variable(j)]
    if len(var) > 1:
        ctx.atoms.freeze(lab, f"node {node.name}: reshape splits a channel dim into several variable dims")
        return [None] * len(bj)
    v = var[0] if var else max(j for j in bj if so[j] > 1)
    if not var and sizes is not None and isinstance(sizes[v], fx.Node):
        ctx.atoms.freeze(lab, f"node {node.name}: reshape size {sizes[v].name} of a channel dim is read from a "
                              "dim that does not follow the plan")
        return [None] * len(bj)
    outer = math.prod(so[j] for j in bj if j < v)
    inner = math.prod(so[j] for j in bj if j > v)
    new = ctx.atoms.label(so[v], f"{node.name} factor")
    try:
        ctx.atoms.tie(lab, with_inner(new, inner) * outer)
    except Incompatible as e:
        ctx.atoms.freeze(lab, f"node {node.name}: {e}")
        return [None] * len(bj)
    return [new if j == v else None for j in bj]


def _channel_size(ctx: Ctx, s: Any) -> bool:
    """True if a reshape size argument is an int computed in the graph from a channel width (it follows the plan
    where the analysis ties it); an int node read from a batch, spatial or fixed dim keeps its traced value."""
    mark = ctx.lab(s) if isinstance(s, fx.Node) else None
    return isinstance(mark, dict) and (mark.get("size") is not None or "derived" in mark)


def flatten_fn(ctx: Ctx, node: fx.Node) -> Any:
    """torch.flatten / x.flatten."""
    return reshape_labels(ctx, node, node.args[0])


def view_like(ctx: Ctx, node: fx.Node) -> Any:
    """view/reshape/unflatten."""
    return reshape_labels(ctx, node, node.args[0])


def squeeze_unsqueeze(ctx: Ctx, node: fx.Node) -> Any:
    """squeeze/unsqueeze: size-1 dims come and go."""
    return reshape_labels(ctx, node, node.args[0])


def size_of(ctx: Ctx, node: fx.Node) -> Any:
    """x.shape / x.size() / x.size(d): remember which channel label an int was read from."""
    labels = ctx.lab(node.args[0])
    if not isinstance(labels, list):
        return None
    if node.target is getattr and node.args[1] != "shape":
        return None
    d = _arg(node, 1, "dim") if node.op == "call_method" else None
    if d is not None:
        return {"size": labels[_dim(d, len(labels))]}
    return {"sizes": labels}


def size_arith(ctx: Ctx, node: fx.Node) -> Any:
    """Int arithmetic on sizes: ``C // k`` of a channel width C is remembered as C split into k parts (attention
    heads); any other arithmetic on a channel width as a width the rules cannot follow."""
    marks = [ctx.lab(a) for a in node.args if isinstance(ctx.lab(a), dict)]
    labels = [m.get("size") for m in marks if m.get("size") is not None] + \
        [lab for m in marks for lab in m.get("derived", ())]
    if not labels:
        return None
    a, b = (list(node.args) + [None])[:2]
    src = ctx.lab(a).get("size") if isinstance(ctx.lab(a), dict) else None
    if node.target is operator.floordiv and src is not None and labels == [src] and isinstance(b, int) and b > 0:
        return {"size_div": (labels[0], b), "derived": tuple(labels)}
    return {"derived": tuple(labels)}


def _tie_div(ctx: Ctx, node: fx.Node, src: Any, k: int, dim: Any) -> None:
    """The reshape dim `dim` is sized width(src) // k: src becomes k equal parts, each sized like `dim`."""
    width = ctx.atoms.width(src)
    try:
        if width % k:
            raise Incompatible(f"{width} channels in {k} parts")
        parts = [ctx.atoms.label(width // k, f"{node.name} part") for _ in range(k)]
        ctx.atoms.tie(src, tuple(p for part in parts for p in part))
        for part in parts:
            ctx.atoms.tie_size_labels(part, dim)
    except Incompatible as e:
        ctx.freeze_value([src, dim], f"node {node.name}: reshape size {width} // {k}: {e}")


def tie_size_args(ctx: Ctx, node: fx.Node, out: list, sizes: Optional[list]) -> None:
    """A reshape size read from another tensor's channel dim ties that dim to the output dim; ``C // k`` makes C k
    parts sized like the output dim; other arithmetic on channel widths freezes both sides."""
    for j, s in enumerate(sizes or []):
        mark = ctx.lab(s) if isinstance(s, fx.Node) else None
        if isinstance(mark, dict) and "derived" in mark and j < len(out):
            if "size_div" in mark and out[j] is not None:
                _tie_div(ctx, node, mark["size_div"][0], mark["size_div"][1], out[j])
            else:
                ctx.freeze_value(list(mark["derived"]) + [out[j]],
                                 f"node {node.name}: reshape size computed from a channel width")
            continue
        src = mark.get("size") if isinstance(mark, dict) else None
        if src is None and isinstance(s, fx.Node) and j < len(out) and out[j] is not None:
            ctx.atoms.freeze(out[j], f"node {node.name}: reshape size {s.name} of a channel dim is read from a dim "
                                     "that does not follow the plan")
            continue
        if src is None or j >= len(out):
            continue
        if out[j] is None:
            ctx.atoms.freeze(src, f"node {node.name}: reshape size taken from a channel dim")
        else:
            ctx.tie(out[j], src, f"node {node.name}")
