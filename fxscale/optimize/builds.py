"""Whole-model builds and the final end-to-end comparison: the hybrid against every single-backend build and torch
eager on the original (unoptimised) graph, all timed in one interleaved engine run."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.fx as fx

from fxscale.hw.base import TimingProtocol
from fxscale.hw.timing import Timing
from fxscale.optimize.measure import Call, hi_of, max_abs_diff, time_calls, to_layout, within_tolerance


@dataclass
class Build:
    """One runnable form of the model: its callable, backend name, layout and numerics against eager."""

    backend: str  # "hybrid", "partitioned", "original", or a backend name (the whole optimised graph on it)
    fn: Callable[..., Any]
    layout: str
    max_abs_diff: float
    note: str = ""


def whole_builds(opt: fx.GraphModule, inputs: tuple, backends: dict[str, Any], reference: Any,
                 skipped: dict[str, str]) -> list[Build]:
    """The optimised graph compiled whole by each backend (a failure or wrong numerics is skipped with a reason)."""
    out = []
    for name, be in backends.items():
        xs = tuple(to_layout(x, be.layout) for x in inputs)
        try:
            cap = be.supports(opt, xs)
            if not cap.ok:
                skipped[name] = cap.reason or "not supported"
                continue
            fn = be.compile(opt, xs)
            with torch.no_grad():
                diff = max_abs_diff(fn(*xs), reference)
        except Exception as e:  # noqa: BLE001 - one line in the report, never an error
            skipped[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            continue
        if not within_tolerance(name, diff, reference):
            skipped[name] = f"whole-model max abs diff {diff:.2e} against eager is beyond tolerance"
            continue
        out.append(Build(name, fn, be.layout, diff))
    return out


def compare(builds: list[Build], inputs: tuple, protocol: TimingProtocol,
            progress: Optional[Callable[[int, int], None]] = None) -> list[Timing]:
    """Every build timed in one interleaved run (each fed its own layout)."""
    calls = [Call(b.fn, tuple(to_layout(x, b.layout) for x in inputs)) for b in builds]
    return time_calls(calls, protocol, progress=progress)


def rows(builds: list[Build], timings: list[Timing], hybrid: int) -> list[dict[str, Any]]:
    """results.json rows: latency, its upper end, numerics and ratios to the hybrid (with intervals)."""
    out = []
    base = timings[hybrid]
    for b, t in zip(builds, timings):
        r = t.ratio_to(base)
        out.append({"backend": b.backend, "latency_ms": t.value, "latency_ms_hi": hi_of(t),
                    "max_abs_diff": b.max_abs_diff, "layout": b.layout, "note": b.note,
                    "speedup_of_hybrid": r.ratio, "speedup_low": r.low, "speedup_high": r.high,
                    "confidence": r.confidence})
    return out


def best_single(rows_: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The fastest single-backend whole build."""
    singles = [r for r in rows_ if r["backend"] not in ("hybrid", "partitioned", "original")
               and not math.isnan(r["latency_ms"])]
    return min(singles, key=lambda r: r["latency_ms"]) if singles else None


__all__ = ["Build", "best_single", "compare", "rows", "whole_builds"]
