"""Weights that span a spatial dimension: the one case where no resolution change exists without new weights.

A Linear (or ``F.linear`` / ``matmul`` with a parameter) whose ``in_features`` is a token count or a feature-map
side -- MLP-Mixer's and ResMLP's token-mixing MLPs, ``nn.Linear(H*W, ...)`` applied over the token dim -- holds
one weight per spatial position. Unlike a position embedding there is no table of values per position to
resample: the weights are the mixing itself, and a different resolution needs new weights. The resolution pass
calls :func:`refuse_spatial_weights` when the graph does not run at the new size, and raises a PlanError naming
the node instead of the shape error, so the user learns why rather than where.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from fxscale.errors import PlanError
from fxscale.tracing import META

_LINEAR_FNS = (F.linear, torch.matmul, torch.mm, torch.bmm)


def _first_failure(gm: fx.GraphModule, inputs: tuple) -> tuple[Optional[fx.Node], dict[fx.Node, tuple]]:
    """Run `gm` node by node on the meta device; the first node that raises and the shapes computed before it."""
    from torch.nn.utils.stateless import _reparametrize_module

    from fxscale.tracing import _meta_state, _to_meta

    shapes: dict[fx.Node, tuple] = {}

    class _Probe(fx.Interpreter):
        failed: Optional[fx.Node] = None

        def run_node(self, n: fx.Node) -> Any:
            try:
                out = super().run_node(n)
            except Exception:
                if getattr(n.target, "__name__", "") == "_assert":
                    return None  # a size check (the resolution pass rewrites its literal); not a weight
                _Probe.failed = n
                raise
            if isinstance(out, torch.Tensor):
                shapes[n] = tuple(out.shape)
            return out

    try:
        with _reparametrize_module(gm, _meta_state(gm)), torch.no_grad():
            _Probe(gm).run(*_to_meta(inputs))
    except Exception:  # noqa: BLE001 - the failing node is the result
        pass
    return _Probe.failed, shapes


def _weight_in_features(gm: fx.GraphModule, n: fx.Node) -> Optional[tuple[fx.Node, int, str]]:
    """(input node, in_features, what) when `n` applies a fixed weight along the last dim of its first input."""
    if not n.args or not isinstance(n.args[0], fx.Node):
        return None
    if n.op == "call_module":
        mod = gm.get_submodule(str(n.target))
        if isinstance(mod, nn.Linear):
            return n.args[0], mod.in_features, f"{type(mod).__name__} {n.target}"
        return None
    if n.op == "call_function" and n.target in _LINEAR_FNS and len(n.args) > 1 and isinstance(n.args[1], fx.Node) \
            and n.args[1].op == "get_attr":
        w = n.args[1]
        size = tuple(getattr(_attr(gm, str(w.target)), "shape", ()))
        if len(size) >= 2:  # F.linear's weight is (out, in); matmul's right operand is (..., in, out)
            k = size[-1] if n.target is F.linear else size[-2]
            return n.args[0], int(k), f"{getattr(n.target, '__name__', n.target)} with weight {w.target}"
    return None


def _attr(gm: fx.GraphModule, path: str) -> Any:
    obj: Any = gm
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def refuse_spatial_weights(gm: fx.GraphModule, inputs: tuple, size: tuple[int, int], failure: str) -> None:
    """Raise a PlanError when `gm` (about to run at `size`, no constant re-derivation making it run) first fails
    at a weight whose input dim follows the input size, and `failure` (the error found without this check) names
    that node too; return otherwise (the caller then reports the failure as usual)."""
    failed, shapes = _first_failure(gm, inputs)
    if failed is None or f"node {failed.name} " not in failure:
        return
    found = _weight_in_features(gm, failed)
    if found is None:
        return
    a, k, what = found
    new = shapes.get(a)
    old = a.meta.get(META, {}).get("shape")
    if not (isinstance(old, tuple) and new and old and old[-1] == k and new[-1] != k):
        return
    raise PlanError(f"resolution {size[0]}x{size[1]}: node {failed.name} ({what}) has weights that span a spatial "
                    f"dimension: its {k} input features are the {k} tokens/positions of the traced input, which "
                    f"become {new[-1]} at this size; no resolution change exists without new weights")


__all__ = ["refuse_spatial_weights"]
