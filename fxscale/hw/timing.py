"""The one timing engine: `measure_interleaved(target, items, protocol)` carries out a TimingProtocol.

Every timing in fxscale goes through it: `Target.measure` (one item), `compare_interleaved` (A against B with a
ratio interval), `fxscale.scaling.measure.measure_many` and the profiler's `RoundTimer`. The schedule: prepare each
item and run its warm-up calls (timed with the protocol's clock, never recorded); split each item's runs into
`rounds` near-equal rounds; in every round time the empty call first (when overhead is subtracted), then every
item in the protocol's order; summarize each item's rounds with the protocol's statistic, minus the empty call's.
"""
from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from dataclasses import replace as dc_replace
from typing import Any

from torch import nn

from fxscale.errors import FxscaleError, ProfileError, TargetError
from fxscale.hw.base import (
    Clock,
    LatencyStats,
    TimingProtocol,
    round_statistic,
    summarize,
    with_batch,
)

Sampler = Callable[[int], list[float]]  # n -> the latencies (ms) of n consecutive calls
Item = tuple[Any, Sequence[int]]  # (model or .onnx path, input shape)
OnError = Callable[[int, FxscaleError], None]
EngineProgress = Callable[[int, int], None]  # (done, total): total = 2 * items (prepared, then timed)
Progress = Callable[[str, int, int], None]  # RoundTimer's (stage, done, total)

__all__ = ["Progress", "RatioInterval", "RoundTimer", "Timing", "empty_call", "make_sampler", "measure_interleaved",
           "median_ratio_interval", "resolve_clock", "round_orders", "round_sizes", "summarize", "use_cpu_clock"]


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class RatioInterval:
    """Ratio of two timings: the median of the per-round ratios and a distribution-free interval for it.

    [low, high] are order statistics of the per-round ratios chosen so that they cover the median ratio with
    probability `confidence` (binomial, no distribution assumed; the achieved coverage when there are too few rounds
    for the requested one). `ratios` are in round order.
    """

    ratio: float
    low: float
    high: float
    confidence: float
    ratios: tuple[float, ...]

    def contains(self, value: float) -> bool:
        """Whether `value` lies in [low, high]."""
        return self.low <= value <= self.high


def median_ratio_interval(ratios: Sequence[float], confidence: float = 0.95) -> RatioInterval:
    """Median of `ratios` and the narrowest order-statistic interval covering it with at least `confidence`."""
    if not 0.0 < confidence < 1.0:
        raise TargetError(f"confidence must be in (0, 1), got {confidence!r}")
    vals = sorted(r for r in ratios if not math.isnan(r))
    if not vals:
        return RatioInterval(math.nan, math.nan, math.nan, 0.0, tuple(ratios))
    n = len(vals)

    def coverage(k: int) -> float:  # P(vals[k-1] <= true median <= vals[n-k]) = 1 - 2 P(Bin(n, 1/2) <= k-1)
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2 ** n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return RatioInterval(float(statistics.median(vals)), vals[k - 1], vals[n - k], max(coverage(k), 0.0),
                         tuple(ratios))


@dataclass(frozen=True)
class Timing:
    """One item's timed runs, per round (ms, in round order), and its statistic minus the subtracted overhead."""

    rounds: tuple[tuple[float, ...], ...]
    statistic: str
    overhead_ms: float = 0.0  # the empty call's statistic, subtracted from `value` (0 when not subtracted)

    @property
    def samples(self) -> list[float]:
        """All timed runs (ms), in round order, overhead not subtracted."""
        return [v for r in self.rounds for v in r]

    @property
    def round_sizes(self) -> list[int]:
        """Timed runs per round."""
        return [len(r) for r in self.rounds]

    @property
    def raw(self) -> float:
        """The statistic of the runs, overhead not subtracted (nan when the item failed)."""
        return summarize(self.rounds, self.statistic) if self.rounds else math.nan

    @property
    def value(self) -> float:
        """The statistic minus the overhead, at least 0 (nan when the item failed)."""
        return max(self.raw - self.overhead_ms, 0.0) if self.rounds else math.nan

    def round_values(self) -> list[float]:
        """Per round: the round's mean ("mean") or median, minus the overhead, at least 0."""
        return [max(round_statistic(r, self.statistic) - self.overhead_ms, 0.0) for r in self.rounds if r]

    def ratio_to(self, base: Timing, confidence: float = 0.95) -> RatioInterval:
        """self / base per round (both measured in the same rounds), their median and its interval."""
        ratios = [a / b if b > 0 else math.nan for a, b in zip(self.round_values(), base.round_values())]
        return median_ratio_interval(ratios, confidence)

    def to_stats(self, warmup: int, device: str, settings: dict[str, Any] | None = None) -> LatencyStats:
        """LatencyStats of the runs minus the overhead (TargetError when there are none)."""
        samples = [max(v - self.overhead_ms, 0.0) for v in self.samples] if self.overhead_ms else self.samples
        extra = {"overhead_ms": self.overhead_ms} if self.overhead_ms else {}
        return LatencyStats.from_samples(samples, warmup, device, {**(settings or {}), **extra}, self.round_sizes)


# ------------------------------------------------------------------------------------------------ schedule
def round_sizes(runs: int, rounds: int) -> list[int]:
    """Split `runs` timed runs into at most `rounds` near-equal, non-empty chunks (larger ones first)."""
    rounds = max(1, min(rounds, runs))
    return [runs // rounds + (1 if i < runs % rounds else 0) for i in range(rounds)]


def round_orders(n: int, protocol: TimingProtocol) -> list[list[int]]:
    """The order of the n items in each of the protocol's rounds."""
    rng = random.Random(protocol.seed)
    out = []
    for k in range(protocol.rounds):
        order = list(range(n))
        if protocol.order == "alternating" and k % 2:
            order.reverse()
        elif protocol.order == "rotating" and n:
            order = order[k % n:] + order[:k % n]
        elif protocol.order == "shuffled":
            rng.shuffle(order)
        out.append(order)
    return out


def empty_call() -> Item:
    """The empty call whose cost is subtracted: an identity model on a 1x1x1x1 input."""
    return nn.Identity(), (1, 1, 1, 1)


def make_sampler(target: Any, model: Any, shape: Sequence[int], protocol: TimingProtocol) -> tuple[Sampler, bool]:
    """(`n -> ms samples`, prepared): a prepared runner timed with protocol.clock around each call (CUDA runners
    time themselves with events), or, for a target without prepare(), its measure() with `n` runs, which warms up
    inside every call."""
    if hasattr(target, "prepare"):
        runner = target.prepare(model, with_batch(shape, protocol.batch))
        call = getattr(runner, "call", None)
        if call is None or not getattr(runner, "clocked", True):
            return runner.sample, True
        clock: Clock = protocol.clock
        active = getattr(runner, "active", nullcontext)

        def sample(n: int) -> list[float]:
            out = []
            with active():
                for _ in range(n):
                    t0 = clock()
                    call()
                    out.append((clock() - t0) / 1e6)
            return out
        return sample, True
    batch = protocol.batch if protocol.batch is not None else int(shape[0])
    inner = dc_replace(protocol, rounds=1, batch=batch, subtract_overhead=False, budget_ms=0.0)
    return (lambda n: list(target.measure(model, shape, dc_replace(inner, runs=n)).samples_ms)), False


def _runs(sample: Sampler, warm: list[float], protocol: TimingProtocol) -> int:
    """Timed runs of an item: protocol.runs, or with a budget clamp(budget / median of the last warm-ups)."""
    if not protocol.budget_ms:
        return protocol.runs
    est = statistics.median(warm[-3:] or sample(3))
    return max(protocol.runs, min(protocol.max_runs, int(protocol.budget_ms / max(est, 1e-3))))


def _prepare(target: Any, item: Item, protocol: TimingProtocol) -> tuple[Sampler, list[int]]:
    """The item's sampler, warmed up, and its runs per round."""
    model, shape = item
    sample, prepared = make_sampler(target, model, shape, protocol)
    warm = sample(protocol.warmup) if prepared and protocol.warmup else []
    return sample, round_sizes(_runs(sample, warm, protocol), protocol.rounds)


def measure_interleaved(target: Any, items: Sequence[Item], protocol: TimingProtocol, *,
                        on_error: OnError | None = None, progress: EngineProgress | None = None,
                        empty: Item | None = None) -> list[Timing]:
    """Time every (model, input shape) of `items` on `target` in the protocol's interleaved rounds.

    A failing item (FxscaleError while preparing or warming it up) raises, or with `on_error` is reported as
    on_error(index, error) and gets a Timing without rounds (value nan). `empty` replaces the identity empty call.
    """
    total = 2 * len(items)
    prepared: list[tuple[Sampler, list[int]] | None] = []
    for i, item in enumerate(items):
        try:
            prepared.append(_prepare(target, item, protocol))
        except FxscaleError as err:
            if on_error is None:
                raise
            on_error(i, err)
            prepared.append(None)
        if progress:
            progress(i + 1, total)
    ref = _prepare(target, empty or empty_call(), protocol) if protocol.subtract_overhead else None
    got: list[list[tuple[float, ...]]] = [[] for _ in items]
    ref_got: list[tuple[float, ...]] = []
    for k, order in enumerate(round_orders(len(items), protocol)):
        if ref is not None and k < len(ref[1]):
            ref_got.append(tuple(ref[0](ref[1][k])))
        for j in order:
            p = prepared[j]
            if p is not None and k < len(p[1]):
                got[j].append(tuple(p[0](p[1][k])))
        if progress:
            progress(len(items) + (k + 1) * len(items) // protocol.rounds, total)
    overhead = summarize(ref_got, protocol.statistic) if ref is not None else 0.0
    return [Timing(tuple(g), protocol.statistic, overhead) for g in got]


# ------------------------------------------------------------------------------------------------ clocks
def use_cpu_clock(target: Any, clock: str) -> bool:
    """Whether to time with the thread CPU clock: "thread", or "auto" on a single-threaded target."""
    if clock not in ("auto", "thread", "wall"):
        raise ProfileError(f"clock must be 'auto', 'thread' or 'wall', got {clock!r}")
    return clock == "thread" or (clock == "auto" and target.describe().get("threads") == 1)


def resolve_clock(target: Any, clock: str) -> Clock:
    """time.thread_time_ns where use_cpu_clock says so, else time.perf_counter_ns."""
    # With one intra-op thread the runtime computes on the calling thread, so its CPU time is the latency without
    # the time other processes hold the core: on a shared 2-core machine wall-clock medians of ms-long runs are
    # inflated 2-3x by preemption, microsecond kernels are not, which would bias the whole-model calibration.
    return time.thread_time_ns if use_cpu_clock(target, clock) else time.perf_counter_ns


# ------------------------------------------------------------------------------------------------ profiler rounds
class RoundTimer:
    """The profiler's timing: measure_interleaved in chunks, with a per-stage run budget; failures are collected."""

    def __init__(self, target: Any, settings: Any, progress: Progress | None) -> None:
        self.target, self.s, self.progress = target, settings, progress
        self.cpu_clock = use_cpu_clock(target, settings.clock)
        self.statistic = getattr(settings, "statistic", "median")
        try:
            self.protocol = TimingProtocol(
                warmup=5, runs=max(1, settings.min_runs), batch=None, statistic=self.statistic,
                rounds=max(1, settings.rounds), order="alternating", subtract_overhead=True, max_runs=400,
                clock=resolve_clock(target, settings.clock))
        except TargetError as err:
            raise ProfileError(str(err)) from err
        self.overheads: list[float] = []
        self.failures: list[str] = []

    def run(self, items: Sequence[Item], budget_ms: float, stage: str, chunk: int = 32,
            subtract: bool = True) -> list[float]:
        """Statistic (ms) per (model, input shape), minus the call overhead if subtract (nan where the target failed)."""
        protocol = dc_replace(self.protocol, budget_ms=float(budget_ms))
        total = 2 * len(items)
        out: list[float] = []
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]

            def failed(i: int, err: FxscaleError, part: Sequence[Item] = part) -> None:
                model, shape = part[i]
                self.failures.append(f"{stage}: {type(model).__name__}{list(shape)}: {err}")

            def report(done: int, _total: int, start: int = start) -> None:
                if self.progress:
                    self.progress(stage, 2 * start + done, total)

            timings = measure_interleaved(self.target, part, protocol, on_error=failed, progress=report)
            self.overheads.append(timings[0].overhead_ms if timings else 0.0)
            out += [t.value if subtract else t.raw for t in timings]
        return out

    @property
    def overhead(self) -> float:
        """Median call overhead (ms) over all batches."""
        return statistics.median(self.overheads) if self.overheads else 0.0
