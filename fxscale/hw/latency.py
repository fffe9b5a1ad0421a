"""The one latency-model interface of the scaling code: `LatencyModel` and the incremental `BoundLatency` it binds.

Two kinds implement it, and callers never tell them apart:

- the analytic model calibrated on end-to-end timings (``fxscale.scaling.measure.AnalyticLatency``, bound state
  ``fxscale.scaling.greedy.CostLatency``): ``c0 + c_mac * MACs + c_byte * bytes``;
- the device-profile predictor (``fxscale.hw.predictor.LatencyPredictor``, bound state
  ``fxscale.hw.predictor.PredictorState``): per-layer kernel fits summed over the cost model.

``predict`` answers one plan from scratch (the baselines' evaluator calls it); ``bind`` compiles an incremental
state at a starting plan that Algorithm 1 (``fxscale.scaling.greedy.importance_aware_widths``) updates one
channel group at a time. ``bind(cg, plan).total == predict(cg, plan)``, and after any sequence of
``set_width`` calls ``total`` equals ``predict`` of the updated plan. ``fingerprint`` is the model identity that
per-model calibration terms are keyed by.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from fxscale.tracing import META

if TYPE_CHECKING:
    from fxscale.analysis.graph import ChannelGraph
    from fxscale.plan import ScalingPlan


@runtime_checkable
class BoundLatency(Protocol):
    """Predicted latency of one model under changing widths, updated one channel group at a time.

    Exactly what the greedy loop reads: the running total, a non-committing look-ahead and a commit.
    """

    total: float  # predicted latency (ms) of the current widths

    def peek(self, group: str, width: int) -> float:
        """Predicted total latency (ms) if `group` had `width`, without committing it."""
        ...

    def set_width(self, group: str, width: int) -> float:
        """Commit a new width for `group`; return the new total latency (ms)."""
        ...


@runtime_checkable
class LatencyModel(Protocol):
    """A whole-model latency prediction for plans of a traced model, and incremental states bound to one."""

    def predict(self, cg: ChannelGraph, plan: ScalingPlan) -> float:
        """Predicted latency (ms) of `cg` under `plan`."""
        ...

    def bind(self, cg: ChannelGraph, plan: ScalingPlan) -> BoundLatency:
        """An incremental state of `cg` at `plan`'s resolution, starting at `plan`'s widths."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in the pipeline's results)."""
        ...


def fingerprint(cg: ChannelGraph) -> str:
    """Width-independent identity of a traced model (ops, targets, traced input shape) for per-model calibration.

    A latency model keeps per-model terms under this key (cached on the ChannelGraph).
    """
    fp = cg.__dict__.get("_latency_fingerprint")
    if fp is None:
        mods = dict(cg.gm.named_modules())
        parts = [str(cg.gm.meta.get(META, {}).get("input_shapes"))]
        for n in cg.gm.graph.nodes:
            t = type(mods[n.target]).__name__ if n.op == "call_module" else getattr(n.target, "__name__", n.target)
            parts.append(f"{n.name}:{n.op}:{t}")
        fp = hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]
        cg.__dict__["_latency_fingerprint"] = fp
    return fp


__all__ = ["BoundLatency", "LatencyModel", "fingerprint"]
