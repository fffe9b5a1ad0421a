"""The alpha search of Equation 3/4: candidates at equal FLOPs after rounding, s searched, ties broken by rule.

- **Equal FLOPs.** Candidate alpha aims at r = sqrt(s)^alpha, w = sqrt(s)^(1-alpha). The resolution is rounded to
  whole pixels first (lowered a pixel at a time if, with the baseline widths, it alone already exceeds the target).
  Then the continuous width multiplier is bisected so that the FLOPs *after* rounding the widths (to each group's
  divisor and `align`) come closest to the target s x baseline FLOPs: the largest multiplier at or under the
  target and the next rounding step above it are compared and the nearer one is kept. Each candidate records its
  achieved FLOPs ratio and whether it lies within `tol` (relative) of s; a model whose width steps are coarser than
  `tol` cannot hit it and says so.
- **s searched.** With a latency and/or parameter budget, s is the largest value in [1, s_max] for which every
  candidate's equal-FLOPs plan fits the budget (predicted), so all candidates compete at one FLOPs level and the
  tight and loose budgets get different s. Without a budget s = s_max (`--flops-scale`).
- **Ties.** The winner has the highest validation top-1; candidates within TIE_VAL of it are tied and go to the
  lower measured latency (interleaved median), then the smaller alpha. Plans that are identical after rounding are
  trained once and share their result.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

from fxscale.analysis.graph import ChannelGraph
from fxscale.cost import cost_model
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import bisect_max, uniform_widths

FLOPS_TOL = 0.05  # the stated tolerance of the equal-FLOPs rule (relative to the target)
TIE_VAL = 1e-9  # validation accuracies closer than this are a tie (same number of correct images)
S_STEPS = 10  # bisection steps of the s search
W_STEPS = 30  # bisection steps of the width multiplier


def _flops(cg: ChannelGraph, plan: ScalingPlan, mode: str) -> int:
    return cost_model(cg, plan.resolution, mode=mode).report(plan).flops


def equal_flops_plan(cg: ChannelGraph, alpha: float, s: float, *, align: int = 1, mode: str = "input",
                     tol: float = FLOPS_TOL) -> ScalingPlan:
    """The alpha candidate at FLOPs closest to s x baseline after rounding (see the module doc); meta records it."""
    base = _flops(cg, ScalingPlan(), mode)
    target = s * base
    h0, w0 = cg.gm.meta["fxscale"]["resolution"]
    r = math.sqrt(s) ** alpha
    h, w = max(1, round(h0 * r)), max(1, round(w0 * r))
    while (h > h0 or w > w0) and _flops(cg, ScalingPlan(resolution=(h, w)), mode) > target * (1 + 1e-12):
        h, w = max(h0, h - 1), max(w0, w - 1)
    res = (h, w)

    def plan(m: float) -> ScalingPlan:
        return ScalingPlan(widths=uniform_widths(cg, m, align), resolution=res)

    def under(m: float) -> bool:
        return _flops(cg, plan(m), mode) <= target * (1 + 1e-12)

    lo, hi = (1.0 if under(1.0) else 0.05), max(2.0, 2 * math.sqrt(s))
    if under(hi):
        cands = [(hi, plan(hi))]
    else:  # under(lo) holds (or lo is the floor), under(hi) does not: bisect the rounding step between them
        for _ in range(W_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if under(mid) else (lo, mid)
        cands = [(lo, plan(lo)), (hi, plan(hi))]
    m, best = min(cands, key=lambda c: abs(_flops(cg, c[1], mode) - target))
    ratio = _flops(cg, best, mode) / base
    best.meta = {"alpha": alpha, "s": s, "r": r, "w": math.sqrt(s) ** (1 - alpha), "width_multiplier": m,
                 "flops_ratio": ratio, "flops_error": ratio / s - 1, "flops_tol": tol,
                 "within_tol": abs(ratio / s - 1) <= tol, "align": align}
    return best


def search_s(cg: ChannelGraph, alphas: Sequence[float], s_max: float, fits: Optional[Callable[[ScalingPlan], bool]],
             *, align: int = 1, mode: str = "input") -> float:
    """The largest s in [1, s_max] whose equal-FLOPs plans all fit (`fits` is None: no budget, s = s_max)."""
    if fits is None:
        return s_max

    def all_fit(s: float) -> bool:
        return all(fits(equal_flops_plan(cg, a, s, align=align, mode=mode)) for a in alphas)
    return bisect_max(all_fit, 1.0, max(1.0, s_max), steps=S_STEPS)


def choose(cands: list[dict[str, Any]]) -> dict[str, Any]:
    """The winner: highest val_acc; ties (within TIE_VAL) -> lower measured_ms (when present), then smaller alpha."""
    top = max(c["val_acc"] for c in cands)
    tied = [c for c in cands if top - c["val_acc"] <= TIE_VAL]
    return min(tied, key=lambda c: (c.get("measured_ms", 0.0), c["alpha"]))


def time_ties(cands: list[dict[str, Any]], keys: list[str], plans: list[Any],
              measure: Callable[[list[Any]], list[float]]) -> None:
    """Set measured_ms on the candidates tied on validation when their plans differ: every distinct plan is timed
    once, in one interleaved measure(plans) call, so candidates with the same plan share one figure and their tie
    goes to the smaller alpha, not to timing noise. keys[i] identifies plans[i]."""
    top = max(c["val_acc"] for c in cands)
    tied = [i for i, c in enumerate(cands) if top - c["val_acc"] <= TIE_VAL]
    first: dict[str, int] = {}  # each distinct tied plan -> its first candidate
    for i in tied:
        first.setdefault(keys[i], i)
    if len(first) < 2:
        return
    ms = dict(zip(first, measure([plans[i] for i in first.values()])))
    for i in tied:
        cands[i]["measured_ms"] = ms[keys[i]]


TIE_RULE = ("highest validation top-1; ties (equal accuracy) go to the lower measured latency (interleaved median; "
            "each distinct plan timed once), then to the smaller alpha")

__all__ = ["FLOPS_TOL", "TIE_RULE", "TIE_VAL", "choose", "equal_flops_plan", "search_s", "time_ties"]
