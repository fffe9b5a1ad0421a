"""Interleaved timing of batches of models on a target, with the thread CPU clock on single-threaded targets."""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from fxscale.errors import FxscaleError
from fxscale.hw.base import MeasureProtocol
from fxscale.hw.devprofile import ProfileError

Progress = Callable[[str, int, int], None]


def use_cpu_clock(target: Any, clock: str) -> bool:
    """Whether to time with the thread CPU clock: "thread", or "auto" on a single-threaded target."""
    if clock not in ("auto", "thread", "wall"):
        raise ProfileError(f"clock must be 'auto', 'thread' or 'wall', got {clock!r}")
    return clock == "thread" or (clock == "auto" and target.describe().get("threads") == 1)


def cpu_clock_sampler(runner: Any) -> Optional[Callable[[int], list[float]]]:
    """`n -> ms samples` timed with the calling thread's CPU clock (ORT sessions, torch CPU models), else None."""
    # With one intra-op thread the runtime computes on the calling thread, so its CPU time is the latency without
    # the time other processes hold the core: on a shared 2-core machine wall-clock medians of ms-long runs are
    # inflated 2-3x by preemption, microsecond kernels are not, which would bias the whole-model calibration.
    clock = time.thread_time_ns
    session, feed = getattr(runner, "session", None), getattr(runner, "feed", None)
    if session is not None and feed is not None:
        def sample(n: int) -> list[float]:
            out = []
            for _ in range(n):
                c0 = clock()
                session.run(None, feed)
                out.append((clock() - c0) / 1e6)
            return out
        return sample
    model, x = getattr(runner, "model", None), getattr(runner, "x", None)
    if model is not None and isinstance(x, torch.Tensor) and x.device.type == "cpu":
        def sample_torch(n: int) -> list[float]:
            out = []
            with runner.active():
                for _ in range(n):
                    c0 = clock()
                    model(x)
                    out.append((clock() - c0) / 1e6)
            return out
        return sample_torch
    return None


def summarize(rounds: list[list[float]], statistic: str = "median") -> float:
    """Median of all runs, or ("fastest_round") the median of the fastest round."""
    if statistic == "fastest_round":
        return fastest_round([statistics.median(r) for r in rounds])
    return statistics.median([v for r in rounds for v in r])


def fastest_round(round_medians: list[float]) -> float:
    """The fastest round's median: co-tenant slowdowns (caches, memory bandwidth, SMT siblings) only add time."""
    return min(round_medians)


class RoundTimer:
    """Interleaved rounds over a batch of models; per item a statistic of its runs, minus the call overhead."""

    def __init__(self, target: Any, settings: Any, progress: Optional[Progress]) -> None:
        self.target, self.s, self.progress = target, settings, progress
        self.cpu_clock = use_cpu_clock(target, settings.clock)
        self.statistic = getattr(settings, "statistic", "median")
        if self.statistic not in ("median", "fastest_round"):
            raise ProfileError(f"statistic must be 'median' or 'fastest_round', got {self.statistic!r}")
        self.overheads: list[float] = []
        self.failures: list[str] = []

    def _sampler(self, model: Any, shape: tuple) -> Callable[[int], list[float]]:
        if hasattr(self.target, "prepare"):
            runner = self.target.prepare(model, shape)
            sample = (cpu_clock_sampler(runner) if self.cpu_clock else None) or runner.sample
            sample(2)
            return sample
        target = self.target
        return lambda n: target.measure(model, shape, MeasureProtocol(warmup=1, runs=n, statistic="median")
                                        ).samples_ms

    def run(self, items: Sequence[tuple[Any, tuple]], budget_ms: float, stage: str, chunk: int = 32,
            subtract: bool = True) -> list[float]:
        """Median ms per (model, input shape), minus the call overhead if subtract (nan where the target failed)."""
        out: list[float] = []
        done = 0
        for start in range(0, len(items), chunk):
            part = items[start:start + chunk]
            samplers: list[Optional[Callable[[int], list[float]]]] = []
            for model, shape in part:
                try:
                    samplers.append(self._sampler(model, shape))
                except FxscaleError as e:
                    self.failures.append(f"{stage}: {type(model).__name__}{list(shape)}: {e}")
                    samplers.append(None)
                done += 1
                if self.progress:
                    self.progress(stage, done, len(items) * 2)
            ref = self._sampler(nn.Identity(), (1, 1, 1, 1))
            est = [statistics.median(s(3)) if s else 0.0 for s in samplers]
            runs = [max(self.s.min_runs, min(400, int(budget_ms / max(e, 1e-3)))) for e in est]
            got: list[list[list[float]]] = [[] for _ in part]  # per item: the runs of each round
            ref_got: list[list[float]] = []
            rounds = max(1, self.s.rounds)
            for r in range(rounds):
                order = range(len(part)) if r % 2 == 0 else reversed(range(len(part)))
                ref_got.append(ref(9))
                for j in order:
                    if samplers[j] is not None:
                        got[j].append(samplers[j](max(1, math.ceil(runs[j] / rounds))))
            overhead = summarize(ref_got, self.statistic)
            self.overheads.append(overhead)
            sub = overhead if subtract else 0.0
            out += [max(summarize(g, self.statistic) - sub, 0.0) if g else float("nan") for g in got]
            done += len(part)
            if self.progress:
                self.progress(stage, done, len(items) * 2)
        return out

    @property
    def overhead(self) -> float:
        """Median call overhead (ms) over all batches."""
        return statistics.median(self.overheads) if self.overheads else 0.0
