"""The one timing protocol and statistic vocabulary, latency statistics and the Target protocol of every device target.

`TimingProtocol` (alias `MeasureProtocol`) says how models are timed: warm-up calls (timed, never recorded), timed runs
per model, the rounds those runs are split into and the order of the models within a round, the reported statistic
(one vocabulary: `STATISTICS`), the clock the engine reads and whether the cost of an empty call is subtracted.
`fxscale.hw.timing.measure_interleaved` carries a protocol out; `summarize` computes every statistic.
"""
from __future__ import annotations

import math
import numbers
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from fxscale.errors import TargetError

# The one statistic vocabulary: the mean or the median of all timed runs, or the median of the fastest round (robust
# to co-tenant slowdown episodes: caches, memory bandwidth and SMT siblings only ever add time).
STATISTICS = ("mean", "median", "fastest_round")
# Order of the models within each round: "alternating" (forward, then reversed: A,B / B,A, which cancels linear drift),
# "rotating" (round k starts at model k), "shuffled" (a seeded permutation per round), "fixed" (the given order).
ORDERS = ("alternating", "rotating", "shuffled", "fixed")
Clock = Callable[[], int]


@dataclass(frozen=True)
class TimingProtocol:
    """How models are timed; invalid fields raise TargetError naming the field.

    warmup: untimed-for-the-result calls per model before the first round (a target without prepare() warms up
    inside each of its measure() calls instead). runs: timed runs per model (with budget_ms: the minimum), split into
    `rounds` near-equal rounds. batch: the N of every input shape (None keeps the shapes as given). statistic: one of
    STATISTICS. order: one of ORDERS (seed drives "shuffled"). clock: a nanosecond counter the engine reads around
    each call of a prepared runner (time.perf_counter_ns; time.thread_time_ns for the thread CPU clock).
    subtract_overhead: time an empty call (identity model) at the start of every round and subtract its statistic.
    budget_ms > 0: runs per model = clamp(budget_ms / warm-up median, runs, max_runs).
    """

    warmup: int = 10
    runs: int = 50  # the paper: "averaging the latency of 50 inferences with a batch size of 1"
    batch: int | None = 1
    statistic: str = "mean"  # "mean" (paper), "median" (robust on shared machines) or "fastest_round"
    rounds: int = 5
    order: str = "alternating"
    clock: Clock = time.perf_counter_ns
    subtract_overhead: bool = False
    budget_ms: float = 0.0
    max_runs: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        """TargetError naming the first bad field."""
        for name, low in (("warmup", 0), ("runs", 1), ("batch", 1), ("rounds", 1), ("max_runs", 1)):
            value = getattr(self, name)
            if value is None and name == "batch":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise TargetError(f"timing protocol {name} must be >= {low}, got {value!r}")
        if self.statistic not in STATISTICS:
            raise TargetError(f"timing protocol statistic must be 'mean' or 'median' (of all runs) or "
                              f"'fastest_round' (median of the fastest round), got {self.statistic!r}")
        if self.order not in ORDERS:
            raise TargetError(f"timing protocol order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if not callable(self.clock):
            raise TargetError(f"timing protocol clock must be a callable returning nanoseconds, got {self.clock!r}")
        if not isinstance(self.subtract_overhead, bool):
            raise TargetError(f"timing protocol subtract_overhead must be a bool, got {self.subtract_overhead!r}")
        if not (isinstance(self.budget_ms, (int, float)) and self.budget_ms >= 0 and math.isfinite(self.budget_ms)):
            raise TargetError(f"timing protocol budget_ms must be >= 0, got {self.budget_ms!r}")
        if self.budget_ms and self.warmup < 1:
            raise TargetError("timing protocol warmup must be >= 1 when budget_ms is set (it estimates the run time)")

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings stored with results (the clock by name)."""
        return {"batch": self.batch, "statistic": self.statistic, "rounds": self.rounds, "order": self.order,
                "clock": getattr(self.clock, "__name__", repr(self.clock)), "subtract_overhead": self.subtract_overhead}


Protocol_ = TimingProtocol  # older names of the one protocol
MeasureProtocol = TimingProtocol
PAPER_PROTOCOL = TimingProtocol()


def check_statistic(statistic: str) -> str:
    """`statistic` if it is in STATISTICS, else TargetError naming 'statistic'."""
    if statistic not in STATISTICS:
        raise TargetError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    return statistic


def summarize(rounds: Sequence[Sequence[float]], statistic: str) -> float:
    """`statistic` (one of STATISTICS) of per-round samples; TargetError when there are none."""
    check_statistic(statistic)
    rounds = [r for r in rounds if len(r)]
    if not rounds:
        raise TargetError("no timing samples to summarize")
    if statistic == "fastest_round":
        return float(min(statistics.median(r) for r in rounds))
    flat = [float(v) for r in rounds for v in r]
    return float(statistics.fmean(flat) if statistic == "mean" else statistics.median(flat))


def round_statistic(samples: Sequence[float], statistic: str) -> float:
    """The per-round value behind `statistic`: the round's mean for "mean", else its median."""
    return float(statistics.fmean(samples) if check_statistic(statistic) == "mean" else statistics.median(samples))


def with_batch(input_shape: Sequence[int], batch: int | None) -> tuple[int, ...]:
    """`input_shape` (N, C, ...) with N replaced by `batch` (kept when None); TargetError for a bad shape."""
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise TargetError(f"input_shape must be (N, C, ...) with positive sizes, got {tuple(input_shape)}")
    return shape if batch is None else (batch, *shape[1:])


def _percentile(sorted_ms: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted samples."""
    if len(sorted_ms) == 1:
        return float(sorted_ms[0])
    pos = (len(sorted_ms) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return float(sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo))


@dataclass
class LatencyStats:
    """Latency of one model on one target, in milliseconds per batch (round_sizes: runs per round, if known)."""

    mean: float
    median: float
    p10: float
    p90: float
    runs: int
    warmup: int
    device: str
    settings: dict[str, Any] = field(default_factory=dict)
    samples_ms: list[float] = field(default_factory=list, repr=False)
    round_sizes: list[int] = field(default_factory=list, repr=False)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], warmup: int, device: str,
                     settings: dict[str, Any] | None = None,
                     round_sizes: Sequence[int] | None = None) -> LatencyStats:
        """Summarise raw per-run timings (ms), in round order when round_sizes is given."""
        if not samples_ms:
            raise TargetError(f"no timing samples from {device}")
        s = sorted(float(x) for x in samples_ms)
        return cls(mean=statistics.fmean(s), median=statistics.median(s), p10=_percentile(s, 10),
                   p90=_percentile(s, 90), runs=len(s), warmup=warmup, device=device,
                   settings=dict(settings or {}), samples_ms=list(samples_ms), round_sizes=list(round_sizes or []))

    def rounds(self) -> list[list[float]]:
        """The samples split by round (one round when the round sizes are unknown)."""
        if sum(self.round_sizes) != len(self.samples_ms) or not self.round_sizes:
            return [list(self.samples_ms)]
        out, start = [], 0
        for n in self.round_sizes:
            out.append(list(self.samples_ms[start:start + n]))
            start += n
        return out

    def value(self, statistic: str = "mean") -> float:
        """The protocol's statistic (one of STATISTICS); mean and median are the summary fields."""
        if check_statistic(statistic) == "fastest_round":
            return summarize(self.rounds(), statistic) if self.samples_ms else self.median
        return self.mean if statistic == "mean" else self.median

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (samples included)."""
        return asdict(self)


@runtime_checkable
class Target(Protocol):
    """A device that times a model: an nn.Module/GraphModule or a path to an .onnx file."""

    name: str

    def measure(self, model_or_onnx: Any, input_shape: Sequence[int],
                protocol: TimingProtocol = PAPER_PROTOCOL) -> LatencyStats:
        """Time one model at `input_shape` (N, C, H, W) under `protocol`."""
        ...

    def describe(self) -> dict[str, Any]:
        """Device/runtime/threads metadata stored with profiles and reports."""
        ...
