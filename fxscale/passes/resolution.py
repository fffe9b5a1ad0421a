"""Resolution pass: resize the input inside the graph, keep C*H*W classifiers consistent, and re-derive the
constants a trace baked in at the traced resolution (ViT/MaxViT: see fxscale.passes.spatial_constants)."""
from __future__ import annotations

import contextlib
import io
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from fxscale.errors import PlanError, TraceError
from fxscale.tracing import META, propagate_shapes

from fxscale.passes.spatial_constants import (  # noqa: F401 - re-exported
    _shapes_from_solver, _solve, _Unsupported, _with_nearby, apply_spatial_constants, resample_position_embedding,
    resample_spatial_map, solve_spatial_constants)

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


# ----------------------------------------------------------------------------------------------------------
# Position embeddings
# ----------------------------------------------------------------------------------------------------------

def resolution_pass(gm: fx.GraphModule, size: tuple[int, int], mode: str = "resize") -> dict[str, Any]:
    """Scale the input resolution of `gm` in place: 'resize' keeps the original input, 'input' changes it.

    At the traced size this is an exact no-op. When the graph does not run at the new size as it is, the
    constants baked in at the traced size are re-derived (see the module docstring) or a PlanError names the
    node that cannot follow.
    """
    info = gm.meta[META]
    original = tuple(info["input_shapes"][0][2:])
    size = tuple(int(s) for s in size)
    if size == original and tuple(info.get("resolution") or original) == original:
        info["resolution"] = size
        info["resolution_mode"] = mode
        return {"mode": mode, "size": size, "pooled_flattens": [], "constants": [], "position_embeddings": []}
    pools = pool_before_flattens(gm)
    if mode == "resize":
        insert_resize(gm, size, original)
    gm.graph.lint()
    gm.recompile()
    inputs = [torch.zeros(tuple(info["input_shapes"][0][:2]) + (size if mode == "input" else original),
                          dtype=info["input_dtypes"][0])]
    inputs += [torch.zeros(s, dtype=dt) for s, dt in zip(info["input_shapes"][1:], info["input_dtypes"][1:])]
    fixes: dict[str, Any] = {"constants": [], "position_embeddings": []}
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback of a failing node
            propagate_shapes(gm, *inputs)
    except TraceError as err:
        try:
            solution = _solve(gm, original, size, mode)
        except _Unsupported:
            raise err from None
        except PlanError as e:
            raise _with_nearby(gm, original, size, mode, e) from None
        if not solution["constants"] and not solution["position_embeddings"]:
            raise err
        fixes = apply_spatial_constants(gm, solution)
        gm.graph.lint()
        gm.recompile()
        _shapes_from_solver(gm, solution["solver"])
    fixed = drop_noop_pools(gm, pools)
    gm.graph.lint()
    gm.recompile()
    if mode == "input":
        info["input_shapes"][0] = tuple(info["input_shapes"][0][:2]) + size
    info["resolution"] = size
    info["resolution_mode"] = mode
    return {"mode": mode, "size": size, "pooled_flattens": fixed, **fixes}


__all__ = ["resolution_pass", "RESOLUTION_MODES", "insert_resize", "pool_before_flattens", "drop_noop_pools",
           "solve_spatial_constants", "apply_spatial_constants", "resample_position_embedding",
           "resample_spatial_map"]
