"""Measuring many models interleaved, and the analytic latency model calibrated by end-to-end timings."""
from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from pathlib import Path
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


class PlanTimer:
    """Measured latency ratios of plans to the baseline, each with a tight interval (scaling.backoff's rule).

    build(plan) gives the plan's model; shape(plan) its input shape. On the ort target every plan is exported to
    ONNX once (kept in a temporary folder for the timer's life), so adding rounds never re-exports.
    """

    def __init__(self, target: Any, build: Callable[[ScalingPlan], Any], shape: Callable[[ScalingPlan], Sequence[int]],
                 protocol: MeasureProtocol, halfwidth: float = 0.02, max_rounds: int = 100) -> None:
        self.target, self.build, self.shape, self.protocol = target, build, shape, protocol
        self.halfwidth, self.max_rounds = halfwidth, max_rounds
        self._dir = tempfile.TemporaryDirectory(prefix="fxscale-timer-")
        self._items: dict[str, Any] = {}

    def item(self, plan: ScalingPlan) -> tuple[Any, Sequence[int]]:
        """(model or .onnx path, input shape) of a plan, built (and exported) once."""
        key = ScalingPlan(widths=dict(plan.widths), resolution=plan.resolution, depths=dict(plan.depths)).to_json(
            indent=None)
        if key not in self._items:
            model, shape = self.build(plan), tuple(int(d) for d in self.shape(plan))
            if getattr(self.target, "name", "") == "ort":
                from fxscale.hw.targets import _export_for_timing
                path = Path(self._dir.name) / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
                model = _export_for_timing(model, path, shape)
            self._items[key] = (model, shape)
        return self._items[key]

    def measure(self, plans: Sequence[ScalingPlan]) -> tuple[list[Any], list[list[float]]]:
        """MeasuredRatio of every plan to plans[0] (the baseline), all timed interleaved in the same rounds, and
        every plan's per-round medians (ms)."""
        from fxscale.scaling.backoff import adaptive_intervals, interleaved_rounds
        items = [self.item(p) for p in plans]
        return adaptive_intervals(interleaved_rounds(self.target, items, self.protocol), base=0,
                                  halfwidth=self.halfwidth, max_rounds=self.max_rounds)

    def ratio(self, plan: ScalingPlan) -> Any:
        """MeasuredRatio of one plan to the unscaled baseline."""
        return self.measure([ScalingPlan(), plan])[0][1]

    def close(self) -> None:
        """Remove the exported files."""
        self._dir.cleanup()


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


__all__ = ["AnalyticLatency", "PlanTimer", "fit_analytic", "measure_many"]
