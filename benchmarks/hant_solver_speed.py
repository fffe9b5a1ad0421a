"""HANT phase 2 solve time: `fxscale.hant.solver.solve` (HiGHS MILP) on synthetic sites x candidates tables.

    OMP_NUM_THREADS=1 python benchmarks/hant_solver_speed.py [--sizes 10x10,30x30,60x60,30x197] [--seeds 5] [--k 5]

Each instance: per-site candidate latencies drawn log-normally around a per-site base, scores falling as
candidates get faster (score = -(base / latency)^0.7 * noise, the shape of a distillation-loss table), one
two-site candidate per pair of neighbouring sites with --multi, and the budget at 30% / 60% of the way from the
fastest to the slowest assembly. Prints, per size and budget, the median and max over seeds of the wall time of
one solve (k=1, including validation, the MILP, re-verification and the LP-relaxation bound), of k=--k diverse
solutions, and of the greedy and random baselines, plus the median LP gap and the baselines' score shortfall.
The target in issue 15 is under 1 s for 30 sites x 30 candidates.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fxscale.hant.select import select_greedy, select_random  # noqa: E402
from fxscale.hant.solver import Option, Problem, best_cover, evaluate, solve  # noqa: E402


def instance(n_sites: int, n_cand: int, seed: int, multi: bool) -> Problem:
    rng = np.random.default_rng(seed)
    opts = []
    for s in range(n_sites):
        base = rng.lognormal(0.0, 0.5)
        lat = base * rng.lognormal(-0.5, 0.6, size=n_cand)
        score = -((base / lat) ** 0.7) * rng.lognormal(0.0, 0.3, size=n_cand) * 1e-2
        opts += [Option(f"s{s}c{c}", (s,), float(score[c]), float(lat[c]), float(rng.uniform(1e3, 1e5)))
                 for c in range(n_cand)]
    if multi:
        for s in range(n_sites - 1):
            opts.append(Option(f"m{s}", (s, s + 1), float(-rng.uniform(0.01, 0.05)), float(rng.lognormal(-0.5, 0.5))))
    return Problem(tuple(f"site{s}" for s in range(n_sites)), tuple(opts), fixed_latency=float(n_sites) * 0.1)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10x10,30x30,60x60,30x197")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--multi", action="store_true", help="add a two-site candidate for every neighbouring pair")
    args = ap.parse_args()
    print(f"{'sites x cand':>12} {'budget':>6} {'solve med/max s':>16} {f'k={args.k} med s':>10} "
          f"{'lp gap':>8} {'greedy s':>8} {'greedy short':>12} {'random s':>8} {'random short':>12}")
    for size in args.sizes.split(","):
        n_sites, n_cand = (int(v) for v in size.split("x"))
        for frac in (0.3, 0.6):
            rows: dict[str, list[float]] = {k: [] for k in ("t1", "tk", "gap", "tg", "sg", "tr", "sr")}
            for seed in range(args.seeds):
                p = instance(n_sites, n_cand, seed, args.multi)
                fast = evaluate(p, best_cover(p, lambda o: o.latency)[1]).latency
                slow = evaluate(p, best_cover(p, lambda o: -o.latency)[1]).latency
                budget = fast + frac * (slow - fast)
                t1, (best,) = timed(lambda: solve(p, budget))
                tk, _ = timed(lambda: solve(p, budget, k=args.k))
                tg, greedy = timed(lambda: select_greedy(p, budget))
                tr, rand = timed(lambda: select_random(p, budget, seed=seed))
                scale = abs(best.score) or 1.0
                for key, val in (("t1", t1), ("tk", tk), ("gap", best.stats.lp_gap / scale), ("tg", tg),
                                 ("sg", (best.score - greedy.score) / scale), ("tr", tr),
                                 ("sr", (best.score - rand.score) / scale)):
                    rows[key].append(val)
            med = {k: statistics.median(v) for k, v in rows.items()}
            print(f"{size:>12} {frac:>6.1f} {med['t1']:>8.3f}/{max(rows['t1']):<7.3f} {med['tk']:>10.3f} "
                  f"{med['gap']:>8.2%} {med['tg']:>8.3f} {med['sg']:>12.2%} {med['tr']:>8.3f} {med['sr']:>12.2%}")


if __name__ == "__main__":
    main()
