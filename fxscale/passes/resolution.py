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
from fxscale.ops.table import node_row
from fxscale.passes.spatial_constants import (  # noqa: F401 - re-exported
    _shapes_from_solver,
    _solve,
    _Unsupported,
    _with_nearby,
    apply_spatial_constants,
    resample_position_embedding,
    resample_spatial_map,
    solve_spatial_constants,
)
from fxscale.passes.spatial_weights import refuse_spatial_weights
from fxscale.tracing import META, dense_outputs, infer_shapes, leaf_at

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


_FLATTEN_ROWS = frozenset({"flatten", "flatten_m", "reshape", "reshape_m"})  # op-table rows of flatten/view/reshape


def _is_flatten(n: fx.Node) -> bool:
    """A flatten/view/reshape call (the op table's reshape rows)."""
    row = node_row(n)
    return row is not None and row.name in _FLATTEN_ROWS


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
# Dense outputs (segmentation maps, feature maps): their trailing H, W follow the input size
# ----------------------------------------------------------------------------------------------------------

DENSE_RESIZE = "dense output"


def resize_dense(x: torch.Tensor, size: tuple[int, int], antialias: bool = False) -> torch.Tensor:
    """Resize the trailing two dims of `x` to `size`: bilinear for float maps, nearest for label maps."""
    lead, hw = tuple(x.shape[:-2]), tuple(x.shape[-2:])
    y = x.reshape((-1, 1) + hw)
    if x.is_floating_point():
        y = F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
    else:  # integer / bool label maps: exact nearest neighbour, computed in float64
        y = F.interpolate(y.double(), size=tuple(size), mode="nearest").to(x.dtype)
    return y.reshape(lead + tuple(size))


def replace_leaf(value: Any, path: tuple, leaf: Any) -> Any:
    """`value` (nested dict / list / tuple / namedtuple) with the leaf at `path` replaced, types kept."""
    if not path:
        return leaf
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        new = dict(value)
        new[head] = replace_leaf(value[head], rest, leaf)
    else:
        new = list(value)
        new[head] = replace_leaf(value[head], rest, leaf)
        if hasattr(value, "_fields"):
            return type(value)(*new)
    try:
        return type(value)(new)  # OrderedDict, tuple, fx's immutable_dict / immutable_list
    except TypeError:
        return new


def resize_dense_leaf(value: Any, path: tuple, size: tuple[int, int], antialias: bool = False) -> Any:
    """Resize the dense leaf at `path` of a nested forward result (used when fx sees the result as one node)."""
    return replace_leaf(value, path, resize_dense(leaf_at(value, path), size, antialias))


def _shape_meta(node: fx.Node, shape: tuple) -> None:
    tm = getattr(node.args[0], "meta", {}).get("tensor_meta") if node.args else None
    node.meta[META] = {"inserted": DENSE_RESIZE, "paths": ((),), "shape": tuple(shape)}
    if hasattr(tm, "_replace"):
        stride, acc = [], 1
        for s in reversed(shape):
            stride.insert(0, acc)
            acc *= s
        node.meta["tensor_meta"] = tm._replace(shape=torch.Size(shape), stride=tuple(stride))


def _resize_node(gm: fx.GraphModule, value: Any, path: tuple, target: tuple, spec: dict, before: fx.Node,
                 body: Any) -> Any:
    """Rebuild the output argument `value` so that its leaf at `path` is resized to `target`'s trailing dims."""
    done = value.meta.get(META, {}) if isinstance(value, fx.Node) else {}
    if done.get("inserted") == DENSE_RESIZE and path in done.get("paths", ()):
        return value  # resized back already (an earlier resolution change)
    if isinstance(value, (dict, list, tuple)) and path:
        return replace_leaf(value, path[:1], _resize_node(gm, value[path[0]], path[1:], target, spec, before,
                                                           body[path[0]] if body is not None else None))
    if not isinstance(value, fx.Node):
        raise PlanError(f"dense output {list(path)} is not produced by a graph node; cannot resize it back")
    cur = leaf_at(body, path) if body is not None else None
    size = tuple(target[-2:])
    if isinstance(cur, tuple) and tuple(cur[-2:]) == size:
        return value
    down = isinstance(cur, tuple) and (cur[-2] > size[0] or cur[-1] > size[1])
    float_map = spec.get("dtype") is None or spec["dtype"].is_floating_point
    with gm.graph.inserting_before(before):
        if path:
            r = gm.graph.call_function(resize_dense_leaf, (value, path, size, down))
        elif len(target) == 4 and float_map:
            r = gm.graph.call_function(F.interpolate, (value,), {"size": size, "mode": "bilinear",
                                                                "align_corners": False, "antialias": down})
        else:
            r = gm.graph.call_function(resize_dense, (value, size, down))
    if path:
        r.meta[META] = {"inserted": DENSE_RESIZE, "paths": tuple(done.get("paths", ())) + (path,),
                        "shape": replace_leaf(body, path, tuple(target)) if body is not None else None}
    else:
        _shape_meta(r, tuple(target))
    return r


def resize_dense_outputs(gm: fx.GraphModule, original: Any, dense: dict[tuple, dict]) -> list[list]:
    """Resize every dense output leaf back to its shape in `original` (resize mode keeps the model drop-in)."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    value, body = out.args[0], out.meta.get(META, {}).get("shape")
    for path, spec in dense.items():
        value = _resize_node(gm, value, path, tuple(leaf_at(original, path)), spec, out, body)
    out.args = (value,)
    out.meta.setdefault(META, {})["shape"] = original
    out.meta["tensor_meta"] = fx.node.map_arg(value, lambda n: n.meta.get("tensor_meta"))
    return [list(p) for p in dense]


def follow_dense_outputs(gm: fx.GraphModule, original: Any, dense: dict[tuple, dict]) -> Any:
    """`original` output shapes with each dense leaf replaced by its propagated shape at the new input size."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    body = out.meta.get(META, {}).get("shape")
    shapes = original
    for path in dense:
        shapes = replace_leaf(shapes, path, tuple(leaf_at(body, path)))
    return shapes


# ----------------------------------------------------------------------------------------------------------
# Position embeddings
# ----------------------------------------------------------------------------------------------------------

def _refresh_shapes(gm: fx.GraphModule, info: dict[str, Any]) -> None:
    """Re-propagate the shapes of `gm` at its current input size (shape-only): the flatten pools below read the
    trailing dims of their inputs from the metadata, which must describe this graph, not the traced one."""
    inputs = [torch.zeros(s, dtype=dt) for s, dt in zip(info["input_shapes"], info["input_dtypes"])]
    with contextlib.suppress(TraceError), contextlib.redirect_stderr(io.StringIO()):
        infer_shapes(gm, *inputs)


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
        return {"mode": mode, "size": size, "pooled_flattens": [], "constants": [], "position_embeddings": [],
                "dense_outputs": []}
    dense = dense_outputs(gm)  # before the graph changes: probed at the current input size
    _refresh_shapes(gm, info)  # an earlier pass (widths) may have left the traced shapes in the metadata
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
            infer_shapes(gm, *inputs)
    except TraceError as err:
        try:
            solution = _solve(gm, original, size, mode)
        except _Unsupported:
            refuse_spatial_weights(gm, tuple(inputs), size, str(err))
            raise err from None
        except PlanError as e:  # no constants make it run: say why when the node it fails at has spatial weights
            refuse_spatial_weights(gm, tuple(inputs), size, str(e))
            raise _with_nearby(gm, original, size, mode, e) from None
        if not solution["constants"] and not solution["position_embeddings"] and not solution.get("relative_biases"):
            refuse_spatial_weights(gm, tuple(inputs), size, str(err))
            raise err
        fixes = apply_spatial_constants(gm, solution)
        gm.graph.lint()
        gm.recompile()
        _shapes_from_solver(gm, solution["solver"])
    fixed = drop_noop_pools(gm, pools)
    if mode == "resize" and dense:
        resize_dense_outputs(gm, info["output_shapes"], dense)
    gm.graph.lint()
    gm.recompile()
    if mode == "input":
        info["input_shapes"][0] = tuple(info["input_shapes"][0][:2]) + size
        if dense:
            info["output_shapes"] = follow_dense_outputs(gm, info["output_shapes"], dense)
    info["resolution"] = size
    info["resolution_mode"] = mode
    return {"mode": mode, "size": size, "pooled_flattens": fixed, **fixes,
            "dense_outputs": [list(p) for p in dense]}


__all__ = ["resolution_pass", "RESOLUTION_MODES", "insert_resize", "pool_before_flattens", "drop_noop_pools",
           "resize_dense", "resize_dense_outputs", "follow_dense_outputs", "solve_spatial_constants", "apply_spatial_constants", "resample_position_embedding",
           "resample_spatial_map"]
