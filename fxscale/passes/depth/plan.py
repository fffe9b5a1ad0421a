"""Depth plans: resolve every key of ScalingPlan.depths without mutating the graph."""
from __future__ import annotations

from typing import Mapping, Optional

import torch.fx as fx

from fxscale.errors import PlanError
from fxscale.passes.depth.identity import identity_recipe
from fxscale.passes.depth.index import _index
from fxscale.passes.depth.resolve import Insertion, resolve
from fxscale.tracing import META


def _check_train_graph(gm: fx.GraphModule, depths: Mapping[str, int]) -> None:
    if gm.meta.get(META, {}).get("train_gm") is not None and depths:
        raise PlanError("plan key 'depths': depth scaling of models with a train-mode graph (auxiliary heads, "
                        f"e.g. GoogLeNet/Inception) is not supported; got {sorted(depths)}")


def plan_depths(gm: fx.GraphModule, depths: Mapping[str, int], init: Optional[str] = "preserve"
                ) -> list[Insertion]:
    """Resolve every depth key without mutating anything; init=None skips the identity check.

    Raises PlanError naming the key for unknown stages, counts below the current one, blocks that cannot be
    repeated (shapes, structure) or, unless init == "reinit", made an identity; and for two keys on one block.
    """
    if not depths:
        return []
    idx = _index(gm)
    out: list[Insertion] = []
    for key in sorted(depths):
        ins = resolve(gm, key, depths[key], idx)
        if ins.copies:
            out.append(ins)
    if out:
        _check_train_graph(gm, {i.key: i.count for i in out})
    seen: dict[fx.Node, str] = {}
    for ins in out:
        for n in ins.nodes:
            if n in seen:
                raise PlanError(f"plan depth keys {seen[n]!r} and {ins.key!r} both change block {ins.block}; "
                                "use one key per block")
            seen[n] = ins.key
    if init is not None and init != "reinit":
        for ins in out:
            identity_recipe(gm, ins)
    return out


def validate_depths(gm: fx.GraphModule, depths: Mapping[str, int]) -> None:
    """ScalingPlan.validate's depth check: stages, counts, repeatable blocks (not the identity init)."""
    plan_depths(gm, depths, init=None)


__all__ = ["plan_depths", "validate_depths"]
