"""The one driver every baseline runs: limits, the search for the largest knob value that fits, provenance.

A baseline is a ``Knob`` row (see fxscale.scaling.baselines.table): the knob's name, its range, whether the
plan at the range's start is checked first, and a ``setup`` that turns one call's model and options into a
``Search`` (how a knob value becomes a plan, the method's own meta). ``run_baseline`` does the rest, the same
for all of them: build the limits, check the start, grow the knob (bisection; plans are monotone in the knob),
and return the plan with its meta.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from fxscale.analysis.graph import ChannelGraph
from fxscale.cost import cost_model
from fxscale.errors import FxscaleError, PlanError
from fxscale.materialize import Materializer, materialize
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import Budget, Evaluator, bisect_max

BISECT_STEPS = 24
ROUNDED_START = ("{method}: the plan at {knob}={lo:g} does not fit {limits} although the baseline does (widths "
                 "rounded to multiples of align={align} exceed it); use a smaller align or a looser budget")


class _Limits:
    """Every limit a baseline scales to: the budget (via the evaluator) and/or a FLOPs multiple."""

    def __init__(self, cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget],
                 flops_scale: Optional[float], method: str) -> None:
        self.cg, self.evaluator, self.method = cg, evaluator, method
        self.budget = budget or Budget()
        self.mode = getattr(evaluator, "mode", "input")
        shared = getattr(evaluator, "materializer", None)  # one rebuild per depths for FLOPs and latency alike
        self.materializer = shared if isinstance(shared, Materializer) else Materializer()
        self.limited = self.budget.latency_ms is not None or self.budget.params is not None
        if flops_scale is not None and (isinstance(flops_scale, bool) or not isinstance(flops_scale, (int, float))
                                        or not math.isfinite(flops_scale) or flops_scale <= 0):
            raise PlanError(f"{method}: flops_scale must be a positive number, got {flops_scale!r}")
        if not self.limited and flops_scale is None:
            raise FxscaleError(f"{method}: nothing to scale to; give a budget with latency_ms and/or params, or "
                               "flops_scale")
        self.flops_scale = flops_scale
        self._flops: dict[str, int] = {}
        self.base_flops = self.flops(ScalingPlan())
        self.target_flops = None if flops_scale is None else flops_scale * self.base_flops
        base = ScalingPlan()
        if not self.fits(base):
            lat, params = evaluator(base) if self.limited else (None, None)
            raise PlanError(f"{method}: infeasible limits: the unscaled baseline (predicted latency {lat} ms, "
                            f"params {params}, FLOPs {self.base_flops}) does not fit {self.describe()}; the "
                            "baselines only scale up, give at least the baseline's own latency/params and "
                            "flops_scale >= 1")

    def flops(self, plan: ScalingPlan) -> int:
        """FLOPs of the plan (a depth plan on its deeper graph, as the evaluator costs it)."""
        key = _key(plan)
        if key not in self._flops:
            cg, p = materialize(self.cg, plan, mode=self.mode, cache=self.materializer)
            self._flops[key] = cost_model(cg, p.resolution, mode=self.mode).report(p).flops
        return self._flops[key]

    def fits(self, plan: ScalingPlan) -> bool:
        """True when the plan fits the budget (if any) and the FLOPs multiple (if any).

        Depth plans are first checked against two plans they dominate, assuming cost grows with blocks, widths
        and resolution: the same plan without its depths, and, when every width and the resolution are at
        least the baseline's, the depths alone, so a compound search does not evaluate every width variant of
        a depth that never fits.
        """
        if plan.depths:
            if not self.fits(ScalingPlan(widths=dict(plan.widths), resolution=plan.resolution)):
                return False
            if (plan.widths or plan.resolution) and self._dominates_baseline(plan) and \
                    not self.fits(ScalingPlan(depths=dict(plan.depths))):
                return False
        if self.target_flops is not None and self.flops(plan) > self.target_flops * (1 + 1e-12):
            return False
        return not self.limited or self.evaluator.fits(plan, self.budget)

    def _dominates_baseline(self, plan: ScalingPlan) -> bool:
        base = self.cg.gm.meta["fxscale"]["resolution"]
        return all(plan.widths.get(g.name, g.width) >= g.width for g in self.cg.groups) and (
            plan.resolution is None or all(a >= b for a, b in zip(plan.resolution, base)))

    def describe(self) -> dict[str, Any]:
        """The limits, for messages and plan.meta."""
        return {"latency_ms": self.budget.latency_ms, "params": self.budget.params,
                "flops_scale": self.flops_scale}

    def finish(self, plan: ScalingPlan, meta: dict[str, Any], capped: bool = False) -> ScalingPlan:
        """The plan with provenance: method factors, limits, predicted latency / params / FLOPs."""
        lat, params = self.evaluator(plan)
        flops = self.flops(plan)
        out = ScalingPlan(widths=dict(plan.widths), resolution=plan.resolution, depths=dict(plan.depths))
        out.meta = {**meta, "limits": self.describe(), "capped": bool(capped),
                    "predicted": {"latency_ms": float(lat), "params": int(params), "flops": int(flops),
                                  "flops_ratio": flops / self.base_flops if self.base_flops else None}}
        return out


def _key(plan: ScalingPlan) -> str:
    return ScalingPlan(widths=dict(plan.widths), resolution=plan.resolution, depths=dict(plan.depths)).to_json(
        indent=None)


def _largest(fits: Callable[[float], bool], lo: float, cap: float, first: float) -> tuple[float, bool]:
    """Largest x in [lo, cap] with fits(x) (fits(lo) must hold): grow the bracket by doubling, then bisect."""
    prev, hi = lo, min(first, cap)
    while fits(hi):
        if hi >= cap:
            return cap, True
        prev, hi = hi, min(cap, lo + 2 * (hi - lo))
    return bisect_max(fits, prev, hi, steps=BISECT_STEPS), False


def _largest_int(fits: Callable[[int], bool], lo: int, cap: int) -> tuple[int, bool]:
    """Largest integer k in [lo, cap] with fits(k) (fits(lo) must hold)."""
    prev, hi = lo, min(cap, lo + 1)
    while fits(hi):
        if hi >= cap:
            return cap, True
        prev, hi = hi, min(cap, lo + 2 * (hi - lo))
    while hi - prev > 1:  # fits(prev), not fits(hi)
        mid = (prev + hi) // 2
        prev, hi = (mid, hi) if fits(mid) else (prev, mid)
    return prev, False


def achieved(cg: ChannelGraph, plan: ScalingPlan, stages: Mapping[str, int]) -> dict[str, float]:
    """Realised factors after rounding: geometric-mean width ratio, resolution ratio, block ratio."""
    groups = cg.scalable
    logs = [math.log(plan.widths.get(g.name, g.width) / g.width) for g in groups]
    w = math.exp(sum(logs) / len(logs)) if logs else 1.0
    h0, _w0 = cg.gm.meta["fxscale"]["resolution"]
    r = (plan.resolution[0] / h0) if plan.resolution else 1.0
    base = sum(stages.values())
    d = (sum(plan.depths.get(k, n) for k, n in stages.items()) / base) if base else 1.0
    return {"d": d, "w": w, "r": r}


@dataclass
class Search:
    """One call's knob: value -> plan, the method's meta, and the range where it differs from the row's."""

    make: Callable[[Any], ScalingPlan]
    meta: Callable[[Any, ScalingPlan], dict[str, Any]] = lambda x, plan: {}  # after method, knob and its value
    stages: Mapping[str, int] = field(default_factory=dict)  # for meta["achieved"]["d"]
    note: dict[str, Any] = field(default_factory=dict)  # meta after "achieved"
    lo: Optional[float] = None
    cap: Optional[float] = None
    first: Optional[float] = None


Setup = Callable[[ChannelGraph, _Limits, int, Optional[Mapping[str, torch.Tensor]]], Search]


@dataclass(frozen=True)
class Knob:
    """A baseline as a row of the table: its knob and range, the start check, and the per-call setup."""

    name: str  # registry name and meta["method"]
    knob: str  # meta["knob"], and the meta key of the chosen value
    lo: float  # the knob at the unscaled model (fits(lo) is assumed, or checked with `start`)
    cap: float  # the largest value tried; a knob that still fits here stops, meta["capped"] = True
    first: float  # the first upper bracket
    setup: Setup
    integer: bool = False  # integer knob (added blocks): bracket and bisect over integers
    start: Optional[str] = None  # message template when the plan at lo does not fit (None: not checked)
    doc: str = ""


def run_baseline(row: Knob, cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *,
                 flops_scale: Optional[float] = None, align: int = 1,
                 importance: Optional[Mapping[str, torch.Tensor]] = None) -> ScalingPlan:
    """The plan at the largest value of the row's knob that fits every given limit."""
    lim = _Limits(cg, evaluator, budget, flops_scale, row.name)
    s = row.setup(cg, lim, align, importance)
    lo = row.lo if s.lo is None else s.lo
    cap = row.cap if s.cap is None else s.cap
    if row.start is not None and not lim.fits(s.make(lo)):
        raise PlanError(row.start.format(method=row.name, knob=row.knob, lo=lo, align=align, limits=lim.describe()))
    if row.integer:
        x, capped = _largest_int(lambda i: lim.fits(s.make(i)), int(lo), int(cap))
    else:
        first = row.first if s.first is None else s.first
        x, capped = _largest(lambda v: lim.fits(s.make(v)), lo, cap, first)
    plan = s.make(x)
    meta = {"method": row.name, "knob": row.knob, row.knob: x, **s.meta(x, plan),
            "achieved": achieved(cg, plan, s.stages), **s.note}
    return lim.finish(plan, meta, capped)


def knob_ladder(row: Knob, cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], plan: ScalingPlan, *,
                flops_scale: Optional[float] = None, align: int = 1,
                importance: Optional[Mapping[str, torch.Tensor]] = None, points: int = 12) -> list[ScalingPlan]:
    """The row's plans from the unscaled model up to `plan` (run_baseline's choice), for the measured back-off.

    Index 0 is the baseline itself; then the knob at `points` evenly spaced values from its start to the chosen
    value (every integer for an integer knob), consecutive duplicates removed; the last entry is `plan` itself.
    """
    from fxscale.scaling.backoff import dedupe
    lim = _Limits(cg, evaluator, budget, flops_scale, row.name)
    s = row.setup(cg, lim, align, importance)
    lo = max(row.lo, row.lo if s.lo is None else s.lo)  # never below the unscaled model (NeuralScale's fit starts lower)
    x = plan.meta.get(row.knob, lo)
    if row.integer:
        values: list[Any] = list(range(int(lo), int(x) + 1))
    else:
        values = [lo + (x - lo) * i / (points - 1) for i in range(points)] if x > lo else [lo]
    base_res = tuple(cg.gm.meta["fxscale"]["resolution"])
    base_widths = {g.name: g.width for g in cg.scalable}
    plans = [ScalingPlan()]
    for v in values[:-1]:
        p = s.make(v)
        if p.resolution is not None and tuple(p.resolution) == base_res:
            p = ScalingPlan(widths=dict(p.widths), depths=dict(p.depths))
        if all(base_widths.get(k) == w for k, w in p.widths.items()):
            p = ScalingPlan(resolution=p.resolution, depths=dict(p.depths))
        p.meta = {"method": row.name, "knob": row.knob, row.knob: v}
        plans.append(p)
    rest = dedupe(plans[1:] + [plan])
    while len(rest) > 1 and _key(rest[0]) == _key(ScalingPlan()):  # rungs equal to the baseline: measured as it
        rest.pop(0)
    return [ScalingPlan(), *rest]


__all__ = ["BISECT_STEPS", "ROUNDED_START", "Knob", "Search", "Setup", "achieved", "knob_ladder", "run_baseline"]
