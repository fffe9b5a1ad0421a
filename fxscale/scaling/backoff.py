"""Equal, measured budgets: one acceptance rule and one back-off for every scaling method.

A plan is accepted when the UPPER bound of the confidence interval of its measured latency ratio to the baseline
(interleaved rounds on the target, `fxscale.hw.timing.measure_interleaved` + `median_ratio_interval`) is within the
latency budget ratio. The interval is made tight adaptively: rounds are added in batches until its half-width is at
most `halfwidth` x the ratio, or `max_rounds` is reached (the record says which).

Every method hands in a *ladder*: plans ordered by cost along its own knobs, index 0 being the unscaled baseline
(always accepted) and the last the plan its predictor chose. `back_off` keeps the largest accepted index by
measuring the top first and bisecting below it (plans are assumed monotone in latency along the ladder). HACScale's
ladder is its resolution steps, then its accepted width steps; a baseline's ladder is its knob from the unscaled
value up to the predicted choice (resolution is one of those knobs for the resolution and compound rows).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from dataclasses import replace as dc_replace
from typing import Any, Callable, Optional, Sequence

from fxscale.errors import FxscaleError
from fxscale.hw.timing import RatioInterval, measure_interleaved, median_ratio_interval
from fxscale.plan import ScalingPlan

ROUND_BATCH = 10  # rounds added per batch (the first batch too: 10 rounds give a 97.9% order-statistic interval)


@dataclass(frozen=True)
class MeasuredRatio:
    """A plan's measured latency over the baseline's: median of per-round ratios and its interval."""

    ratio: float
    low: float
    high: float
    confidence: float
    rounds: int
    tight: bool  # half-width <= the requested fraction (False: stopped at max_rounds)

    @classmethod
    def of(cls, iv: RatioInterval, halfwidth: float) -> "MeasuredRatio":
        """From a RatioInterval: `tight` when (high - low) / 2 <= halfwidth * ratio."""
        tight = bool(iv.ratio > 0 and (iv.high - iv.low) / 2 <= halfwidth * iv.ratio)
        return cls(iv.ratio, iv.low, iv.high, iv.confidence, len(iv.ratios), tight)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"ratio": self.ratio, "low": self.low, "high": self.high, "confidence": self.confidence,
                "rounds": self.rounds, "tight": self.tight}


def adaptive_intervals(rounds_of: Callable[[int], list[list[float]]], *, base: int = 0, halfwidth: float = 0.02,
                       max_rounds: int = 100, confidence: float = 0.95,
                       batch: int = ROUND_BATCH) -> tuple[list[MeasuredRatio], list[list[float]]]:
    """Ratio intervals of every item to item `base`, adding rounds until all are tight or max_rounds is reached.

    rounds_of(n) times every item in n more interleaved rounds and returns per item its n per-round values (ms).
    Returns the intervals and every item's per-round values.
    """
    if not 0 < halfwidth < 1:
        raise FxscaleError(f"halfwidth must lie in (0, 1), got {halfwidth}")
    got: Optional[list[list[float]]] = None
    while True:
        n = max(1, min(batch, max_rounds - (len(got[0]) if got else 0)))
        new = rounds_of(n)
        got = new if got is None else [a + b for a, b in zip(got, new)]
        out = [MeasuredRatio.of(median_ratio_interval(
            [a / b if b > 0 else math.nan for a, b in zip(vals, got[base])], confidence), halfwidth)
            for vals in got]
        if all(m.tight for i, m in enumerate(out) if i != base) or len(got[base]) >= max_rounds:
            return out, got


def interleaved_rounds(target: Any, items: Sequence[tuple[Any, Sequence[int]]], protocol: Any
                       ) -> Callable[[int], list[list[float]]]:
    """rounds_of(n) for adaptive_intervals: n interleaved rounds of protocol.runs / protocol.rounds runs each."""
    per_round = max(1, protocol.runs // max(1, protocol.rounds))

    def rounds_of(n: int) -> list[list[float]]:
        proto = dc_replace(protocol, runs=per_round * n, rounds=n)
        return [t.round_values() for t in measure_interleaved(target, list(items), proto)]
    return rounds_of


@dataclass
class BackOff:
    """The result of backing off one ladder: the kept index, its measured ratio, and every check made."""

    index: int
    measured: Optional[MeasuredRatio]
    checks: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self, size: int) -> dict[str, Any]:
        """JSON-ready form (size: the ladder's length)."""
        return {"index": self.index, "ladder": size, "measured": None if self.measured is None else
                self.measured.to_dict(), "checks": self.checks, "wall_s": self.wall_s}


def back_off(ladder: Sequence[ScalingPlan], measure: Callable[[ScalingPlan], MeasuredRatio], limit_ratio: float
             ) -> BackOff:
    """Largest ladder index whose measured ratio's upper bound is <= limit_ratio (index 0 is the baseline).

    Measures the top first; when it fails, bisects over (0, top). Index 0 is never measured against the limit: it
    is the baseline itself (its ratio is 1 by definition).
    """
    t0 = time.perf_counter()
    res = BackOff(0, None)

    def ok(i: int) -> bool:
        m = measure(ladder[i])
        res.checks.append({"index": i, **m.to_dict(), "accepted": m.high <= limit_ratio})
        if m.high <= limit_ratio:
            res.index, res.measured = i, m  # accepted indices only grow during the bisection
            return True
        return False

    top = len(ladder) - 1
    if top > 0 and not ok(top):
        lo, hi = 0, top
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        if lo == 0:
            res.index, res.measured = 0, None
    res.wall_s = time.perf_counter() - t0
    return res


def dedupe(plans: Sequence[ScalingPlan]) -> list[ScalingPlan]:
    """Consecutive duplicates (same widths, resolution and depths) collapsed to the last of each run, order kept."""
    out: list[ScalingPlan] = []
    last = None
    for p in plans:
        key = ScalingPlan(widths=dict(p.widths), resolution=p.resolution, depths=dict(p.depths)).to_json(indent=None)
        if key == last:
            out[-1] = p
        else:
            out.append(p)
        last = key
    return out


__all__ = ["BackOff", "MeasuredRatio", "ROUND_BATCH", "adaptive_intervals", "back_off", "dedupe",
           "interleaved_rounds"]
