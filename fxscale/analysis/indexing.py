"""Channel rule of indexing (x[...], tuple elements): slices of a channel dim with literal bounds cut its label and
are rewritten with the widths (GhostNet's ``cat([x1, x2])[:, :out_chs]``); int and stepped indices freeze it."""
from __future__ import annotations

from typing import Any

import torch.fx as fx

from fxscale.analysis.context import Ctx
from fxscale.analysis.labels import concat


def getitem(ctx: Ctx, node: fx.Node) -> Any:
    """Tuple element, or tensor indexing with ints/slices/None/Ellipsis. A slice with literal bounds over a channel
    dim cuts its label (the bounds are rewritten with the widths); an int or stepped index freezes it."""
    src, idx = node.args
    labels = ctx.lab(src)
    if isinstance(labels, dict):
        sizes = labels.get("sizes")
        return {"size": sizes[idx]} if sizes is not None and isinstance(idx, int) else None
    if isinstance(labels, tuple):
        return labels[idx] if isinstance(idx, int) and idx < len(labels) else None
    if not isinstance(labels, list):
        return None
    items = list(enumerate(idx if isinstance(idx, tuple) else (idx,)))  # (position in the index, item)
    if any(it is Ellipsis for _k, it in items):
        k = next(i for i, (_p, it) in enumerate(items) if it is Ellipsis)
        fill = len(labels) - (len(items) - 1 - sum(1 for _p, it in items if it is None))
        items = items[:k] + [(-1, slice(None))] * fill + items[k + 1:]
    out, d = [], 0
    src_shape = ctx.shape(src)
    for pos, it in items:
        if it is None:
            out.append(None)
            continue
        lab = labels[d] if d < len(labels) else None
        if isinstance(it, slice) and it == slice(None):
            out.append(lab)
        elif isinstance(it, slice) and lab is None:
            out.append(None)
        elif isinstance(it, int) and lab is None:
            pass
        elif isinstance(it, slice):
            out.append(_slice(ctx, node, lab, it, src_shape[d], pos))
        else:
            ctx.atoms.freeze(lab, f"node {node.name}: indexing into a channel dim")
            if not isinstance(it, int):
                out.append(None)
        d += 1
    out.extend(labels[d:])
    return out


def _slice(ctx: Ctx, node: fx.Node, lab: tuple, it: slice, n: int, pos: int) -> Any:
    """x[..., a:b] over a channel dim: the label is cut at a and b; explicit bounds are recorded as literals equal
    to the width before them (or minus the width after them, for negative bounds)."""
    bounds = (it.start, it.stop, it.step)
    if pos < 0 or any(b is not None and not isinstance(b, int) for b in bounds) or it.step not in (None, 1):
        ctx.atoms.freeze(lab, f"node {node.name}: strided or computed slice of a channel dim")
        return None
    start, stop, _ = it.indices(n)
    if stop <= start:
        ctx.atoms.freeze(lab, f"node {node.name}: empty slice of a channel dim")
        return None
    sizes = [s for s in (start, stop - start, n - stop)]
    if start == 0 and stop == n:
        pre, mid, post = (), lab, ()
    else:
        cut = _cut(ctx, node, lab, [s for s in sizes if s])
        if cut[0] is None:
            return None
        it_cut = iter(cut)
        pre, mid, post = (next(it_cut) if s else () for s in sizes)
    for bound, value in (("start", it.start), ("stop", it.stop)):
        if value is None or value == 0:
            continue
        before = concat([pre] if bound == "start" else [pre, mid])
        after = concat([mid, post] if bound == "start" else [post])
        label, sign = (before, 1) if value > 0 else (after, -1)
        if label:
            ctx.literal(node, "slice", (pos, bound, sign), label)
    return mid


def _cut(ctx: Ctx, node: fx.Node, lab: tuple, sizes: list) -> list:
    from fxscale.analysis.ops import _cut as cut
    return cut(ctx, node, lab, sizes)


__all__ = ["getitem"]
