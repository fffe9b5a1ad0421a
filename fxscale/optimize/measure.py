"""Measuring partitions, transitions and whole builds with the one timing engine (fxscale.hw.timing).

Everything is timed by ``measure_interleaved`` on a ``CallTarget``: each item is a prepared call (a compiled
callable and its inputs, already in the backend's layout); one intra-op torch thread; interleaved rounds; the
median. Per-(partition, backend, shape) timings are cached on disk (``TimingCache``) and reused on a rerun.
"""
from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch.utils import _pytree as pytree

from fxscale.hw.base import TimingProtocol
from fxscale.hw.targets import TorchRunner
from fxscale.hw.timing import Timing, measure_interleaved

LAYOUT_NAMES = ("contiguous", "channels_last")
# max abs diff allowed against eager, times max(1, output scale): the compilers re-associate float sums
TOLERANCE = {"eager": 1e-5, "channels_last": 1e-4, "inductor": 1e-3, "ort": 1e-3, "openvino": 1e-3, "tvm": 1e-3,
             "tensorrt": 1e-2}


def default_protocol(runs: int = 15, rounds: int = 5, warmup: int = 3) -> TimingProtocol:
    """Median of interleaved rounds, wall clock (runtimes with their own threads), inputs as given."""
    return TimingProtocol(warmup=warmup, runs=runs, batch=None, statistic="median", rounds=rounds,
                          order="alternating", clock=time.perf_counter_ns)


def to_layout(x: Any, layout: str) -> Any:
    """4-D tensors in `layout` ("contiguous" or "channels_last"); anything else unchanged."""
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        return x.contiguous(memory_format=fmt)
    return x


@dataclass
class Call:
    """A prepared call: fn(*args)."""

    fn: Callable[..., Any]
    args: tuple

    def __call__(self) -> Any:
        return self.fn(*self.args)


class _Runner(TorchRunner):
    """A prepared Call as a timing-engine runner: TorchRunner's thread and inference-mode context, no model copy."""

    def __init__(self, call: Call, threads: int) -> None:
        self.c, self.threads, self.cuda, self.clocked = call, threads, False, True

    def call(self) -> None:
        self.c()

    def run_ms(self) -> float:
        t0 = time.perf_counter_ns()
        self.c()
        return (time.perf_counter_ns() - t0) / 1e6


class CallTarget:
    """A timing-engine target whose 'models' are prepared Calls (the shape is ignored)."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads

    def prepare(self, model: Any, input_shape: Sequence[int]) -> _Runner:
        call = model if isinstance(model, Call) else Call(lambda: None, ())
        return _Runner(call, self.threads)

    def describe(self) -> dict[str, Any]:
        return {"name": "cpu-calls", "threads": self.threads}


def time_calls(calls: Sequence[Call], protocol: TimingProtocol, threads: int = 1,
               progress: Optional[Callable[[int, int], None]] = None) -> list[Timing]:
    """Time prepared calls interleaved (one engine run)."""
    if not calls:
        return []
    return measure_interleaved(CallTarget(threads), [(c, (1, 1)) for c in calls], protocol, progress=progress)


def hi_of(t: Timing) -> float:
    """The upper end of a timing: its slowest round's median."""
    vals = t.round_values()
    return max(vals) if vals else math.nan


def max_abs_diff(got: Any, want: Any) -> float:
    """Max abs diff over the tensor leaves of two outputs (inf when their structures differ)."""
    a = [t for t in pytree.tree_leaves(got) if isinstance(t, torch.Tensor)]
    b = [t for t in pytree.tree_leaves(want) if isinstance(t, torch.Tensor)]
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return math.inf
    return max((float((x.float() - y.float()).abs().max()) for x, y in zip(a, b) if x.numel()), default=0.0)


def within_tolerance(backend: str, diff: float, want: Any) -> bool:
    scale = max([1.0] + [float(t.abs().max()) for t in pytree.tree_leaves(want)
                         if isinstance(t, torch.Tensor) and t.numel()])
    return diff <= TOLERANCE.get(backend, 1e-3) * scale


def machine() -> dict[str, Any]:
    """Device description recorded in the plan."""
    from fxscale.hw.targets import cpu_model
    return {"device": "cpu", "cpu": cpu_model(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "threads": 1}


class TimingCache:
    """Per-(partition code + shapes, backend settings + versions, machine) timings in one JSON file."""

    def __init__(self, folder: Optional[Path]) -> None:
        self.path = Path(folder) / "timings.json" if folder is not None else None
        self.data: dict[str, dict[str, float]] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                self.data = {}
        self.hits = 0

    @staticmethod
    def key(signature: str, backend: dict[str, Any]) -> str:
        text = json.dumps([signature, backend, machine()["cpu"], torch.__version__], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: str) -> Optional[dict[str, float]]:
        got = self.data.get(key)
        self.hits += got is not None
        return got

    def put(self, key: str, value: dict[str, float]) -> None:
        self.data[key] = value

    def save(self) -> None:
        if self.path is None:
            return
        from fxscale.artifacts import write_text_atomic
        write_text_atomic(self.path, json.dumps(self.data, indent=0, sort_keys=True))


__all__ = ["Call", "CallTarget", "LAYOUT_NAMES", "TOLERANCE", "TimingCache", "default_protocol", "hi_of", "machine",
           "max_abs_diff", "time_calls", "to_layout", "within_tolerance"]
