"""Latency predictor hot path: microseconds per incremental width update (set_width / delta / copy) vs full predict.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/predictor_speed.py [--profile P.json] [--model resnet18] [--size 224]

Without --profile a synthetic profile (every kind of the model, a DRAM term, per-kind scales) is used: the cost of
an update does not depend on the coefficients. Prints the median over 5 repeats of 20k random updates, single thread.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fxscale  # noqa: E402
from fxscale import zoo  # noqa: E402
from fxscale.cost import cost_model  # noqa: E402
from fxscale.hw.devprofile import COLD_KIND, Calibration, DeviceProfile, KindFit  # noqa: E402
from fxscale.hw.predictor import LatencyPredictor, layer_sites  # noqa: E402


def synthetic_profile(cg: fxscale.ChannelGraph) -> DeviceProfile:
    """A profile with every kind of the model (arbitrary coefficients, DRAM term engaged)."""
    cm = cost_model(cg)
    kinds = sorted({s.kind for s in layer_sites(cg, cm, cm.sizes()) if not s.view})
    fits = {k: KindFit(k, 1e-3 * (i + 1), 1e-8, 1e-9) for i, k in enumerate(kinds)}
    cal = Calibration(scales={**{k: 1.0 for k in kinds}, "norm": 0.0, COLD_KIND: 1.0}, constant_ms=0.01)
    return DeviceProfile(target={"target": "synthetic"}, kinds=fits, channel_block=16, calibration=cal,
                         cache={"c0_bytes": 8e6, "c1_bytes": 40e6, "kappa_conv": 4e-8, "kappa_linear": 3e-8,
                                "roofline_p": 1.25})


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", help="a profile JSON (default: synthetic)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--updates", type=int, default=20000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = zoo.get_spec(args.model)
    cg = fxscale.analyze(fxscale.trace(zoo.create_model(args.model).eval(),
                                       spec.example_input(size=args.size)))
    prof = DeviceProfile.load(args.profile) if args.profile else synthetic_profile(cg)
    pred = LatencyPredictor(prof)
    t0 = time.perf_counter()
    state = pred.bind(cg)
    t_bind = time.perf_counter() - t0
    rng = random.Random(0)
    groups = cg.scalable
    ops = [(g.name, max(8, int(g.width * rng.uniform(0.5, 2.0)) // 8 * 8))
           for g in (rng.choice(groups) for _ in range(args.updates))]
    touched = statistics.fmean(len(state._c.groups[name][2]) for name, _ in ops)

    def bench(fn) -> float:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) / len(ops) * 1e6)
        return statistics.median(times)

    def run_set():
        for name, w in ops:
            state.set_width(name, w)

    def run_delta():
        for name, w in ops:
            state.delta(name, w)

    def run_try_revert():  # the greedy search's pattern: read the change, keep it only if it improves
        for name, w in ops:
            if state.delta(name, w) < 0:
                state.set_width(name, w)

    us_set, us_delta, us_try = bench(run_set), bench(run_delta), bench(run_try_revert)
    n_copy = 2000
    t = time.perf_counter()
    for _ in range(n_copy):
        state.copy()
    us_copy = (time.perf_counter() - t) / n_copy * 1e6
    plan = state.plan()
    t = time.perf_counter()
    full = pred.predict(cg, plan)
    ms_full = (time.perf_counter() - t) * 1e3
    err = abs(state.total - full) / full
    print(f"{args.model}@{args.size}: {len(cg.groups)} groups ({len(groups)} scalable), {len(state._vals)} layers, "
          f"{touched:.1f} layers re-evaluated per update on average; bind {t_bind * 1e3:.0f} ms")
    print(f"  set_width     {us_set:6.1f} us/update")
    print(f"  delta         {us_delta:6.1f} us/update (no commit)")
    print(f"  delta+commit  {us_try:6.1f} us/update (greedy try/keep pattern)")
    print(f"  copy          {us_copy:6.1f} us")
    print(f"  full predict  {ms_full:6.1f} ms (reference path); incremental total vs full: rel. diff {err:.1e}")
    return 0 if err < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
