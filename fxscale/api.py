"""Public entry points: analyze a traced model and transform it with a ScalingPlan."""
from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping, Optional, Union

import torch
import torch.fx as fx

from fxscale.analysis.graph import ChannelGraph, analyze
from fxscale.errors import PlanError
from fxscale.guard import check_memory
from fxscale.passes.base import PassManager
from fxscale.passes.channel_map import INITS, build_maps
from fxscale.passes.depth import plan_depths
from fxscale.passes.resolution import RESOLUTION_MODES
from fxscale.passes.scale import scaling_passes
from fxscale.passes.width import replaced_tensors
from fxscale.plan import ScalingPlan
from fxscale.tracing import META, dense_outputs, guard_eval_only


def copy_graph_module(gm: fx.GraphModule, share: Iterable[torch.Tensor] = ()) -> fx.GraphModule:
    """Deep copy whose nodes own their fxscale metadata (fx copies node.meta shallowly).

    Tensors in `share` are not copied: only for tensors a pass is about to replace in the copy (the width pass's
    rebuilt weights), so the copy never holds them once that pass has run.
    """
    memo: dict[int, Any] = {id(t): t for t in share}
    new = copy.deepcopy(gm, memo)
    new.meta = copy.deepcopy(gm.meta, memo)
    tgm = new.meta[META].get("train_gm")
    for n in list(new.graph.nodes) + (list(tgm.graph.nodes) if tgm is not None else []):
        if META in n.meta:
            n.meta[META] = dict(n.meta[META])
    if tgm is not None:
        from fxscale.tracing import share_modules
        share_modules(new, tgm)
    guard_eval_only(new)  # an eval-only trace stays eval-only (forward hooks do not survive deepcopy)
    return new


def transform(gm: fx.GraphModule, plan: ScalingPlan, init: str = "preserve", *, seed: int = 0,
              noise: float = 0.0, importance: Optional[Mapping[str, torch.Tensor]] = None,
              resolution_mode: str = "resize", cg: Optional[ChannelGraph] = None,
              max_memory: Optional[Union[int, float, str]] = None) -> fx.GraphModule:
    """Return a verified copy of `gm` rescaled by `plan` (the input GraphModule is never mutated).

    Order: widths, then resolution, then depths (repeated blocks are copies of the rescaled ones). For depth,
    "preserve" and "prune" add identity-initialised blocks (PlanError if a block cannot be one), "reinit"
    adds freshly initialised blocks. Depth plans are refused for models with a train-mode graph.

    Before anything is allocated, the plan's memory (fp32 parameters before and after, activations at batch 1;
    see fxscale.guard) is checked against `max_memory` (bytes or '64GB'; default: MemAvailable of
    /proc/meminfo; math.inf: no check): PlanError naming the figures when it does not fit.
    """
    if init not in INITS:
        raise PlanError(f"init must be one of {INITS}, got {init!r}")
    if resolution_mode not in RESOLUTION_MODES:
        raise PlanError(f"resolution_mode must be one of {RESOLUTION_MODES}, got {resolution_mode!r}")
    if not isinstance(plan, ScalingPlan):
        raise PlanError(f"plan must be a fxscale.ScalingPlan, got {type(plan).__name__}")
    cg = cg if cg is not None and cg.gm is gm else analyze(gm)
    plan.validate(cg)
    check_memory(cg, plan, max_memory, mode=resolution_mode)
    if plan.depths:  # identity-init check before any work; depth_pass resolves again on the rescaled copy
        plan_depths(gm, plan.depths, init)
    res = plan.resolution
    changes_resolution = res is not None and tuple(res) != tuple(gm.meta[META].get("resolution") or ())
    if changes_resolution:
        dense_outputs(gm)  # probed once on the user's graph and kept in its metadata (cached for later plans)
    maps = build_maps(cg, plan, init, seed=seed, importance=importance) if plan.widths else None
    passes = scaling_passes(cg, maps, tuple(res) if changes_resolution else None, plan.depths or {}, init=init,
                            noise=noise, seed=seed, resolution_mode=resolution_mode)
    new = copy_graph_module(gm, replaced_tensors(cg, maps, gm) if maps is not None else ())
    # the final static check names layers by their analysed paths, which a depth pass renumbers
    context = {"cg": cg, "maps": maps} if not plan.depths else {}
    report = dict(PassManager(passes, context=context)(new).report)
    new.meta[META]["transform"] = {"plan": plan.to_json(), "init": init, **{k: v for k, v in report.items()}}
    new.train(gm.training)
    return new
