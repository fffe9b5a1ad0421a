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
- ``neuralscale``: Lee & Lee 2020. Iterative global pruning by per-channel importance, simulated with the cost
  model (no retraining, so the scores stay fixed), records (total params, per-group widths) at parameter
  fractions 1.0 .. 0.3, fits ``log w_g = log a_g + b_g log P`` per group (least squares) and scales to the
  largest parameter target P whose predicted widths fit (extrapolating above the baseline).

Widths are rounded to the nearest positive multiple of lcm(group divisor, align) (``round_width``);
resolutions to the nearest pixel. ``plan.meta`` records the method, its factors (nominal and achieved), the
limits it was scaled to and the plan's predicted latency / params / FLOPs.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Protocol

import numpy as np
import torch

from fxscale.analysis.graph import ChannelGraph, analyze
from fxscale.cost import cost_model
from fxscale.errors import FxscaleError, PlanError
from fxscale.plan import ScalingPlan
from fxscale.scaling.budget import Budget, Evaluator, bisect_max, round_width, scaled_resolution, uniform_widths

# knob caps (a knob that still fits here stops, meta["capped"] = True)
MAX_WIDTH = 16.0  # uniform width multiplier
MAX_RESOLUTION = 16.0  # resolution factor
MAX_PHI = 12.0  # EfficientNet compound coefficient
MAX_S = 1024.0  # Dollar et al. FLOPs factor
MAX_DEPTH_ROUNDS = 16  # round-robin passes over the repeatable stages
MAX_PARAMS_RATIO = 64.0  # NeuralScale parameter target / baseline params

EFFICIENTNET_ALPHA, EFFICIENTNET_BETA, EFFICIENTNET_GAMMA = 1.2, 1.1, 1.15  # depth, width, resolution bases
DOLLAR_ALPHA = 0.8
NEURALSCALE_FRACTIONS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
BISECT_STEPS = 24


class BaselineFn(Protocol):
    """The signature every baseline shares."""

    def __call__(self, cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *,
                 flops_scale: Optional[float] = None, align: int = 1,
                 importance: Optional[Mapping[str, torch.Tensor]] = None) -> ScalingPlan: ...


BASELINES: dict[str, BaselineFn] = {}


def register_baseline(name: str) -> Callable[[BaselineFn], BaselineFn]:
    """Decorator: add a plan generator to BASELINES under `name`."""
    def deco(fn: BaselineFn) -> BaselineFn:
        if name in BASELINES:
            raise FxscaleError(f"baseline {name!r} is already registered")
        BASELINES[name] = fn
        return fn
    return deco


def list_baselines() -> list[str]:
    """Registered method names, sorted."""
    return sorted(BASELINES)


def get_baseline(name: str) -> BaselineFn:
    """The plan generator registered as `name`; FxscaleError naming the valid ones otherwise."""
    fn = BASELINES.get(name) if isinstance(name, str) else None
    if fn is None:
        raise FxscaleError(f"unknown baseline {name!r}; valid baselines: {', '.join(list_baselines())}")
    return fn


# ----------------------------------------------------------------------------------------------- plan builders

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


# ----------------------------------------------------------------------------------------------- limits

class _Limits:
    """Every limit a baseline scales to: the budget (via the evaluator) and/or a FLOPs multiple."""

    def __init__(self, cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget],
                 flops_scale: Optional[float], method: str) -> None:
        self.cg, self.evaluator, self.method = cg, evaluator, method
        self.budget = budget or Budget()
        self.mode = getattr(evaluator, "mode", "input")
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
        """FLOPs of the plan (depth plans are rebuilt and analysed, as the evaluator does)."""
        key = _key(plan)
        if key not in self._flops:
            cg, p = self.cg, plan
            if plan.depths:
                from fxscale.api import transform
                new = transform(self.cg.gm, ScalingPlan(widths=dict(plan.widths), resolution=plan.resolution,
                                                        depths=dict(plan.depths)),
                                init="reinit", resolution_mode=self.mode)
                cg, p = analyze(new), ScalingPlan()
            self._flops[key] = cost_model(cg, p.resolution, mode=self.mode).report(p).flops
        return self._flops[key]

    def fits(self, plan: ScalingPlan) -> bool:
        """True when the plan fits the budget (if any) and the FLOPs multiple (if any).

        Depth plans (a rebuild each) are first checked against two plans they dominate, assuming cost grows
        with blocks, widths and resolution: the same plan without its depths (no rebuild), and, when every
        width and the resolution are at least the baseline's, the depths alone (one rebuild per depths,
        cached), so a compound search does not rebuild every width variant of a depth that never fits.
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


def _start(lim: _Limits, plan: ScalingPlan, what: str, align: int) -> None:
    if not lim.fits(plan):
        raise PlanError(f"{lim.method}: the plan at {what} does not fit {lim.describe()} although the baseline does "
                        f"(widths rounded to multiples of align={align} exceed it); use a smaller align or a "
                        "looser budget")


def _achieved(cg: ChannelGraph, plan: ScalingPlan, stages: Mapping[str, int]) -> dict[str, float]:
    """Realised factors after rounding: geometric-mean width ratio, resolution ratio, block ratio."""
    groups = cg.scalable
    logs = [math.log(plan.widths.get(g.name, g.width) / g.width) for g in groups]
    w = math.exp(sum(logs) / len(logs)) if logs else 1.0
    h0, _w0 = cg.gm.meta["fxscale"]["resolution"]
    r = (plan.resolution[0] / h0) if plan.resolution else 1.0
    base = sum(stages.values())
    d = (sum(plan.depths.get(k, n) for k, n in stages.items()) / base) if base else 1.0
    return {"d": d, "w": w, "r": r}


# ----------------------------------------------------------------------------------------------- methods

@register_baseline("uniform")
def uniform(cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *, flops_scale: Optional[float] = None,
            align: int = 1, importance: Optional[Mapping[str, torch.Tensor]] = None) -> ScalingPlan:
    """Zagoruyko & Komodakis: one width multiplier on all scalable groups, the largest that fits."""
    lim = _Limits(cg, evaluator, budget, flops_scale, "uniform")
    _start(lim, uniform_plan(cg, 1.0, align), "w=1", align)
    w, capped = _largest(lambda x: lim.fits(uniform_plan(cg, x, align)), 1.0, MAX_WIDTH, 2.0)
    plan = uniform_plan(cg, w, align)
    return lim.finish(plan, {"method": "uniform", "knob": "w", "w": w, "align": align,
                             "achieved": _achieved(cg, plan, {})}, capped)


@register_baseline("resolution")
def resolution(cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *,
               flops_scale: Optional[float] = None, align: int = 1,
               importance: Optional[Mapping[str, torch.Tensor]] = None) -> ScalingPlan:
    """Resolution scaling only: the largest input resolution factor r that fits."""
    lim = _Limits(cg, evaluator, budget, flops_scale, "resolution")
    r, capped = _largest(lambda x: lim.fits(resolution_plan(cg, x)), 1.0, MAX_RESOLUTION, 2.0)
    plan = resolution_plan(cg, r)
    return lim.finish(plan, {"method": "resolution", "knob": "r", "r": r, "resolution": list(plan.resolution),
                             "achieved": _achieved(cg, plan, {})}, capped)


@register_baseline("depth")
def depth(cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *, flops_scale: Optional[float] = None,
          align: int = 1, importance: Optional[Mapping[str, torch.Tensor]] = None) -> ScalingPlan:
    """Depth scaling only: +1 block per repeatable stage, round-robin in model order, while it fits."""
    lim = _Limits(cg, evaluator, budget, flops_scale, "depth")
    stages = repeatable_stages(cg)
    if not stages:
        raise PlanError("depth: the model has no repeatable stage (an nn.Sequential of blocks, or a block / conv "
                        "inside one, whose input and output shapes agree); depth scaling does not apply")
    k, capped = _largest_int(lambda i: lim.fits(depth_plan(stages, i)), 0, MAX_DEPTH_ROUNDS * len(stages))
    plan = depth_plan(stages, k)
    return lim.finish(plan, {"method": "depth", "knob": "increments", "increments": k,
                             "stages": {s: [n, plan.depths.get(s, n)] for s, n in stages.items()},
                             "achieved": _achieved(cg, plan, stages)}, capped)


@register_baseline("efficientnet")
def efficientnet(cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *,
                 flops_scale: Optional[float] = None, align: int = 1,
                 importance: Optional[Mapping[str, torch.Tensor]] = None) -> ScalingPlan:
    """Tan & Le compound scaling: d, w, r = 1.2^phi, 1.1^phi, 1.15^phi for the largest phi that fits."""
    lim = _Limits(cg, evaluator, budget, flops_scale, "efficientnet")
    stages = repeatable_stages(cg)

    def make(phi: float) -> ScalingPlan:
        return compound_plan(cg, EFFICIENTNET_ALPHA ** phi, EFFICIENTNET_BETA ** phi, EFFICIENTNET_GAMMA ** phi,
                             align=align, stages=stages, depth_rounding="ceil")

    _start(lim, make(0.0), "phi=0", align)
    phi, capped = _largest(lambda x: lim.fits(make(x)), 0.0, MAX_PHI, 1.0)
    plan = make(phi)
    meta = {"method": "efficientnet", "knob": "phi", "phi": phi, "d": EFFICIENTNET_ALPHA ** phi,
            "w": EFFICIENTNET_BETA ** phi, "r": EFFICIENTNET_GAMMA ** phi,
            "bases": {"d": EFFICIENTNET_ALPHA, "w": EFFICIENTNET_BETA, "r": EFFICIENTNET_GAMMA},
            "depth_rounding": "ceil", "stages": {s: [n, plan.depths.get(s, n)] for s, n in stages.items()},
            "align": align, "achieved": _achieved(cg, plan, stages)}
    if not stages:
        meta["depth_note"] = "the model has no repeatable stage: depth factor not applied (d = 1)"
    return lim.finish(plan, meta, capped)


@register_baseline("dollar")
def dollar(cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *, flops_scale: Optional[float] = None,
           align: int = 1, importance: Optional[Mapping[str, torch.Tensor]] = None) -> ScalingPlan:
    """Dollar et al. fast compound scaling: w = s^(alpha/2), d = r = s^((1-alpha)/3), alpha = 0.8; largest s."""
    lim = _Limits(cg, evaluator, budget, flops_scale, "dollar")
    stages = repeatable_stages(cg)
    a = DOLLAR_ALPHA

    def factors(s: float) -> tuple[float, float, float]:
        return s ** ((1 - a) / 3), s ** (a / 2), s ** ((1 - a) / 3)

    def make(s: float) -> ScalingPlan:
        d, w, r = factors(s)
        return compound_plan(cg, d, w, r, align=align, stages=stages, depth_rounding="round")

    _start(lim, make(1.0), "s=1", align)
    s, capped = _largest(lambda x: lim.fits(make(x)), 1.0, MAX_S, 2.0)
    plan = make(s)
    d, w, r = factors(s)
    meta = {"method": "dollar", "knob": "s", "s": s, "alpha": a, "d": d, "w": w, "r": r, "depth_rounding": "round",
            "stages": {k: [n, plan.depths.get(k, n)] for k, n in stages.items()}, "align": align,
            "achieved": _achieved(cg, plan, stages)}
    if not stages:
        meta["depth_note"] = "the model has no repeatable stage: depth factor not applied (d = 1)"
    return lim.finish(plan, meta, capped)


# ----------------------------------------------------------------------------------------------- NeuralScale

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
        raise PlanError(f"neuralscale: importance must map group name -> per-channel scores (or have .channels), "
                        f"got {type(importance).__name__}")
    groups = cg.by_name
    unknown = [k for k in imp if k not in groups]
    if unknown:
        raise PlanError(f"neuralscale: importance names unknown groups {sorted(unknown)}")
    missing = [g.name for g in cg.scalable if g.name not in imp]
    if missing:
        raise PlanError(f"neuralscale: importance has no scores for scalable groups {missing}")
    out = {}
    for g in cg.scalable:
        v = torch.as_tensor(imp[g.name]).detach().float().reshape(-1)
        if v.numel() != g.width:
            raise PlanError(f"neuralscale: importance for group {g.name!r} has {v.numel()} entries, width is "
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
        raise PlanError("neuralscale: pruning gave fewer than two distinct parameter counts; cannot fit the "
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


@register_baseline("neuralscale")
def neuralscale(cg: ChannelGraph, evaluator: Evaluator, budget: Optional[Budget], *,
                flops_scale: Optional[float] = None, align: int = 1,
                importance: Optional[Mapping[str, torch.Tensor]] = None) -> ScalingPlan:
    """Lee & Lee 2020: widths from a params power law fitted to simulated pruning; largest params target that fits.

    importance: group name -> per-channel scores (fxscale.scaling.importance.Importance or its .channels);
    None uses default_channel_scores (weight magnitudes).
    """
    lim = _Limits(cg, evaluator, budget, flops_scale, "neuralscale")
    if not cg.scalable:
        raise PlanError("neuralscale: the model has no scalable channel group")
    scores, source = _scores(cg, importance)
    samples = neuralscale_samples(cg, scores, mode=lim.mode)
    fit = fit_neuralscale(samples)
    p0 = samples[0][0] if samples else 1
    lo = min(p for p, _ in samples) / p0

    def make(ratio: float) -> ScalingPlan:
        return neuralscale_plan(cg, fit, ratio * p0, align)

    if not lim.fits(make(lo)):
        raise PlanError(f"neuralscale: even the smallest fitted configuration ({lo:.2f}x params) does not fit "
                        f"{lim.describe()}")
    ratio, capped = _largest(lambda x: lim.fits(make(x)), lo, MAX_PARAMS_RATIO, max(1.0, 2 * lo))
    plan = make(ratio)
    meta = {"method": "neuralscale", "knob": "params_ratio", "params_ratio": ratio, "params_target": ratio * p0,
            "importance": source, "fractions": [p / p0 for p, _ in samples], "samples": len(samples),
            "fit": {k: {"a": a, "b": b} for k, (a, b) in fit.items()}, "align": align,
            "achieved": _achieved(cg, plan, {})}
    return lim.finish(plan, meta, capped)


__all__ = ["BASELINES", "BaselineFn", "compound_plan", "default_channel_scores", "depth", "depth_plan", "dollar",
           "efficientnet", "fit_neuralscale", "get_baseline", "list_baselines", "neuralscale", "neuralscale_plan",
           "neuralscale_samples", "register_baseline", "repeatable_stages", "resolution", "resolution_plan",
           "uniform", "uniform_plan"]
