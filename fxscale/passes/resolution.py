"""Resolution pass: resize the input inside the graph, and keep C*H*W classifiers consistent."""
from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from fxscale.tracing import META, propagate_shapes

RESOLUTION_MODES = ("resize", "input")


def _first_input(gm: fx.GraphModule) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.op == "placeholder")


def insert_resize(gm: fx.GraphModule, size: tuple[int, int], original: tuple[int, int]) -> fx.Node:
    """Insert F.interpolate(x, size) right after the first input (bilinear; antialias when downscaling)."""
    x = _first_input(gm)
    down = size[0] < original[0] or size[1] < original[1]
    with gm.graph.inserting_after(x):
        r = gm.graph.call_function(F.interpolate, (x,), {"size": tuple(size), "mode": "bilinear",
                                                        "align_corners": False, "antialias": down})
    x.replace_all_uses_with(r, delete_user_cb=lambda u: u is not r)
    r.meta[META] = {"inserted": "resolution"}
    return r


_FLATTENS = {torch.flatten, "flatten", "view", "reshape", torch.reshape}


def _is_flatten(n: fx.Node) -> bool:
    return n.op in ("call_function", "call_method") and n.target in _FLATTENS


def pool_before_flattens(gm: fx.GraphModule) -> list[fx.Node]:
    """Before every [N, C, H, W] -> [N, C*H*W] flatten (H*W > 1), pool back to the traced H, W."""
    pools = []
    for n in list(gm.graph.nodes):
        if not _is_flatten(n) or not isinstance(n.args[0], fx.Node):
            continue
        src = n.args[0]
        old, out = src.meta.get(META, {}).get("shape"), n.meta.get(META, {}).get("shape")
        if not (isinstance(old, tuple) and len(old) == 4 and isinstance(out, tuple) and len(out) == 2):
            continue
        if old[2] * old[3] == 1:
            continue
        with gm.graph.inserting_before(n):
            pool = gm.graph.call_function(F.adaptive_avg_pool2d, (src, tuple(old[2:])))
        n.replace_input_with(src, pool)
        pool.meta[META] = {"inserted": "keep C*H*W features"}
        pools.append(pool)
    return pools


def drop_noop_pools(gm: fx.GraphModule, pools: list[fx.Node]) -> list[str]:
    """Remove inserted pools whose input already has the target spatial size; return the kept ones."""
    kept = []
    for pool in pools:
        src = pool.args[0]
        if tuple(src.meta.get(META, {}).get("shape", ())[2:]) == tuple(pool.args[1]):
            pool.replace_all_uses_with(src)
            gm.graph.erase_node(pool)
        else:
            kept.append(next(iter(pool.users)).name)
    return kept


def resolution_pass(gm: fx.GraphModule, size: tuple[int, int], mode: str = "resize") -> dict[str, Any]:
    """Scale the input resolution of `gm` in place: 'resize' keeps the original input, 'input' changes it."""
    info = gm.meta[META]
    original = tuple(info["input_shapes"][0][2:])
    pools = pool_before_flattens(gm)
    if mode == "resize":
        insert_resize(gm, size, original)
    gm.graph.lint()
    gm.recompile()
    inputs = [torch.zeros(tuple(info["input_shapes"][0][:2]) + (tuple(size) if mode == "input" else original),
                          dtype=info["input_dtypes"][0])]
    propagate_shapes(gm, *inputs)
    fixed = drop_noop_pools(gm, pools)
    gm.graph.lint()
    gm.recompile()
    if mode == "input":
        info["input_shapes"][0] = tuple(info["input_shapes"][0][:2]) + tuple(size)
    info["resolution"] = tuple(size)
    info["resolution_mode"] = mode
    return {"mode": mode, "size": tuple(size), "pooled_flattens": fixed}


__all__ = ["resolution_pass", "RESOLUTION_MODES", "operator"]
