"""The baselines as rows of one table: name -> knob, range, start check and setup (run by search.run_baseline)."""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Optional

from fxscale.analysis.graph import ChannelGraph
from fxscale.errors import PlanError
from fxscale.scaling.baselines.descent import descent_knob
from fxscale.scaling.baselines.neuralscale_lite import neuralscale_knob
from fxscale.scaling.baselines.plans import (compound_plan, depth_plan, repeatable_stages, resolution_plan,
                                             uniform_plan)
from fxscale.scaling.baselines.search import ROUNDED_START, Knob, Search

# knob caps (a knob that still fits here stops, meta["capped"] = True)
MAX_WIDTH = 16.0  # uniform width multiplier
MAX_RESOLUTION = 16.0  # resolution factor
MAX_PHI = 12.0  # EfficientNet compound coefficient
MAX_S = 1024.0  # Dollar et al. FLOPs factor
MAX_DEPTH_ROUNDS = 16  # round-robin passes over the repeatable stages
MAX_PARAMS_RATIO = 64.0  # NeuralScale parameter target / baseline params

EFFICIENTNET_ALPHA, EFFICIENTNET_BETA, EFFICIENTNET_GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution bases
DOLLAR_ALPHA = 0.8
NO_STAGE_NOTE = "the model has no repeatable stage: depth factor not applied (d = 1)"
SMALLEST_START = "{method}: even the smallest fitted configuration ({lo:.2f}x params) does not fit {limits}"


def _uniform(cg: ChannelGraph, lim: Any, align: int, importance: Any) -> Search:
    return Search(lambda w: uniform_plan(cg, w, align), lambda w, plan: {"align": align})


def _resolution(cg: ChannelGraph, lim: Any, align: int, importance: Any) -> Search:
    return Search(lambda r: resolution_plan(cg, r), lambda r, plan: {"resolution": list(plan.resolution)})


def _stages_meta(stages: Mapping[str, int], plan: Any) -> dict[str, list[int]]:
    return {s: [n, plan.depths.get(s, n)] for s, n in stages.items()}


def _depth(cg: ChannelGraph, lim: Any, align: int, importance: Any) -> Search:
    stages = repeatable_stages(cg)
    if not stages:
        raise PlanError("depth: the model has no repeatable stage (an nn.Sequential of blocks, or a block / conv "
                        "inside one, whose input and output shapes agree); depth scaling does not apply")
    return Search(lambda k: depth_plan(stages, k), lambda k, plan: {"stages": _stages_meta(stages, plan)},
                  stages=stages, cap=MAX_DEPTH_ROUNDS * len(stages))


def _compound(factors: Callable[[float], tuple[float, float, float]], rounding: str,
              before: Optional[dict[str, Any]] = None, after: Optional[dict[str, Any]] = None
              ) -> Callable[[ChannelGraph, Any, int, Any], Search]:
    """Setup of a compound method: knob -> (d, w, r) factors, depth rounding, extra meta around d, w, r."""
    def setup(cg: ChannelGraph, lim: Any, align: int, importance: Any) -> Search:
        stages = repeatable_stages(cg)

        def make(x: float) -> Any:
            d, w, r = factors(x)
            return compound_plan(cg, d, w, r, align=align, stages=stages, depth_rounding=rounding)

        def meta(x: float, plan: Any) -> dict[str, Any]:
            d, w, r = factors(x)
            return {**copy.deepcopy(before or {}), "d": d, "w": w, "r": r, **copy.deepcopy(after or {}),
                    "depth_rounding": rounding, "stages": _stages_meta(stages, plan), "align": align}

        return Search(make, meta, stages=stages, note={} if stages else {"depth_note": NO_STAGE_NOTE})
    return setup


def _efficientnet_factors(phi: float) -> tuple[float, float, float]:
    return EFFICIENTNET_ALPHA ** phi, EFFICIENTNET_BETA ** phi, EFFICIENTNET_GAMMA ** phi


def dollar_factors(s: float, alpha: float = DOLLAR_ALPHA) -> tuple[float, float, float]:
    """Dollar et al. fast compound scaling (pycls scaler "d1_w8_r1" for alpha = 0.8): FLOPs factor s split as
    d = s^((1-alpha)/2), w = s^(alpha/2), r = s^((1-alpha)/4), so that d * w^2 * r^2 = s."""
    return s ** ((1 - alpha) / 2), s ** (alpha / 2), s ** ((1 - alpha) / 4)


TABLE: dict[str, Knob] = {row.name: row for row in [
    Knob("uniform", "w", 1.0, MAX_WIDTH, 2.0, _uniform, start=ROUNDED_START,
         doc="Zagoruyko & Komodakis: one width multiplier on all scalable groups, the largest that fits."),
    Knob("resolution", "r", 1.0, MAX_RESOLUTION, 2.0, _resolution,
         doc="Resolution scaling only: the largest input resolution factor r that fits."),
    Knob("depth", "increments", 0, MAX_DEPTH_ROUNDS, 1, _depth, integer=True,  # cap: rounds x stages
         doc="Depth scaling only: +1 block per repeatable stage, round-robin in model order, while it fits."),
    Knob("efficientnet", "phi", 0.0, MAX_PHI, 1.0,
         _compound(_efficientnet_factors, "ceil", after={"bases": {"d": EFFICIENTNET_ALPHA, "w": EFFICIENTNET_BETA,
                                                                  "r": EFFICIENTNET_GAMMA}}),
         start=ROUNDED_START,
         doc="Tan & Le compound scaling: d, w, r = 1.2^phi, 1.1^phi, 1.15^phi for the largest phi that fits."),
    Knob("dollar", "s", 1.0, MAX_S, 2.0, _compound(dollar_factors, "round", before={"alpha": DOLLAR_ALPHA}),
         start=ROUNDED_START,
         doc="Dollar et al. fast compound scaling: d = s^((1-alpha)/2), w = s^(alpha/2), r = s^((1-alpha)/4), "
             "alpha = 0.8; largest s."),
    Knob("neuralscale-lite", "params_ratio", 1.0, MAX_PARAMS_RATIO, 2.0, neuralscale_knob,  # lo, first: from the fit
         start=SMALLEST_START,
         doc="NeuralScale-lite (after Lee & Lee 2020): widths from a params power law fitted to one simulated "
             "global pruning with fixed scores (no retraining, no rescoring, no architecture-descent iteration, unlike "
             "the published method); largest params target that fits.\n\nimportance: group name -> per-channel scores (fxscale.scaling.importance.Importance "
             "or its .channels); None uses default_channel_scores (weight magnitudes)."),
    Knob("neuralscale", "params_ratio", 1.0, MAX_PARAMS_RATIO, 2.0, descent_knob, start=SMALLEST_START,
         doc="NeuralScale as published (Lee & Lee 2020): widths from per-layer power laws in total params, fitted "
             "to an iterative Taylor pruning of the trained baseline with rescoring and short fine-tunes, after "
             "architecture-descent iterations (fxscale.scaling.baselines.descent); largest params target that "
             "fits.\n\nimportance: the descent.Trajectory (fxscale scale computes it from its trained baseline)."),
]}


__all__ = ["dollar_factors", "DOLLAR_ALPHA", "EFFICIENTNET_ALPHA", "EFFICIENTNET_BETA", "EFFICIENTNET_GAMMA", "MAX_DEPTH_ROUNDS",
           "MAX_PARAMS_RATIO", "MAX_PHI", "MAX_RESOLUTION", "MAX_S", "MAX_WIDTH", "TABLE"]
