"""The one timing engine (fxscale.hw.timing.measure_interleaved) against fake targets and a fake clock.

Nothing here reads a real clock for an assertion: fake runners advance a fake nanosecond counter by a known cost.
"""
from __future__ import annotations

import itertools
import math
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from fxscale.errors import ProfileError, TargetError
from fxscale.hw.base import (
    PAPER_PROTOCOL,
    STATISTICS,
    LatencyStats,
    MeasureProtocol,
    TimingProtocol,
    summarize,
)
from fxscale.hw.targets import ABResult, TorchTarget, compare_interleaved
from fxscale.hw.timing import (
    RoundTimer,
    Timing,
    measure_interleaved,
    median_ratio_interval,
    round_orders,
    round_sizes,
)
from fxscale.scaling.measure import measure_many

SHAPE = (1, 3, 8, 8)
EMPTY_MS = 0.5


class FakeClock:
    """A nanosecond counter that only moves when a fake runner advances it."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns

    def advance_ms(self, ms: float) -> None:
        self.ns += round(ms * 1e6)


class FakeRunner:
    """call() logs its id and costs `cost` ms (cold calls 100x, noise relative, both optional) on the fake clock."""

    def __init__(self, ident: str, cost: float, clock: FakeClock, log: list[str], cold: int = 0,
                 noise: float = 0.0, rng: random.Random | None = None) -> None:
        self.ident, self.cost, self.clock, self.log = ident, cost, clock, log
        self.cold, self.noise, self.rng, self.calls = cold, noise, rng, 0

    def call(self) -> None:
        self.log.append(self.ident)
        self.calls += 1
        ms = self.cost * (100.0 if self.calls <= self.cold else 1.0)
        if self.noise:
            ms *= 1.0 + self.rng.uniform(-self.noise, self.noise)
        self.clock.advance_ms(ms)

    def sample(self, n: int) -> list[float]:  # only used by runners that time themselves (not `clocked`)
        raise AssertionError("a clocked runner must be timed by the engine's clock")


class FakeTarget:
    """prepare() gives FakeRunners for {"id", "cost"} models; nn.Identity (the empty call) costs EMPTY_MS."""

    name = "fake"

    def __init__(self, clock: FakeClock, cold: int = 0, noise: float = 0.0, seed: int = 0) -> None:
        self.clock, self.cold, self.noise = clock, cold, noise
        self.rng = random.Random(seed)
        self.log: list[str] = []
        self.shapes: list[tuple[int, ...]] = []

    def prepare(self, model: Any, shape: tuple[int, ...]) -> FakeRunner:
        self.shapes.append(tuple(shape))
        if isinstance(model, nn.Identity):
            return FakeRunner("empty", EMPTY_MS, self.clock, self.log, self.cold, self.noise, self.rng)
        if model.get("fail"):
            raise TargetError(f"cannot prepare {model['id']}")
        return FakeRunner(model["id"], model["cost"], self.clock, self.log, self.cold, self.noise, self.rng)

    def measure(self, model: Any, input_shape: Any, protocol: MeasureProtocol = PAPER_PROTOCOL) -> LatencyStats:
        raise AssertionError("targets with prepare() are timed through their runners")

    def describe(self) -> dict[str, Any]:
        return {"device": "fake device", "threads": 1}


def item(ident: str, cost: float = 1.0, **kw: Any) -> tuple[dict, tuple[int, ...]]:
    return {"id": ident, "cost": cost, **kw}, SHAPE


def proto(clock: FakeClock, **kw: Any) -> TimingProtocol:
    return TimingProtocol(**{"warmup": 0, "runs": 6, "rounds": 3, "statistic": "median", "clock": clock, **kw})


# ------------------------------------------------------------------------------------------------ schedule
def test_calls_are_interleaved_round_by_round_as_declared():
    clock = FakeClock()
    target = FakeTarget(clock)
    timings = measure_interleaved(target, [item("a"), item("b"), item("c")], proto(clock, warmup=2))
    warm = ["a", "a", "b", "b", "c", "c"]  # each item warmed up right after it is prepared
    rounds = [["a", "a", "b", "b", "c", "c"], ["c", "c", "b", "b", "a", "a"], ["a", "a", "b", "b", "c", "c"]]
    assert target.log == warm + [x for r in rounds for x in r]
    assert [t.round_sizes for t in timings] == [[2, 2, 2]] * 3


@pytest.mark.parametrize(("order", "expected"), [
    ("alternating", [[0, 1, 2], [2, 1, 0], [0, 1, 2], [2, 1, 0]]),
    ("rotating", [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]),
    ("fixed", [[0, 1, 2]] * 4)])
def test_round_orders(order, expected):
    assert round_orders(3, TimingProtocol(rounds=4, order=order)) == expected


def test_shuffled_order_is_a_seeded_permutation_per_round():
    orders = round_orders(5, TimingProtocol(rounds=6, order="shuffled", seed=3))
    assert all(sorted(o) == list(range(5)) for o in orders) and len({tuple(o) for o in orders}) > 1
    assert orders == round_orders(5, TimingProtocol(rounds=6, order="shuffled", seed=3))
    clock = FakeClock()
    target = FakeTarget(clock)
    measure_interleaved(target, [item(str(i)) for i in range(5)],
                        proto(clock, runs=6, rounds=6, order="shuffled", seed=3))
    assert [[int(x) for x in target.log[5 * k:5 * k + 5]] for k in range(6)] == orders


def test_runs_split_into_rounds_and_per_round_samples_are_kept():
    assert round_sizes(7, 3) == [3, 2, 2] and round_sizes(2, 5) == [1, 1]
    clock = FakeClock()
    (t,) = measure_interleaved(FakeTarget(clock), [item("a", 2.0)], proto(clock, runs=7, rounds=3))
    assert t.rounds == ((2.0, 2.0, 2.0), (2.0, 2.0), (2.0, 2.0)) and t.value == 2.0


def test_warmup_calls_are_not_recorded():
    clock = FakeClock()
    target = FakeTarget(clock, cold=3)  # the first 3 calls of every runner cost 100x
    timings = measure_interleaved(target, [item("a", 1.0), item("b", 2.0)], proto(clock, warmup=3, runs=4,
                                                                                   statistic="mean"))
    assert target.log.count("a") == 3 + 4
    assert [t.samples for t in timings] == [[1.0] * 4, [2.0] * 4]
    assert [t.value for t in timings] == [1.0, 2.0]


def test_targets_without_prepare_warm_up_inside_each_measure_call():
    class MeasureOnly:
        name = "measure-only"

        def __init__(self) -> None:
            self.calls: list[tuple[str, int, int]] = []

        def measure(self, model, input_shape, protocol=PAPER_PROTOCOL):
            self.calls.append((model["id"], protocol.warmup, protocol.runs))
            return LatencyStats.from_samples([model["cost"]] * protocol.runs, protocol.warmup, "fake")

        def describe(self):
            return {"device": "fake"}

    target = MeasureOnly()
    stats = measure_many(target, [{"id": "a", "cost": 1.0}, {"id": "b", "cost": 4.0}], [SHAPE, SHAPE],
                         MeasureProtocol(warmup=2, runs=5, statistic="median"), rounds=2)
    assert target.calls == [("a", 2, 3), ("b", 2, 3), ("b", 2, 2), ("a", 2, 2)]
    assert [s.median for s in stats] == [1.0, 4.0] and [s.round_sizes for s in stats] == [[3, 2], [3, 2]]


# ------------------------------------------------------------------------------------------------ overhead
def test_overhead_subtraction_subtracts_the_measured_empty_call():
    clock = FakeClock()
    target = FakeTarget(clock)
    timings = measure_interleaved(target, [item("a", 2.0), item("b", 3.0)],
                                  proto(clock, warmup=1, subtract_overhead=True))
    assert [t.overhead_ms for t in timings] == [EMPTY_MS, EMPTY_MS]
    assert [t.raw for t in timings] == [2.0, 3.0]
    assert [t.value for t in timings] == [2.0 - EMPTY_MS, 3.0 - EMPTY_MS]
    assert (1, 1, 1, 1) in target.shapes  # the empty call: an identity model on a 1x1x1x1 input
    after_warmup = target.log[3:]
    assert [after_warmup[6 * k] for k in range(3)] == ["empty"] * 3  # timed first in every round
    stats = timings[0].to_stats(1, "fake")
    assert stats.samples_ms == [2.0 - EMPTY_MS] * 6 and stats.settings["overhead_ms"] == EMPTY_MS


def test_no_overhead_subtraction_times_no_empty_call():
    clock = FakeClock()
    target = FakeTarget(clock)
    (t,) = measure_interleaved(target, [item("a", 2.0)], proto(clock))
    assert "empty" not in target.log and t.overhead_ms == 0.0 and t.value == 2.0


def test_custom_empty_call():
    clock = FakeClock()
    (t,) = measure_interleaved(FakeTarget(clock), [item("a", 2.0)], proto(clock, subtract_overhead=True),
                               empty=item("nop", 0.25))
    assert t.overhead_ms == 0.25 and t.value == 1.75


def test_budget_sets_runs_from_the_warmup_estimate():
    clock = FakeClock()
    timings = measure_interleaved(FakeTarget(clock), [item("slow", 2.0), item("fast", 0.1)],
                                  proto(clock, warmup=3, runs=4, rounds=2, budget_ms=20.0, max_runs=50))
    assert [sum(t.round_sizes) for t in timings] == [10, 50]


def test_failed_item_is_reported_or_raised():
    clock = FakeClock()
    failures = []
    timings = measure_interleaved(FakeTarget(clock), [item("a"), item("bad", fail=True)], proto(clock),
                                  on_error=lambda i, e: failures.append((i, str(e))))
    assert failures == [(1, "cannot prepare bad")] and timings[0].value == 1.0 and math.isnan(timings[1].value)
    with pytest.raises(TargetError, match="cannot prepare bad"):
        measure_interleaved(FakeTarget(clock), [item("a"), item("bad", fail=True)], proto(clock))


# ------------------------------------------------------------------------------------------------ statistics
def test_one_statistic_vocabulary():
    assert STATISTICS == ("mean", "median", "fastest_round")
    rounds = [[3.0, 3.0, 9.0], [1.0, 2.0, 1.0]]
    assert summarize(rounds, "mean") == pytest.approx(19 / 6)
    assert summarize(rounds, "median") == 2.5
    assert summarize(rounds, "fastest_round") == 1.0
    stats = LatencyStats.from_samples([v for r in rounds for v in r], 0, "x", round_sizes=[3, 3])
    assert [stats.value(s) for s in STATISTICS] == [summarize(rounds, s) for s in STATISTICS]
    for s in STATISTICS:
        TimingProtocol(statistic=s)


@pytest.mark.parametrize("bad", ["p50", "min", "max", "average"])
def test_bad_statistic_is_a_target_error_naming_statistic(bad):
    with pytest.raises(TargetError, match="statistic"):
        TimingProtocol(statistic=bad)
    with pytest.raises(TargetError, match="statistic"):
        summarize([[1.0]], bad)
    with pytest.raises(TargetError, match="statistic"):
        LatencyStats.from_samples([1.0], 0, "x").value(bad)
    with pytest.raises(TargetError, match="statistic"):  # the profiler's timer speaks the same vocabulary
        RoundTimer(FakeTarget(FakeClock()), SimpleNamespace(clock="wall", statistic=bad, min_runs=4, rounds=2), None)


@pytest.mark.parametrize(("kw", "field"), [({"rounds": 0}, "rounds"), ({"order": "random"}, "order"),
                                           ({"clock": 5}, "clock"), ({"subtract_overhead": 1}, "subtract_overhead"),
                                           ({"budget_ms": -1.0}, "budget_ms"), ({"max_runs": 0}, "max_runs"),
                                           ({"warmup": 1.5}, "warmup"), ({"batch": 0}, "batch")])
def test_bad_protocol_field_is_a_target_error_naming_it(kw, field):
    with pytest.raises(TargetError, match=f"timing protocol {field} must"):
        TimingProtocol(**kw)


def test_measure_protocol_is_the_timing_protocol():
    assert MeasureProtocol is TimingProtocol
    p = MeasureProtocol(warmup=2, runs=10, statistic="median")
    assert (p.rounds, p.order, p.subtract_overhead, p.batch) == (5, "alternating", False, 1)


# ------------------------------------------------------------------------------------------------ ratios
def test_median_ratio_interval_order_statistics():
    ci = median_ratio_interval([9.0, 1.0, 5.0, 3.0, 7.0, 2.0, 8.0, 4.0, 6.0], 0.95)
    assert (ci.ratio, ci.low, ci.high) == (5.0, 2.0, 8.0)  # n=9: [x(2), x(8)] covers the median with 96 %
    assert ci.confidence == pytest.approx(1 - 2 * 10 / 512) and ci.ratios[0] == 9.0
    few = median_ratio_interval([1.2, 1.0, 1.1], 0.95)  # too few rounds: the range, with its real coverage
    assert (few.low, few.high, few.confidence) == (1.0, 1.2, 0.75)
    with pytest.raises(TargetError, match="confidence"):
        median_ratio_interval([1.0], 1.0)


@pytest.mark.parametrize("seed", range(5))
def test_compare_interleaved_interval_contains_the_true_ratio(seed):
    clock = FakeClock()
    target = FakeTarget(clock, noise=0.2, seed=seed)
    protocol = TimingProtocol(warmup=2, runs=45, statistic="median", clock=clock)
    res = compare_interleaved(target, {"id": "a", "cost": 2.0}, {"id": "b", "cost": 3.0}, SHAPE, protocol,
                              rounds=9)
    assert isinstance(res, ABResult) and len(res.ratios) == 9 and res.confidence >= 0.95
    assert res.ratio_low <= 1.5 <= res.ratio_high
    assert 1.0 < res.ratio_low < res.ratio_high  # noisy rounds give a real interval that still tells B is slower
    assert res.a.runs == res.b.runs == 45 and res.a.round_sizes == [5] * 9


def test_ratio_helper_uses_per_round_values_minus_overhead():
    a = Timing(((2.0, 2.0), (2.5, 2.5)), "mean", overhead_ms=0.5)
    b = Timing(((3.5, 3.5), (4.5, 4.5)), "mean", overhead_ms=0.5)
    ci = b.ratio_to(a)
    assert ci.ratios == (2.0, 2.0) and ci.ratio == 2.0 and ci.contains(2.0)


# ------------------------------------------------------------------------------------------------ users of the engine
def test_round_timer_runs_on_the_engine():
    class SelfTimed:  # a runner that times itself (like CUDA events): no call()
        def __init__(self, cost: float) -> None:
            self.cost = cost

        def sample(self, n: int) -> list[float]:
            return [self.cost] * n

    class Target:
        name = "self-timed"

        def prepare(self, model, shape):
            if isinstance(model, nn.Identity):
                return SelfTimed(0.25)
            if model.get("fail"):
                raise TargetError("no kernel")
            return SelfTimed(model["cost"])

        def describe(self):
            return {"device": "fake", "threads": 4}

    progress = []
    timer = RoundTimer(Target(), SimpleNamespace(clock="auto", statistic="fastest_round", min_runs=4, rounds=2),
                       lambda stage, done, total: progress.append((stage, done, total)))
    assert not timer.cpu_clock  # 4 threads: wall clock
    items = [item("a", 1.0), item("bad", fail=True), item("c", 3.0)]
    out = timer.run(items, budget_ms=8.0, stage="kernels", chunk=2)
    assert out[0] == 0.75 and math.isnan(out[1]) and out[2] == 2.75
    assert timer.overhead == 0.25 and timer.failures == ["kernels: dict[1, 3, 8, 8]: no kernel"]
    assert progress[-1] == ("kernels", 6, 6)
    assert timer.run(items[:1], budget_ms=8.0, stage="calibration", subtract=False) == [1.0]
    with pytest.raises(ProfileError, match="clock"):
        RoundTimer(Target(), SimpleNamespace(clock="cpu", statistic="median", min_runs=4, rounds=2), None)


def test_real_target_is_timed_with_the_protocols_clock():
    ticks = itertools.count(0, 1_000_000)  # every clock reading 1 ms after the previous one
    protocol = TimingProtocol(warmup=1, runs=4, rounds=2, statistic="median", clock=lambda: next(ticks))
    stats = TorchTarget().measure(nn.Linear(4, 4), (1, 4), protocol)
    assert stats.samples_ms == [1.0] * 4 and stats.round_sizes == [2, 2]
    assert stats.settings["order"] == "alternating" and stats.settings["statistic"] == "median"
    assert torch.get_num_threads() >= 1
