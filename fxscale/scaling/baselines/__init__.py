"""The paper's comparison methods (Table I) as plan generators, in a timm-style registry.

Every method maps a traced model to a ``ScalingPlan``; the plans then take the same transform / train /
measure path as HACScale's own. All methods share one signature::

    fn(cg, evaluator, budget, *, flops_scale=None, align=1, importance=None) -> ScalingPlan

and one rule for how far to scale: each method has one knob (a width multiplier, a resolution factor, a
number of added blocks, a compound coefficient, a parameter target) and returns the plan at the *largest*
knob value whose plan fits every given limit (bisection; plans are monotone in the knob):

- ``budget`` with a latency and/or parameter limit: the evaluator's predicted latency and exact params must
  fit it (the paper compares methods at the same latency constraint);
- ``flops_scale`` (a multiple of the baseline's FLOPs, analytic cost model): the plan's FLOPs must not
  exceed it. Used alone when the budget is unconstrained; with a budget, both must hold.

Neither given -> FxscaleError. A budget the unscaled baseline itself exceeds (or flops_scale < 1) is
infeasible: the methods only scale up, and raise PlanError rather than return a plan that breaks the budget.
A knob that still fits at its cap (e.g. resolution under a parameter-only budget) stops there,
``meta["capped"] = True``.

Methods (``list_baselines()``):

- ``uniform``: one width multiplier on every scalable group (Zagoruyko & Komodakis, wide ResNets).
- ``resolution``: input resolution factor only (Szegedy et al.'s row in Table I).
- ``depth``: +1 block per repeatable stage, round-robin in model order (``ScalingPlan.depths``).
- ``efficientnet``: Tan & Le compound scaling, d = 1.2^phi, w = 1.1^phi, r = 1.15^phi, depth
  ``ceil(n * d)`` (their ``round_repeats``).
- ``dollar``: Dollar et al. fast compound scaling, d * w^2 * r^2 = s with alpha = 0.8: w = s^(alpha/2),
  d = r = s^((1 - alpha)/3), depth ``round(n * d)``.
- ``uniform@hacres``, ``random@hacres``: the ablation rows (``ablation``): uniform / seeded random per-group widths
  at HACScale's chosen resolution (they also take ``resolution=``, and the random row ``seed=`` and ``stride=``).
- ``neuralscale-lite``: after Lee & Lee 2020, *not* the published method (which prunes a trained net iteratively
  with rescoring after fine-tunes and runs architecture-descent iterations). Iterative global pruning by per-channel importance, simulated with the cost
  model (no retraining, so the scores stay fixed), records (total params, per-group widths) at parameter
  fractions 1.0 .. 0.3, fits ``log w_g = log a_g + b_g log P`` per group (least squares) and scales to the
  largest parameter target P whose predicted widths fit (extrapolating above the baseline).
- ``neuralscale``: the published method (``descent``): Taylor pruning of the trained baseline in steps of 10% of
  the removable channels, rescoring after a 20-step fine-tune each time, down to 0.3x params; the per-group law
  fitted on that trajectory; one architecture-descent iteration (the fitted widths at the baseline's params are
  trained from scratch, pruned again and refitted); then the largest parameter target that fits. It needs that
  trajectory as ``importance=`` (``fxscale scale`` computes it; ``descent.descend`` outside the pipeline).

Widths are rounded to the nearest positive multiple of lcm(group divisor, align) (``round_width``);
resolutions to the nearest pixel. ``plan.meta`` records the method, its factors (nominal and achieved), the
limits it was scaled to and the plan's predicted latency / params / FLOPs.

Layout: every method is one row of ``table.TABLE`` (a ``search.Knob``: knob name, range, start check and a
setup that turns the model into value -> plan), run by the one driver ``search.run_baseline``; ``plans`` holds
the plan builders, ``neuralscale_lite`` the pruning simulation and power-law fit, ``descent`` the published
NeuralScale (iterative pruning of a trained net with rescoring, architecture descent), ``registry`` the registry
(``register_baseline``, ``list_baselines``, ``get_baseline``, ``create_baseline``).
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

from fxscale.analysis.graph import ChannelGraph
from fxscale.plan import ScalingPlan
from fxscale.scaling.baselines.ablation import (
    ABLATION_FNS,
    ABLATIONS,
    ablation_ladder,
    random_at_resolution,
    resolution_ramp,
    uniform_at_resolution,
)
from fxscale.scaling.baselines.neuralscale_lite import (
    NEURALSCALE_FRACTIONS,
    default_channel_scores,
    fit_neuralscale,
    neuralscale_plan,
    neuralscale_samples,
)
from fxscale.scaling.baselines.plans import (
    compound_plan,
    depth_plan,
    repeatable_stages,
    resolution_plan,
    uniform_plan,
)
from fxscale.scaling.baselines.registry import (
    BASELINES,
    BaselineFn,
    create_baseline,
    get_baseline,
    list_baselines,
    register_baseline,
)
from fxscale.scaling.baselines.search import BISECT_STEPS, Knob, Search, knob_ladder, run_baseline
from fxscale.scaling.baselines.table import (
    DOLLAR_ALPHA,
    EFFICIENTNET_ALPHA,
    EFFICIENTNET_BETA,
    EFFICIENTNET_GAMMA,
    MAX_DEPTH_ROUNDS,
    MAX_PARAMS_RATIO,
    MAX_PHI,
    MAX_RESOLUTION,
    MAX_S,
    MAX_WIDTH,
    TABLE,
    dollar_factors,
)
from fxscale.scaling.budget import Budget, Evaluator


def baseline_fn(row: Knob) -> BaselineFn:
    """The plan generator of a table row (the BaselineFn signature, run by run_baseline)."""
    def fn(cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *, flops_scale: Optional[float] = None,
           align: int = 1, importance: Optional[Mapping[str, torch.Tensor]] = None) -> ScalingPlan:
        return run_baseline(row, cg, evaluator, budget, flops_scale=flops_scale, align=align, importance=importance)
    fn.__name__ = fn.__qualname__ = row.name
    fn.__doc__ = row.doc
    return fn


for _row in TABLE.values():
    register_baseline(_row.name)(baseline_fn(_row))
for _name, _fn in ABLATION_FNS.items():  # these also need resolution= (HACScale's), see baselines.ablation
    register_baseline(_name)(_fn)

uniform = BASELINES["uniform"]
resolution = BASELINES["resolution"]
depth = BASELINES["depth"]
efficientnet = BASELINES["efficientnet"]
dollar = BASELINES["dollar"]
neuralscale_lite = BASELINES["neuralscale-lite"]
neuralscale = BASELINES["neuralscale"]

__all__ = ["ABLATIONS", "ABLATION_FNS", "ablation_ladder", "random_at_resolution", "resolution_ramp",
           "uniform_at_resolution", "BASELINES", "BISECT_STEPS", "BaselineFn", "DOLLAR_ALPHA", "EFFICIENTNET_ALPHA", "EFFICIENTNET_BETA",
           "EFFICIENTNET_GAMMA", "Knob", "MAX_DEPTH_ROUNDS", "MAX_PARAMS_RATIO", "MAX_PHI", "MAX_RESOLUTION", "MAX_S",
           "MAX_WIDTH", "NEURALSCALE_FRACTIONS", "Search", "TABLE", "baseline_fn", "compound_plan", "create_baseline",
           "default_channel_scores", "depth", "depth_plan", "dollar", "dollar_factors", "efficientnet", "fit_neuralscale",
           "get_baseline", "knob_ladder", "list_baselines", "neuralscale", "neuralscale_lite", "neuralscale_plan", "neuralscale_samples",
           "register_baseline", "repeatable_stages", "resolution", "resolution_plan", "run_baseline", "uniform",
           "uniform_plan"]
