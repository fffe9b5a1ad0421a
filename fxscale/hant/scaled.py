"""HACScale inside the HANT comparison: the HACScale-shrunk teacher (`hacscale`) and accelerate-then-scale
(`hant_scale`: HANT frees latency by replacing costly ops, HACScale spends it on width).

Both are *ladders* of width plans ordered by HACScale's Algorithm 1 (fxscale.scaling.greedy, rule="cost"); the
pipeline times every rung with the other baselines in one interleaved session and keeps, like the pruning
families, the largest rung whose measured latency is not above HANT's (the measured back-off).
- Importance: one power law a*C^b per channel group (fxscale.scaling.powerlaw.fit_predictor) fitted to the
  first-order Taylor importance of the model itself pruned uniformly to `LAW_FRACTIONS` of its widths. These
  samples are pruned from the trained model, not retrained (NeuralScale's prune-and-measure; HACScale's own
  samples train a network per width, which is the scale pipeline's job and too costly inside a baseline).
- Latency: the analytic cost model's MACs (CostLatency). It only orders the ladder; measurement picks the rung.
- `hacscale`: Algorithm 1 grows from FLOOR x the teacher's widths; rung r is the longest step prefix whose MACs
  are at most r x the teacher's; it is pruned from the teacher (init="prune", the channels of highest Taylor
  score kept), so it inherits the trained weights as the pruning baselines do.
- `hant_scale`: HANT solved at FREE x the budget, the assembled student re-traced, then Algorithm 1 widens it
  from its own widths (init="preserve": the student computes the same function until the KD fine-tune trains
  the new channels).
Resolution stays the data's: every method is compared at the teacher's input size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx

import fxscale
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import Budget, uniform_widths
from fxscale.scaling.greedy import CostLatency, importance_aware_widths
from fxscale.scaling.powerlaw import ImportancePredictor, fit_predictor

LAW_FRACTIONS = (0.4, 0.6, 0.8, 1.0)
LEVELS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # rungs, as ratios of the teacher's MACs
FLOOR = 0.25  # hacscale starts from this fraction of the teacher's widths
FREE = 0.75  # hant_scale solves HANT at this fraction of the budget, then widens


@dataclass
class Ladder:
    """Rung (ratio of the reference MACs) -> model, and how each was made (recorded in results.json)."""

    models: dict[float, fx.GraphModule] = field(default_factory=dict)
    info: dict[float, dict[str, Any]] = field(default_factory=dict)
    laws: Optional[dict[str, Any]] = None
    note: str = ""  # why the ladder is empty, when it is


def importance_laws(gm: fx.GraphModule, bundle: Any, resolution: Optional[tuple], batches: int = 4,
                    fractions: Sequence[float] = LAW_FRACTIONS, cg: Any = None) -> ImportancePredictor:
    """Per-group power laws of Taylor importance against width, from `gm` pruned to each fraction."""
    cg = cg if cg is not None and cg.gm is gm else fxscale.analyze(gm)
    samples = []
    for f in fractions:
        m = gm if f == 1.0 else fxscale.transform(gm, ScalingPlan(widths=uniform_widths(cg, f)), init="prune", cg=cg)
        samples.append(fxscale.importance(m, bundle, batches=batches, resolution=resolution,
                                          cg=cg if m is gm else None))
    return fit_predictor(samples)


def _macs(cg: Any, widths: dict[str, int]) -> float:
    return CostLatency(cg, ScalingPlan(widths=widths)).total


def ladder_plans(cg: Any, pred: ImportancePredictor, start: dict[str, int], reference_macs: float,
                 levels: Sequence[float] = LEVELS, stride: int = 8,
                 caps: Optional[dict[str, int]] = None) -> dict[float, ScalingPlan]:
    """Rung -> the longest prefix of Algorithm 1's steps (from `start`) whose MACs are <= rung x reference."""
    plan0 = ScalingPlan(widths=dict(start))
    lat = CostLatency(cg, plan0)
    top, first = max(levels) * reference_macs, lat.total  # the loop below commits its steps into `lat`
    if first > top:
        return {}
    res = importance_aware_widths(cg, pred, lat, Budget(latency_ms=top), start=plan0, stride=stride, rule="cost",
                                  max_widths=caps)
    out: dict[float, ScalingPlan] = {}
    seen: set[int] = set()
    for lv in sorted(levels):
        if first / reference_macs > lv:  # the start itself is above this rung
            continue
        k = sum(1 for s in res.steps if s.latency_ms <= lv * reference_macs)
        if k not in seen:  # equal prefixes are one rung
            seen.add(k)
            out[lv] = res.prefix(k)
    return out


def shrunk_teacher(gm: fx.GraphModule, bundle: Any, resolution: Optional[tuple], batches: int = 4) -> Ladder:
    """`hacscale`: the teacher shrunk by HACScale's importance-aware widths, one model per MAC rung."""
    cg = fxscale.analyze(gm)
    pred = importance_laws(gm, bundle, resolution, batches, cg=cg)
    taylor = fxscale.importance(gm, bundle, batches=batches, resolution=resolution, cg=cg).channels
    plans = ladder_plans(cg, pred, uniform_widths(cg, FLOOR), _macs(cg, {}),
                         caps={g.name: g.width for g in cg.scalable})
    out = Ladder(laws=pred.to_dict())
    for lv, plan in plans.items():
        out.models[lv] = fxscale.transform(gm, ScalingPlan(widths=plan.widths), init="prune", importance=taylor,
                                           cg=cg).eval()
        out.info[lv] = {"widths": dict(plan.widths), "steps": plan.meta.get("steps", 0)}
    return out


def widened_student(student: fx.GraphModule, teacher: fx.GraphModule, bundle: Any, resolution: Optional[tuple],
                    x: torch.Tensor, batches: int = 4) -> Ladder:
    """`hant_scale`: a HANT student widened by HACScale from its own widths, one model per rung of teacher MACs."""
    gm = fxscale.trace(student, x)
    cg = fxscale.analyze(gm)
    if not cg.scalable:
        return Ladder()
    pred = importance_laws(gm, bundle, resolution, batches, cg=cg)
    ref = _macs(fxscale.analyze(teacher), {})
    out = Ladder(laws=pred.to_dict())
    for lv, plan in ladder_plans(cg, pred, {g.name: g.width for g in cg.scalable}, ref).items():
        out.models[lv] = fxscale.transform(gm, ScalingPlan(widths=plan.widths), init="preserve", cg=cg).eval()
        out.info[lv] = {"widths": dict(plan.widths), "steps": plan.meta.get("steps", 0)}
    return out


__all__ = ["FLOOR", "FREE", "LAW_FRACTIONS", "LEVELS", "Ladder", "importance_laws", "ladder_plans",
           "shrunk_teacher", "widened_student"]
