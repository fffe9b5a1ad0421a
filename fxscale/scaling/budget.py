"""Budgets and the plan evaluator every scaling method shares (predicted latency, parameter memory)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Union

from fxscale.analysis.graph import ChannelGraph, analyze
from fxscale.cost import cost_model
from fxscale.errors import PlanError
from fxscale.materialize import Materializer
from fxscale.plan import ScalingPlan

LatencyFn = Callable[[ChannelGraph, ScalingPlan], float]  # predicted ms of cg under plan: a LatencyModel.predict


def parse_budget(value: Union[str, float, None], baseline: float, what: str) -> Optional[float]:
    """'1.05x' -> 1.05 * baseline; a plain number is absolute; None means unconstrained."""
    if value is None:
        return None
    text = str(value).strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*x", text)
    try:
        out = float(m.group(1)) * baseline if m else float(text)
    except ValueError:
        raise PlanError(f"{what} budget {value!r} is neither a number nor a multiple like '1.05x'") from None
    if out < baseline * (1 - 1e-9):
        raise PlanError(f"{what} budget {out:.6g} is below the baseline's own {what} {baseline:.6g}; "
                        f"give at least '1.0x'")
    return out


@dataclass
class Budget:
    """Absolute limits: predicted latency (ms) and parameter count (the paper's memory model)."""

    latency_ms: Optional[float] = None
    params: Optional[float] = None

    def fits(self, latency_ms: float, params: float) -> bool:
        """True when both limits hold."""
        return ((self.latency_ms is None or latency_ms <= self.latency_ms)
                and (self.params is None or params <= self.params))


class Evaluator:
    """Predicted latency and exact parameter count of plans of one model (depth plans are rebuilt first)."""

    def __init__(self, cg: ChannelGraph, latency: LatencyFn, mode: str = "input") -> None:
        self.cg, self.latency_fn, self.mode = cg, latency, mode
        self._cache: dict[str, tuple[float, int]] = {}
        self.materializer = Materializer()  # deeper graphs of depth plans, shared with whoever asks (baselines)

    def __call__(self, plan: ScalingPlan) -> tuple[float, int]:
        """(predicted latency ms, params) of a plan, memoised by the plan's JSON."""
        key = plan.to_json(indent=None)
        if key not in self._cache:
            cg, p = self._resolve(plan)
            self._cache[key] = (float(self.latency_fn(cg, p)), cost_model(cg, p.resolution, mode=self.mode)
                                .report(p).params)
        return self._cache[key]

    def fits(self, plan: ScalingPlan, budget: Budget) -> bool:
        """True when the plan's predicted latency and params are within budget."""
        return budget.fits(*self(plan))

    def _resolve(self, plan: ScalingPlan) -> tuple[ChannelGraph, ScalingPlan]:
        """The graph and plan to evaluate: a depth plan's deeper graph (one rebuild per depths) and the rest."""
        return self.materializer(self.cg, plan, mode=self.mode)


def round_width(width: float, divisor: int, align: int = 1) -> int:
    """Nearest valid width: a positive multiple of lcm(divisor, align)."""
    from math import lcm
    q = lcm(divisor, align)
    return max(q, int(round(width / q)) * q)


def uniform_widths(cg: ChannelGraph, multiplier: float, align: int = 1) -> dict[str, int]:
    """Every scalable group times one multiplier (rounded to its divisor)."""
    return {g.name: round_width(g.width * multiplier, g.divisor, align) for g in cg.scalable}


def scaled_resolution(cg: ChannelGraph, factor: float) -> tuple[int, int]:
    """The traced resolution times a factor (rounded, at least 1)."""
    h, w = cg.gm.meta["fxscale"]["resolution"]
    return max(1, round(h * factor)), max(1, round(w * factor))


def bisect_max(fits: Callable[[float], bool], lo: float, hi: float, steps: int = 24) -> float:
    """Largest x in [lo, hi] with fits(x), assuming fits is monotone (True below a threshold)."""
    if not fits(lo):
        return lo
    if fits(hi):
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


__all__ = ["Budget", "Evaluator", "analyze", "bisect_max", "parse_budget", "round_width", "scaled_resolution",
           "uniform_widths"]
