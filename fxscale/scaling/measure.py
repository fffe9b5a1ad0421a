"""Measuring many models interleaved, and the analytic latency model calibrated by end-to-end timings."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from typing import Any

import numpy as np

from fxscale.analysis.graph import ChannelGraph
from fxscale.cost import cost_model
from fxscale.errors import TargetError
from fxscale.hw.base import LatencyStats, MeasureProtocol
from fxscale.plan import ScalingPlan
from fxscale.scaling.greedy import CostLatency


def measure_many(target: Any, models: Sequence[Any], shapes: Sequence[Sequence[int]], protocol: MeasureProtocol,
                 rounds: int | None = None) -> list[LatencyStats]:
    """Time several models in one measure_interleaved run (interleaved rounds, so machine drift hits all alike).

    `rounds` overrides protocol.rounds; the order within a round is protocol.order.
    """
    from fxscale.hw.targets import _stats
    from fxscale.hw.timing import measure_interleaved
    if len(models) != len(shapes):
        raise TargetError(f"measure_many needs one input shape per model, got {len(models)} models and "
                          f"{len(shapes)} shapes")
    proto = protocol if rounds is None else dc_replace(protocol, rounds=rounds)
    if not models:
        return []
    timings = measure_interleaved(target, list(zip(models, shapes)), proto)
    return [_stats(target, t, proto) for t in timings]


@dataclass
class AnalyticLatency:
    """Whole-model latency linear in MACs and bytes (non-negative least squares over measured variants)."""

    c0: float
    c_mac: float
    c_byte: float
    mode: str = "input"
    mape: float = float("nan")  # in-sample mean absolute percentage error of the calibration points

    def predict(self, cg: ChannelGraph, plan: ScalingPlan) -> float:
        """Predicted latency (ms) of cg under plan."""
        rep = cost_model(cg, plan.resolution, mode=self.mode).report(plan)
        return self.c0 + self.c_mac * rep.macs + self.c_byte * rep.bytes

    def bind(self, cg: ChannelGraph, plan: ScalingPlan) -> CostLatency:
        """An incremental state for the greedy loop, starting at plan."""
        return CostLatency(cg, plan, self.c_mac, self.c_byte, self.c0, mode=self.mode)

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form."""
        return {"kind": "analytic", "c0": self.c0, "c_mac": self.c_mac, "c_byte": self.c_byte, "mape": self.mape}


def fit_analytic(costs: Sequence[tuple[int, int]], measured_ms: Sequence[float], mode: str = "input") -> AnalyticLatency:
    """Fit ms = c0 + c_mac*MACs + c_byte*bytes >= 0 from (macs, bytes) points and their measured latencies."""
    from scipy.optimize import nnls
    if len(costs) < 2:
        raise TargetError("calibrating the latency model needs at least 2 measured variants")
    a = np.array([[1.0, m, b] for m, b in costs])
    y = np.array(measured_ms, dtype=float)
    scale = a.max(0)
    scale[scale == 0] = 1.0
    coef, _res = nnls(a / scale, y)
    coef = coef / scale
    pred = a @ coef
    return AnalyticLatency(float(coef[0]), float(coef[1]), float(coef[2]), mode,
                           float(np.mean(np.abs(pred - y) / y)) * 100)


__all__ = ["AnalyticLatency", "fit_analytic", "measure_many"]
