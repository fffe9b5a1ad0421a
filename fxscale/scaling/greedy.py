"""HACScale Algorithm 1: importance-aware width scaling under latency and parameter budgets."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from fxscale.analysis.graph import ChannelGraph
from fxscale.cost import cost_model
from fxscale.errors import FxscaleError
from fxscale.hw.latency import BoundLatency
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import Budget
from fxscale.scaling.powerlaw import ImportancePredictor

RULES = ("paper", "cost")




class _LayerSum:
    """A sum over the cost model's layers of value(LayerCost), updated one group at a time."""

    def __init__(self, cg: ChannelGraph, plan: ScalingPlan, value: Callable[[Any], float], const: float,
                 mode: str) -> None:
        self.cm = cost_model(cg, plan.resolution, mode=mode)
        self.value = value
        self.sizes = self.cm.sizes(plan)
        self.per = [value(self.cm.layer(i, self.sizes)) for i in range(len(self.cm.layers))]
        self.total = const + sum(self.per)

    def peek(self, group: str, width: int) -> float:
        """Total if `group` had `width` (not committed)."""
        sizes = dict(self.sizes)
        idx = self.cm.set_width(sizes, group, width)
        return self.total + sum(self.value(self.cm.layer(i, sizes)) - self.per[i] for i in idx)

    def set_width(self, group: str, width: int) -> float:
        """Commit a width; return the new total."""
        for i in self.cm.set_width(self.sizes, group, width):
            new = self.value(self.cm.layer(i, self.sizes))
            self.total += new - self.per[i]
            self.per[i] = new
        return self.total


class ParamTracker(_LayerSum):
    """Exact parameter count under incremental width changes (analytic cost model, no rebuild)."""

    def __init__(self, cg: ChannelGraph, plan: ScalingPlan, mode: str = "input") -> None:
        plan = ScalingPlan(widths=dict(plan.widths), resolution=plan.resolution)
        super().__init__(cg, plan, lambda r: r.params, cost_model(cg, plan.resolution, mode=mode).extra_params, mode)


class CostLatency(_LayerSum):
    """The analytic model's BoundLatency: c0 + sum over layers of (c_mac*MACs + c_byte*bytes)."""

    def __init__(self, cg: ChannelGraph, plan: ScalingPlan, c_mac: float = 1e-6, c_byte: float = 0.0,
                 c0: float = 0.0, mode: str = "input") -> None:
        super().__init__(cg, plan, lambda r: c_mac * r.macs + c_byte * r.bytes, c0, mode)


@dataclass
class Step:
    """One accepted widening."""

    group: str
    width: int
    importance: float
    latency_ms: float
    params: int


@dataclass
class GreedyResult:
    """The scaled plan, the accepted steps (a prefix of them is a valid plan), and why the loop stopped."""

    plan: ScalingPlan
    steps: list[Step] = field(default_factory=list)
    stopped: str = ""
    latency_ms: float = 0.0
    params: int = 0

    def prefix(self, k: int) -> ScalingPlan:
        """The plan after the first k steps (rungs of the measured back-off ladder, fxscale.scaling.backoff)."""
        widths = dict(self.plan.meta.get("start_widths", {}))
        for s in self.steps[:k]:
            widths[s.group] = s.width
        return ScalingPlan(widths=widths, resolution=self.plan.resolution,
                           meta={**self.plan.meta, "steps": k})


def _next_width(width: int, stride: int, divisor: int, align: int) -> int:
    q = math.lcm(divisor, align)
    return -(-(width + stride) // q) * q


def importance_aware_widths(cg: ChannelGraph, predictor: ImportancePredictor, latency: BoundLatency,
                            budget: Budget, *, start: Optional[ScalingPlan] = None, stride: int = 10,
                            rule: str = "paper", align: int = 1, max_steps: int = 100_000, mode: str = "input",
                            params: Optional[ParamTracker] = None, max_widths: Optional[dict[str, int]] = None,
                            on_step: Optional[Callable[[Step], Any]] = None) -> GreedyResult:
    """Algorithm 1: repeatedly add `stride` kernels to the most valuable group while both budgets hold.

    rule="paper": the group with the highest predicted importance a*C^b; the loop stops at the first step that
    would break a budget (as in the paper). rule="cost": the group with the highest predicted importance gain
    per unit of added latency; groups that no longer fit are skipped and the loop goes on until none fits.
    `latency` is any LatencyModel's bind(cg, start): bound to the `start` plan (its resolution and widths).
    `max_widths` caps groups (a group at its cap stops growing; shrinking a trained model caps at its widths).
    """
    if rule not in RULES:
        raise FxscaleError(f"rule must be one of {RULES}, got {rule!r}")
    if stride < 1:
        raise FxscaleError(f"stride must be >= 1, got {stride}")
    start = start or ScalingPlan()
    widths = {g.name: start.widths.get(g.name, g.width) for g in cg.scalable}
    if not widths:
        raise FxscaleError("the model has no scalable channel group: nothing to widen")
    params = params or ParamTracker(cg, ScalingPlan(widths=widths, resolution=start.resolution), mode)
    if not budget.fits(latency.total, params.total):
        raise FxscaleError(f"the starting plan already breaks the budget (predicted {latency.total:.4g} ms, "
                           f"{params.total} params; budget {budget}); loosen the budget or lower the resolution")
    divisors = {g.name: g.divisor for g in cg.scalable}
    caps = dict(max_widths or {})
    active = {g for g in widths if widths[g] < caps.get(g, math.inf)}
    meta = {"method": "hacscale", "rule": rule, "stride": stride, "align": align, "start_widths": dict(widths)}
    result = GreedyResult(ScalingPlan(widths=widths, resolution=start.resolution, meta=meta))
    while active and len(result.steps) < max_steps:
        g, new, imp = _choose(predictor, latency, widths, divisors, active, stride, align, rule, caps)
        lat, par = latency.peek(g, new), params.peek(g, new)
        if not budget.fits(lat, par):
            if rule == "paper":
                result.stopped = f"adding kernels to {g} would break the budget ({lat:.4g} ms, {par} params)"
                break
            active.discard(g)
            continue
        widths[g] = new
        if new >= caps.get(g, math.inf):
            active.discard(g)
        step = Step(g, new, imp, latency.set_width(g, new), params.set_width(g, new))
        result.steps.append(step)
        if on_step is not None:
            on_step(step)
    result.stopped = result.stopped or ("no group fits the budget any more" if not active else "max_steps")
    result.plan = ScalingPlan(widths=dict(widths), resolution=start.resolution, meta=meta)
    result.latency_ms, result.params = latency.total, params.total
    return result


def _choose(pred: ImportancePredictor, latency: BoundLatency, widths: dict[str, int],
            divisors: dict[str, int], active: set[str], stride: int, align: int, rule: str,
            caps: dict[str, int]) -> tuple[str, int, float]:
    best: Optional[tuple[float, str, int, float]] = None
    for g in sorted(active):
        c = widths[g]
        new = min(_next_width(c, stride, divisors[g], align), caps.get(g, math.inf))
        imp = pred(g, c)
        if rule == "paper":
            score = imp
        else:  # predicted importance of the added kernels per ms of added latency
            gain = sum(pred(g, w) for w in range(c + 1, new + 1))
            score = gain / max(latency.peek(g, new) - latency.total, 1e-9)
        if best is None or score > best[0]:
            best = (score, g, new, imp)
    assert best is not None
    return best[1], best[2], best[3]


__all__ = ["CostLatency", "GreedyResult", "ParamTracker", "RULES", "Step", "importance_aware_widths"]
