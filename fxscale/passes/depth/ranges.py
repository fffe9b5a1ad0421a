"""Conservative value ranges of graph nodes (eval mode), read from the op table's clamps, bounds and layouts."""
from __future__ import annotations

from typing import Any

import torch.fx as fx

from fxscale.ops.row import Interval
from fxscale.passes.depth.facts import ALL, identity_on, is_pool, reads, row_of


def value_range(n: Any, gm: fx.GraphModule, depth: int = 0) -> tuple[float, float]:
    """A conservative interval holding every value of node `n` (eval mode)."""
    if not isinstance(n, fx.Node) or depth > 64:
        return ALL
    row = row_of(gm, n)
    if row is None:
        return ALL
    r = identity_on(gm, n, row)
    if r is not None and r != ALL:  # a clamp: its outputs lie in the interval it is the identity on
        return r
    if row.bounds is not None:
        return row.bounds

    def rng(a: Any) -> Interval:
        if isinstance(a, (int, float)):
            return (float(a), float(a))
        return value_range(reads(gm, a, n), gm, depth + 1)

    if row.arith == "add" and len(n.args) == 2 and not n.kwargs:
        a, b = rng(n.args[0]), rng(n.args[1])
        return (a[0] + b[0], a[1] + b[1])
    if row.kind == "concat":  # cat / stack: the union of the parts
        seq = n.args[0] if n.args else None
        parts = [rng(x) if isinstance(x, fx.Node) else ALL for x in seq] if isinstance(seq, (list, tuple)) else []
        return (min(p[0] for p in parts), max(p[1] for p in parts)) if parts else ALL
    if r is not None or row.layout or is_pool(row):  # identities, data movement, max/mean pools
        return rng(n.all_input_nodes[0]) if n.all_input_nodes else ALL
    return ALL


def within(r: Interval, req: Interval) -> bool:
    return req[0] <= r[0] and r[1] <= req[1]


__all__ = ["value_range", "within"]
