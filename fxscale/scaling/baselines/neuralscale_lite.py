"""NeuralScale-lite (after Lee & Lee 2020; not the published method): one simulated global pruning with fixed scores, a
per-group power law in params. No retraining, no rescoring, no architecture-descent iteration."""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np
import torch

from fxscale.analysis.graph import ChannelGraph
from fxscale.cost import cost_model
from fxscale.errors import PlanError
from fxscale.plan import ScalingPlan
from fxscale.scaling.baselines.search import Search
from fxscale.scaling.budget import round_width

NEURALSCALE_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def default_channel_scores(cg: ChannelGraph) -> dict[str, torch.Tensor]:
    """Per scalable group, a score per channel from the weights of the group's producers.

    Each producer contributes the L1 norm of the channel's output filter divided by sqrt(filter size), and a
    group's score is the mean over its producers. The sqrt(fan-in) division makes layers comparable in the
    global ranking (under He initialisation the L1 norm grows as sqrt(fan-in)); averaging over producers keeps
    residual-tied groups (several producers) from looking more important just for having more of them. A
    producer whose weight does not match the group width is skipped; a group with none usable gets ones.
    """
    out = {}
    for g in cg.scalable:
        acc, used = torch.zeros(g.width), 0
        for p in g.producers:
            w = getattr(cg.ctx.modules.get(p), "weight", None)
            if not isinstance(w, torch.Tensor) or w.dim() == 0 or w.shape[0] % g.width:
                continue
            flat = w.detach().abs().float().reshape(w.shape[0], -1)
            per = flat.sum(1) / math.sqrt(flat.shape[1])
            acc += per.reshape(-1, g.width).sum(0)
            used += 1
        out[g.name] = acc / used if used and bool(acc.any()) else torch.ones(g.width)
    return out


def _scores(cg: ChannelGraph, importance: Any) -> tuple[dict[str, torch.Tensor], str]:
    if importance is None:
        return default_channel_scores(cg), "l1"
    imp = getattr(importance, "channels", importance)
    if not isinstance(imp, Mapping):
        raise PlanError(f"neuralscale-lite: importance must map group name -> per-channel scores (or have .channels), "
                        f"got {type(importance).__name__}")
    groups = cg.by_name
    unknown = [k for k in imp if k not in groups]
    if unknown:
        raise PlanError(f"neuralscale-lite: importance names unknown groups {sorted(unknown)}")
    missing = [g.name for g in cg.scalable if g.name not in imp]
    if missing:
        raise PlanError(f"neuralscale-lite: importance has no scores for scalable groups {missing}")
    out = {}
    for g in cg.scalable:
        v = torch.as_tensor(imp[g.name]).detach().float().reshape(-1)
        if v.numel() != g.width:
            raise PlanError(f"neuralscale-lite: importance for group {g.name!r} has {v.numel()} entries, width is "
                            f"{g.width}")
        out[g.name] = v
    return out, "given"


def neuralscale_samples(cg: ChannelGraph, scores: Mapping[str, torch.Tensor],
                        fractions: tuple[float, ...] = NEURALSCALE_FRACTIONS, mode: str = "input"
                        ) -> list[tuple[int, dict[str, int]]]:
    """Simulated iterative global pruning: (params, widths) at each reachable parameter fraction.

    Channels are removed globally in ascending score order (no retraining, so the order is fixed); every group
    keeps at least its divisor; widths are rounded up to the divisor. For each fraction the fewest removals
    that bring the parameters to at most fraction * baseline are found by bisection (params fall monotonically).
    """
    cm = cost_model(cg, None, mode=mode)
    groups = cg.scalable
    order = []  # (score, group index, rank in group): removable channels, globally ascending
    for gi, g in enumerate(groups):
        s = scores[g.name]
        keep = g.divisor
        vals = torch.sort(s).values.tolist()
        order += [(v, gi, j) for j, v in enumerate(vals[: max(0, g.width - keep)])]
    order.sort()

    def widths_after(k: int) -> dict[str, int]:
        removed = [0] * len(groups)
        for _v, gi, _j in order[:k]:
            removed[gi] += 1
        out = {}
        for gi, g in enumerate(groups):
            q = g.divisor
            out[g.name] = max(q, -(-(g.width - removed[gi]) // q) * q)
        return out

    def params(k: int) -> int:
        return cm.report(ScalingPlan(widths=widths_after(k))).params

    p0, floor = params(0), params(len(order))
    samples, seen = [], set()
    for f in fractions:
        target = f * p0
        if floor > target:
            break
        lo, hi = -1, len(order)  # params(hi) <= target; find the smallest such k
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if params(mid) <= target else (mid, hi)
        w = widths_after(hi)
        key = tuple(sorted(w.items()))
        if key in seen:
            continue
        seen.add(key)
        samples.append((params(hi), w))
    return samples


def fit_neuralscale(samples: list[tuple[int, dict[str, int]]]) -> dict[str, tuple[float, float]]:
    """Least-squares fit per group of log(width) = log(a) + b log(params): {group: (a, b)}, b clipped at >= 0."""
    ps = sorted({p for p, _ in samples})
    if len(ps) < 2:
        raise PlanError("neuralscale-lite: pruning gave fewer than two distinct parameter counts; cannot fit the "
                        "width-vs-params power law")
    logp = np.log(np.array([p for p, _ in samples], dtype=float))
    x = np.stack([logp, np.ones_like(logp)], axis=1)
    out = {}
    for name in samples[0][1]:
        y = np.log(np.array([w[name] for _, w in samples], dtype=float))
        (b, loga), *_ = np.linalg.lstsq(x, y, rcond=None)
        out[name] = (float(math.exp(loga)), max(0.0, float(b)))
    return out


def neuralscale_plan(cg: ChannelGraph, fit: Mapping[str, tuple[float, float]], params_target: float,
                     align: int = 1) -> ScalingPlan:
    """Widths a_g * P^b_g at the parameter target P, rounded to divisor/align."""
    widths = {}
    for g in cg.scalable:
        a, b = fit[g.name]
        widths[g.name] = round_width(a * params_target ** b, g.divisor, align)
    return ScalingPlan(widths=widths)


def neuralscale_knob(cg: ChannelGraph, lim: Any, align: int, importance: Optional[Any]) -> Search:
    """The NeuralScale row's setup: fit the power law once; the knob is the parameter target / baseline params.

    importance: group name -> per-channel scores (fxscale.scaling.importance.Importance or its .channels);
    None uses default_channel_scores (weight magnitudes). The search starts at the smallest sampled fraction.
    """
    if not cg.scalable:
        raise PlanError("neuralscale-lite: the model has no scalable channel group")
    scores, source = _scores(cg, importance)
    samples = neuralscale_samples(cg, scores, mode=lim.mode)
    fit = fit_neuralscale(samples)
    p0 = samples[0][0] if samples else 1
    lo = min(p for p, _ in samples) / p0
    meta = {"importance": source, "fractions": [p / p0 for p, _ in samples], "samples": len(samples),
            "fit": {k: {"a": a, "b": b} for k, (a, b) in fit.items()}, "align": align}
    return Search(make=lambda ratio: neuralscale_plan(cg, fit, ratio * p0, align),
                  meta=lambda ratio, plan: {"params_target": ratio * p0, **meta}, lo=lo, first=max(1.0, 2 * lo))


__all__ = ["NEURALSCALE_FRACTIONS", "default_channel_scores", "fit_neuralscale", "neuralscale_knob",
           "neuralscale_plan", "neuralscale_samples"]
