"""Plan builders of the baselines: uniform widths, a resolution factor, round-robin depth, compound scaling."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch

from fxscale.analysis.graph import ChannelGraph
from fxscale.errors import PlanError
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import scaled_resolution, uniform_widths


def uniform_plan(cg: ChannelGraph, w: float, align: int = 1) -> ScalingPlan:
    """Every scalable group times `w`."""
    return ScalingPlan(widths=uniform_widths(cg, w, align))


def resolution_plan(cg: ChannelGraph, r: float) -> ScalingPlan:
    """The traced resolution times `r`."""
    return ScalingPlan(resolution=scaled_resolution(cg, r))


def repeatable_stages(cg: ChannelGraph) -> dict[str, int]:
    """Depth keys the depth baselines grow, in model order, with their current block counts.

    A stage key (fxscale.passes.depth.stage_keys) is repeatable when ``ScalingPlan(depths={key: n + 1})``
    validates. Sequentials of blocks ("layer1") are preferred (innermost first); a block or conv key ("S.K") is
    kept only when its container is not already chosen, it shares no node with a chosen key (one block is
    never grown twice) and it does not lie inside a block (a layer inside an InvertedResidual or a
    Conv-BN-act unit is not a network stage). Digits ResNet: stages.0, stages.1; digits VGG: features.3,
    features.10 (the convs whose input and output shapes agree); torchvision MobileNetV2: its residual blocks.
    Cached on the ChannelGraph.
    """
    cache = cg.__dict__.setdefault("_baseline_stages", {})
    if "stages" in cache:
        return dict(cache["stages"])
    from fxscale.passes.depth import resolve, stage_keys
    gm = cg.gm
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    keys = stage_keys(gm)
    types = _module_types(gm)
    blocks = [k for k in keys if not _is_stage_type(k, types)]
    found = []
    for key in keys:
        if any(key.startswith(b + ".") for b in blocks):
            continue
        try:
            ins = resolve(gm, key, 1 << 30)  # any count >= the current one: resolves form, nodes, current
            ScalingPlan(depths={key: ins.current + 1}).validate(cg)
        except PlanError:
            continue
        found.append(ins)
    stages = sorted((i for i in found if i.form == "stage"), key=lambda i: -i.key.count("."))
    others = [i for i in found if i.form != "stage"]
    chosen, used, stage_names = [], set(), set()
    for ins in stages + others:
        if ins.form != "stage" and ins.container in stage_names:
            continue
        if used & set(ins.nodes):
            continue
        trial = {i.key: i.current + 1 for i in chosen}
        trial[ins.key] = ins.current + 1
        try:
            ScalingPlan(depths=trial).validate(cg)
        except PlanError:
            continue
        chosen.append(ins)
        used |= set(ins.nodes)
        if ins.form == "stage":
            stage_names.add(ins.key)
    chosen.sort(key=lambda i: order.get(i.nodes[0], 0) if i.nodes else 0)
    cache["stages"] = {i.key: int(i.current) for i in chosen}
    return dict(cache["stages"])


def _module_types(gm: Any) -> dict[str, type]:
    """Module path -> type, from the nn_module_stack metadata fxscale.trace leaves on the nodes."""
    types: dict[str, type] = {}
    for n in gm.graph.nodes:
        for key, val in (n.meta.get("nn_module_stack") or {}).items():
            path = ".".join(p.split("@")[0] for p in str(key).split("."))
            typ = val[1] if isinstance(val, tuple) and len(val) > 1 else None
            if isinstance(typ, type):
                types.setdefault(path, typ)
        if n.op == "call_module":
            types.setdefault(str(n.target), type(gm.get_submodule(n.target)))
    return types


def _is_stage_type(path: str, types: Mapping[str, type]) -> bool:
    """A Sequential whose last child has children of its own (a Sequential of blocks), not a single block."""
    if not issubclass(types.get(path, object), torch.nn.Sequential):
        return False
    pre = path + "."
    kids = {p[len(pre):].split(".")[0] for p in types if p.startswith(pre)}
    if not kids:
        return False
    last = max(kids, key=lambda c: (int(c) if c.isdigit() else -1, c))
    return any(p.startswith(f"{pre}{last}.") for p in types)


def depth_plan(stages: Mapping[str, int], increments: int) -> ScalingPlan:
    """`increments` blocks added round-robin (+1 per stage in order) to stages {key: current count}."""
    keys = list(stages)
    counts = dict(stages)
    for i in range(increments if keys else 0):
        counts[keys[i % len(keys)]] += 1
    return ScalingPlan(depths={k: v for k, v in counts.items() if v != stages[k]})


def _round_depth(x: float, how: str) -> int:
    if how == "ceil":
        return math.ceil(x - 1e-9)  # tolerance: n * 1.2**0 must stay n
    return math.floor(x + 0.5)  # round half up


def compound_plan(cg: ChannelGraph, d: float, w: float, r: float, *, align: int = 1,
                  stages: Optional[Mapping[str, int]] = None, depth_rounding: str = "ceil") -> ScalingPlan:
    """Depth x d (n -> ceil or round of n*d per stage), widths x w, resolution x r."""
    depths = {}
    for key, n in (stages or {}).items():
        m = max(n, _round_depth(n * d, depth_rounding))
        if m != n:
            depths[key] = m
    return ScalingPlan(widths=uniform_widths(cg, w, align), resolution=scaled_resolution(cg, r), depths=depths)


__all__ = ["compound_plan", "depth_plan", "repeatable_stages", "resolution_plan", "uniform_plan"]
