"""Ablation rows of issue 11: is importance-aware allocation what helps?

Each row differs from ``hacscale`` only in how width is allocated. Both take HACScale's *chosen* resolution (its
final plan's, after the measured back-off) as a required ``resolution=`` argument, so the pipeline runs them after
the HACScale search (``Pipeline._method_plans`` passes it), and both go through the same measured back-off:

- ``uniform@hacres``: one width multiplier on every scalable group at that resolution, the largest that fits the
  limits (bisection, as the ``uniform`` row), widths rounded to multiples of lcm(divisor, align) with HACScale's
  ``align`` (not ``baseline_align``), so only the allocation differs.
- ``random@hacres``: Algorithm 1's loop with the importance replaced by a seeded random choice: from the groups
  that still fit, one drawn uniformly at random gets ``stride`` more kernels (rounded up as Algorithm 1 rounds);
  a group whose next step breaks a limit is dropped; the loop ends when none is left. Filling the budget this
  way gives random allocation at least the latency HACScale's paper rule (which stops at its first break) uses.
  One plan per ``seed`` (the pipeline passes the first training seed).

Back-off ladders (``ablation_ladder``): the unscaled baseline, the resolution ramp up to ``resolution`` (one pixel
per rung, as HACScale's), then the row's own width rungs at ``resolution`` (the multiplier at evenly spaced
values / the random steps' prefixes), the last being the chosen plan.
"""
from __future__ import annotations

import random
from typing import Any, Mapping, Optional, Sequence

import torch

from fxscale.analysis.graph import ChannelGraph
from fxscale.errors import FxscaleError, PlanError
from fxscale.plan import ScalingPlan
from fxscale.scaling.baselines.search import ROUNDED_START, Knob, Search, _Limits, achieved, knob_ladder, run_baseline
from fxscale.scaling.budget import Budget, Evaluator, uniform_widths

ABLATIONS = ("uniform@hacres", "random@hacres")
MAX_WIDTH = 16.0  # uniform@hacres multiplier cap (as the uniform row's)


def _resolution(name: str, cg: ChannelGraph, resolution: Optional[Sequence[int]]) -> tuple[int, int]:
    if resolution is None:
        raise FxscaleError(f"{name} needs resolution= (HACScale's chosen input resolution); the pipeline passes it "
                           "after the HACScale search")
    res = tuple(int(v) for v in resolution)
    if len(res) != 2 or min(res) < 1:
        raise PlanError(f"{name}: resolution must be two positive ints (H, W), got {resolution!r}")
    return res  # type: ignore[return-value]


def _uniform_row(cg: ChannelGraph, res: tuple[int, int]) -> Knob:
    def setup(cg_: ChannelGraph, lim: Any, align: int, importance: Any) -> Search:
        return Search(lambda w: ScalingPlan(widths=uniform_widths(cg_, w, align), resolution=res),
                      lambda w, plan: {"align": align, "resolution": list(res)})
    return Knob("uniform@hacres", "w", 1.0, MAX_WIDTH, 2.0, setup, start=ROUNDED_START,
                doc="One width multiplier on all scalable groups at HACScale's resolution, the largest that fits.")


def uniform_at_resolution(cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *,
                          resolution: Optional[Sequence[int]] = None, flops_scale: Optional[float] = None,
                          align: int = 1, importance: Optional[Mapping[str, torch.Tensor]] = None,
                          **_: Any) -> ScalingPlan:
    """``uniform@hacres``: the largest uniform width multiplier at `resolution` that fits every limit."""
    res = _resolution("uniform@hacres", cg, resolution)
    return run_baseline(_uniform_row(cg, res), cg, evaluator, budget, flops_scale=flops_scale, align=align)


def _next_width(width: int, stride: int, divisor: int, align: int) -> int:
    from math import lcm
    q = lcm(divisor, align)
    return -(-(width + stride) // q) * q


def random_at_resolution(cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *,
                         resolution: Optional[Sequence[int]] = None, flops_scale: Optional[float] = None,
                         align: int = 1, importance: Optional[Mapping[str, torch.Tensor]] = None, seed: int = 0,
                         stride: int = 10, max_steps: int = 100_000, **_: Any) -> ScalingPlan:
    """``random@hacres``: seeded random per-group widening at `resolution` until no group fits (module doc).

    meta["steps"] lists the accepted [group, width] steps in order (their prefixes are the back-off rungs).
    """
    name = "random@hacres"
    res = _resolution(name, cg, resolution)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise PlanError(f"{name}: stride must be an int >= 1, got {stride!r}")
    lim = _Limits(cg, evaluator, budget, flops_scale, name)
    widths = {g.name: g.width for g in cg.scalable}
    start = ScalingPlan(widths=dict(widths), resolution=res)
    if not lim.fits(start):
        raise PlanError(f"{name}: HACScale's resolution {list(res)} alone does not fit {lim.describe()}")
    divisors = {g.name: g.divisor for g in cg.scalable}
    rng = random.Random(seed)
    active = sorted(widths)
    steps: list[list[Any]] = []
    while active and len(steps) < max_steps:
        g = active[rng.randrange(len(active))]
        new = _next_width(widths[g], stride, divisors[g], align)
        trial = ScalingPlan(widths={**widths, g: new}, resolution=res)
        if not lim.fits(trial):
            active.remove(g)
            continue
        widths[g] = new
        steps.append([g, new])
    plan = ScalingPlan(widths=widths, resolution=res)
    meta = {"method": name, "knob": "steps", "steps_taken": len(steps), "seed": seed, "stride": stride,
            "align": align, "resolution": list(res), "steps": steps, "achieved": achieved(cg, plan, {})}
    return lim.finish(plan, meta)


def resolution_ramp(cg: ChannelGraph, resolution: Sequence[int]) -> list[ScalingPlan]:
    """Resolution-only plans from one pixel above the traced resolution up to below `resolution` (HACScale's)."""
    h0, w0 = cg.gm.meta["fxscale"]["resolution"]
    sh, sw = resolution
    return [ScalingPlan(resolution=(h0 + k, w0 + round(k * (sw - w0) / max(1, sh - h0)))) for k in range(1, sh - h0)]


def ablation_ladder(name: str, cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget],
                    plan: ScalingPlan, *, resolution: Sequence[int], flops_scale: Optional[float] = None,
                    align: int = 1, **_: Any) -> list[ScalingPlan]:
    """The measured back-off ladder of an ablation row's `plan` (module doc): baseline, ramp, width rungs."""
    from fxscale.scaling.backoff import dedupe
    res = _resolution(name, cg, resolution)
    ramp = resolution_ramp(cg, res)
    at_res = ScalingPlan(widths={g.name: g.width for g in cg.scalable}, resolution=res)
    if name == "uniform@hacres":
        rungs = knob_ladder(_uniform_row(cg, res), cg, evaluator, budget, plan, flops_scale=flops_scale,
                            align=align)[1:]
    elif name == "random@hacres":
        widths = dict(at_res.widths)
        rungs = [at_res]
        for g, w in plan.meta.get("steps", []):
            widths[g] = w
            rungs.append(ScalingPlan(widths=dict(widths), resolution=res, meta={"steps": len(rungs)}))
        rungs[-1] = plan
    else:
        raise FxscaleError(f"no ablation row {name!r}; ablation rows: {', '.join(ABLATIONS)}")
    return dedupe([ScalingPlan(), *ramp, *rungs])


ABLATION_FNS = {"uniform@hacres": uniform_at_resolution, "random@hacres": random_at_resolution}

__all__ = ["ABLATIONS", "ABLATION_FNS", "ablation_ladder", "random_at_resolution", "resolution_ramp",
           "uniform_at_resolution"]
