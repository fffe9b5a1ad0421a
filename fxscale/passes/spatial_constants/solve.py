"""Solving: probe sizes, the lockstep solver run, and the shapes it found."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from fxscale.passes.spatial_constants.solver import _Solver
from fxscale.tracing import META, _shapes


def _probe_sizes(original: tuple[int, int], size: tuple[int, int]) -> list[tuple[int, int]]:
    """Traced size, target size and a check size (twice the target)."""
    return [tuple(original), tuple(size), (2 * size[0], 2 * size[1])]


def _make_solver(gm: fx.GraphModule, sizes: list[tuple[int, int]], mode: str) -> _Solver:
    info = gm.meta[META]
    resize = next((n for n in gm.graph.nodes if n.meta.get(META, {}).get("inserted") == "resolution"), None)
    shapes0 = [tuple(s) for s in info["input_shapes"]]
    probe_inputs, resize_shapes = [], []
    for hw in sizes:
        shapes = list(shapes0)
        if resize is None and mode == "input":
            shapes[0] = tuple(shapes0[0][:2]) + tuple(hw)
        probe_inputs.append(tuple(torch.empty(s, dtype=dt, device="meta")
                                  for s, dt in zip(shapes, info["input_dtypes"])))
        resize_shapes.append(tuple(shapes0[0][:2]) + tuple(hw))
    return _Solver(gm, probe_inputs, resize, resize_shapes)


def _solve(gm: fx.GraphModule, original: tuple, size: tuple, mode: str) -> dict[str, Any]:
    """Run the solver at the traced size, ``size`` and twice ``size``; the constants that change at ``size``."""
    solver = _make_solver(gm, _probe_sizes(original, size), mode)
    solver.solve()
    constants = []
    for n, sites in solver.sites.items():
        for path, vals in sites.items():
            if vals[1] != vals[0]:
                constants.append((n, path, vals[0], vals[1]))
    return {"constants": constants, "position_embeddings": list(solver.posemb.values()),
            "relative_biases": list(solver.relbias.values()), "solver": solver}


def _shapes_from_solver(gm: fx.GraphModule, solver: _Solver, probe: int = 1) -> None:
    """Record the shapes the solver found at the target size, as propagate_shapes would (no real forward)."""
    def meta(obj: Any) -> Any:
        return _extract_tensor_metadata(obj) if isinstance(obj, torch.Tensor) else obj

    for n in gm.graph.nodes:
        if n.op == "output":
            result = fx.node.map_arg(n.args[0], lambda a: solver.vals[a][probe])
        elif n in solver.vals:
            result = solver.vals[n][probe]
        else:
            continue
        tm = fx.node.map_aggregate(result, meta)
        if any(isinstance(t, torch.Tensor) for t in _flat(result)):
            n.meta["tensor_meta"] = tm
        n.meta["type"] = type(result)
        n.meta.setdefault(META, {})["shape"] = _shapes(n.meta.get("tensor_meta"))


def _flat(obj: Any) -> list:
    out: list = []
    fx.node.map_aggregate(obj, out.append)
    return out


__all__ = ["_probe_sizes", "_make_solver", "_solve", "_shapes_from_solver"]
