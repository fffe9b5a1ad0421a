"""NeuralScale as published (Lee & Lee, CVPR 2020): iterative pruning of a trained network with rescoring, a power
law of each layer's filters against the total parameter count, and architecture descent.

1. `prune_trajectory`: from a trained model, repeat: score every channel by first-order Taylor importance
   (`fxscale.importance`, each group's scores l2-normalised, the layer normalisation of Molchanov et al. that
   NeuralScale uses), remove the `step` fraction of the remaining removable channels with the lowest scores over
   the whole network (each group keeps at least its divisor), fine-tune `finetune_batches` SGD steps, rescore;
   record (total params, widths) after every step until params <= `floor` x the start's.
2. `fit_neuralscale` (shared with neuralscale-lite): per group, log w = log a + b log P over the trajectory.
3. `descend`: architecture descent. The fitted widths at the baseline's parameter count are built from scratch,
   trained, pruned again (1.) and the laws refitted on the new trajectory, `iterations` times.
The `neuralscale` row (fxscale.scaling.baselines.table) then takes the largest parameter target P whose widths fit
the budget, under the same measured back-off as every method. Group names (and so widths) are those of the
unscaled model's channel graph throughout: fxscale.transform keeps them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from fxscale.analysis.graph import ChannelGraph
from fxscale.cost import cost_model
from fxscale.errors import PlanError
from fxscale.plan import ScalingPlan
from fxscale.scaling.baselines.neuralscale_lite import fit_neuralscale, neuralscale_plan
from fxscale.scaling.baselines.search import Search


@dataclass(frozen=True)
class DescentConfig:
    """Pruning and descent settings (the paper prunes a few percent per step with short fine-tunes)."""

    step: float = 0.1  # fraction of the remaining removable channels removed per pruning step
    floor: float = 0.3  # stop when params <= floor x the trajectory's start
    score_batches: int = 4  # Taylor batches per rescoring
    finetune_batches: int = 20  # SGD steps after every pruning step
    lr: float = 0.01
    iterations: int = 1  # architecture-descent iterations after the first trajectory
    batch_size: int = 64
    seed: int = 0


@dataclass
class Trajectory:
    """The pruning trajectory the final fit uses, and every iteration's record (results.json meta)."""

    samples: list[tuple[int, dict[str, int]]]
    iterations: list[dict[str, Any]] = field(default_factory=list)


def _params(cg: ChannelGraph, widths: dict[str, int]) -> int:
    return int(cost_model(cg, None, mode="input").report(ScalingPlan(widths=widths)).params)


def _finetune(model: nn.Module, bundle: Any, resolution: Optional[tuple], cfg: DescentConfig, step: int) -> None:
    from fxscale.data import loader
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    model.train()
    for i, (x, y) in enumerate(loader(bundle, "train", cfg.batch_size, resolution, seed=cfg.seed + 7919 * step)):
        if i >= cfg.finetune_batches:
            break
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def prune_trajectory(model: nn.Module, base: ChannelGraph, bundle: Any, resolution: Optional[tuple],
                     cfg: DescentConfig = DescentConfig()) -> list[tuple[int, dict[str, int]]]:
    """(total params, widths) from the trained `model` down to cfg.floor of its params (see the module docstring)."""
    import fxscale
    gm = fxscale.trace(model, torch.zeros(1, *_input_shape(base, resolution))) if not hasattr(model, "graph") \
        else model
    cg = fxscale.analyze(gm)
    divisors = {g.name: g.divisor for g in base.scalable}
    widths = {g.name: g.width for g in cg.scalable if g.name in divisors}
    if not widths:
        raise PlanError("neuralscale: the trained model has no scalable group named like the unscaled model's")
    p_start = _params(base, widths)
    out = [(p_start, dict(widths))]
    for step in range(1, 200):
        imp = fxscale.importance(gm, bundle, batches=cfg.score_batches, resolution=resolution, cg=cg)
        scores = {g: v / v.norm().clamp_min(1e-30) for g, v in imp.channels.items() if g in widths}
        order = sorted((float(s), g, j) for g, v in scores.items() for j, s in enumerate(v.tolist()))
        removable = sum(w - divisors[g] for g, w in widths.items())
        k = max(1, math.ceil(cfg.step * removable))
        removed = dict.fromkeys(widths, 0)
        for _s, g, _j in order:
            if k == 0:
                break
            if widths[g] - removed[g] > divisors[g]:
                removed[g] += 1
                k -= 1
        new = {g: max(divisors[g], (w - removed[g]) // divisors[g] * divisors[g]) for g, w in widths.items()}
        if new == widths:
            break
        gm = fxscale.transform(gm, ScalingPlan(widths=new), init="prune", importance=scores, cg=cg)
        cg, widths = fxscale.analyze(gm), new
        _finetune(gm, bundle, resolution, cfg, step)
        out.append((_params(base, widths), dict(widths)))
        if out[-1][0] <= cfg.floor * p_start:
            break
    return out


def _input_shape(cg: ChannelGraph, resolution: Optional[tuple]) -> tuple[int, ...]:
    shape = tuple(cg.gm.meta["fxscale"]["input_shapes"][0])[1:]
    return shape if resolution is None else (shape[0], *resolution)


def descend(base: ChannelGraph, trained: nn.Module, train_plan: Callable[[ScalingPlan], nn.Module], bundle: Any,
            resolution: Optional[tuple], cfg: DescentConfig = DescentConfig()) -> Trajectory:
    """Prune the trained baseline, fit, and run cfg.iterations architecture-descent iterations (module docstring).

    train_plan(plan) returns the plan's model trained from scratch (the pipeline's own training recipe)."""
    p0 = _params(base, {})
    samples = prune_trajectory(trained, base, bundle, resolution, cfg)
    traj = Trajectory(samples, [{"iteration": 0, "start": "trained baseline", "samples": samples}])
    for it in range(1, cfg.iterations + 1):
        fit = fit_neuralscale(samples)
        plan = neuralscale_plan(base, fit, p0)
        samples = prune_trajectory(train_plan(plan), base, bundle, resolution, cfg)
        traj.samples = samples
        traj.iterations.append({"iteration": it, "start": dict(plan.widths), "start_params": _params(base, plan.widths),
                                "samples": samples, "fit_before": {g: list(ab) for g, ab in fit.items()}})
    return traj


def pipeline_trajectory(pipe: Any) -> Trajectory:
    """`descend` inside fxscale scale: the baseline and every descent architecture trained by the pipeline's own
    recipe for search_epochs (the alpha search's length) on the first seed's data, at the base resolution."""
    seed = pipe.cfg.seeds[0]

    def train_plan(plan: ScalingPlan) -> nn.Module:
        out = pipe.train_many([("neuralscale-descent", plan, seed)], pipe.cfg.search_epochs)[0]
        model = pipe.build(plan, seed)
        model.load_state_dict(out.state_dict)
        return model.eval()
    pipe.log("[methods] neuralscale: training the baseline, iterative pruning, architecture descent")
    cfg = DescentConfig(seed=seed, batch_size=pipe.cfg.batch_size)
    return descend(pipe.cg, train_plan(ScalingPlan()), train_plan, pipe.bundle_for(seed),
                   pipe.resolution_of(ScalingPlan()), cfg)


def descent_knob(cg: ChannelGraph, lim: Any, align: int, importance: Any) -> Search:
    """The `neuralscale` row's setup: `importance` is the Trajectory of `descend` (the pipeline computes it)."""
    if not isinstance(importance, Trajectory):
        raise PlanError("neuralscale needs the pruning trajectory of a trained model "
                        "(fxscale.scaling.baselines.descent.descend; fxscale scale computes it); without training, "
                        "use neuralscale-lite")
    fit = fit_neuralscale(importance.samples)
    p0 = _params(cg, {})
    lo = min(p for p, _ in importance.samples) / p0
    meta = {"iterations": len(importance.iterations) - 1, "samples": len(importance.samples),
            "fit": {k: {"a": a, "b": b} for k, (a, b) in fit.items()}, "align": align,
            "trajectory_params": [p / p0 for p, _ in importance.samples]}
    return Search(make=lambda ratio: neuralscale_plan(cg, fit, ratio * p0, align),
                  meta=lambda ratio, plan: {"params_target": ratio * p0, **meta}, lo=lo, first=max(1.0, 2 * lo))


__all__ = ["DescentConfig", "Trajectory", "descend", "descent_knob", "pipeline_trajectory", "prune_trajectory"]
