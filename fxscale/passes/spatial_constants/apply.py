"""Entry points: solve for the constants at a new size, and rewrite them into the graph."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from fxscale.errors import PlanError
from fxscale.passes.spatial_constants.factors import _Unsupported
from fxscale.passes.spatial_constants.nearby import _with_nearby
from fxscale.passes.spatial_constants.solve import _solve
from fxscale.tracing import META


def solve_spatial_constants(gm: fx.GraphModule, size: tuple[int, int], mode: str = "resize") -> dict[str, Any]:
    """Find the graph constants and position embeddings that must follow the new input size.

    ``gm`` is the graph about to run at ``size`` (with the inserted resize node in resize mode). Returns
    ``{"constants": [(node, path, old, new)], "position_embeddings": [_PosEmb]}``; raises PlanError naming the
    node when no consistent set of constants exists, with nearby sizes that work where some are found.
    """
    original = tuple(gm.meta[META]["input_shapes"][0][2:])
    try:
        return _solve(gm, original, tuple(size), mode)
    except _Unsupported as e:
        raise PlanError(f"resolution {size[0]}x{size[1]}: cannot analyse the graph shape-only ({e})") from None
    except PlanError as e:
        raise _with_nearby(gm, original, tuple(size), mode, e) from None


def _replace_at(args: Any, path: tuple, value: int) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(args, dict):
        new = dict(args)
        new[head] = value if not rest else _replace_at(args[head], rest, value)
        return new
    seq = list(args)
    seq[head] = value if not rest else _replace_at(args[head], rest, value)
    return type(args)(seq) if not isinstance(args, list) else seq


def apply_spatial_constants(gm: fx.GraphModule, solution: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the constants and resample the position embeddings found by :func:`solve_spatial_constants`."""
    report: dict[str, Any] = {"constants": [], "position_embeddings": []}
    for n, path, old, new in solution["constants"]:
        if path[0] in n.kwargs:
            n.kwargs = _replace_at(n.kwargs, path, new)
        else:
            n.args = _replace_at(n.args, path, new)
        report["constants"].append({"node": n.name, "arg": list(path), "old": old, "new": new})
    for spec in solution["position_embeddings"]:
        parent_name, _, leaf = spec.target.rpartition(".")
        parent = gm.get_submodule(parent_name) if parent_name else gm
        old = getattr(parent, leaf)
        if tuple(spec.grids[1]) != tuple(spec.grids[0]):
            with torch.no_grad():
                new = spec.resample(old.detach(), 1).contiguous()
            if isinstance(old, torch.nn.Parameter):
                setattr(parent, leaf, torch.nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                parent.register_buffer(leaf, new) if leaf in dict(parent.named_buffers(recurse=False)) \
                    else setattr(parent, leaf, new)
        report["position_embeddings"].append({"name": spec.target, "node": spec.node, "prefix": spec.prefix,
                                              "old_grid": list(spec.grids[0]), "new_grid": list(spec.grids[1])})
    if solution.get("relative_biases"):
        from fxscale.passes.spatial_constants.relbias import apply_relative_biases
        report["relative_biases"] = apply_relative_biases(gm, solution["relative_biases"])
    return report


__all__ = ["solve_spatial_constants", "apply_spatial_constants"]
