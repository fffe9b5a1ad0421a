"""Issue 12's Goal figures: `fxscale optimize` on torchvision CNNs (random weights, small input) and the built-in nets.

For each model it prints, from one interleaved run: the hybrid against the best single-backend whole build and
against torch eager (the unoptimised graph), as median ratios with their 95% intervals; the method that chose the
plan; whether the GA on the measured additive model reaches the DP/MILP optimum (and, separately, whether the GA on
measured end-to-end latency ended on it); and how many conv shapes have an implementation faster than torch eager.
Each model's output folder (inference_plan.json, results.json, report.md; optimized.pt is deleted) goes to
benchmarks/results/optimize/<model>/ and a summary to benchmarks/results/optimize/summary.json.

    python benchmarks/optimize_models.py                          # the final figures (quiet machine: ~15-30 min)
    python benchmarks/optimize_models.py --quick --models digits_resnet   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0", "digits_vgg", "digits_resnet")
OUT = Path(__file__).parent / "results" / "optimize"


def build(name: str, size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    if name.startswith("digits_"):
        from fxscale import zoo
        return getattr(zoo, name)().eval(), torch.randn(1, 1, 8, 8)
    import torchvision
    torch.manual_seed(0)
    return getattr(torchvision.models, name)().eval(), torch.randn(1, 3, size, size)


def ga_on_additive_model(problem, seed: int = 0) -> dict:
    """The GA with the measured additive model as fitness (deterministic): does it reach the exact optimum?"""
    from fxscale.optimize.select import GAConfig, genetic, solve
    a, cost, method = solve(problem)
    options = [problem.options(p) for p in range(problem.shape[0])]
    best, got, _ = genetic(options, lambda batch: [problem.cost(x) for x in batch],
                           GAConfig(population=16, generations=30, seed=seed, polish=20, polish_span=3))
    reached = abs(got - cost) <= 1e-9 * max(1, cost)
    return {"exact_method": method, "exact_ms": cost, "ga_ms": got, "ga_reached": reached,
            "exact": list(a), "ga": list(best), "chain": problem.is_chain(),
            "unary": problem.unary.tolist(), "edges": [(u, v, c.tolist()) for u, v, c in problem.edges]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--size", type=int, default=64, help="input side of the torchvision models (px)")
    ap.add_argument("--backends", default="eager,channels_last,ort,openvino",
                    help="comma-separated (add inductor, tvm on a quiet machine)")
    ap.add_argument("--tune-minutes", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--max-partitions", type=int, default=12)
    ap.add_argument("--quick", action="store_true", help="few runs, no GA generations: proves the script works")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--cache-dir", default=None, help="reuse timings cached here (default: time everything afresh)")
    args = ap.parse_args()
    from fxscale.optimize import optimize
    torch.set_num_threads(1)
    kw = dict(runs=args.runs, rounds=args.rounds, ga_population=8, ga_generations=4)
    if args.quick:
        kw = dict(runs=4, rounds=3, ga_population=4, ga_generations=1)
    summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "settings": vars(args), "models": {}}
    print(f"{'model':16s} {'plan':22s} {'vs best single [95%]':34s} {'vs eager [95%]':26s} GA=DP(additive) "
          f"GA(measured)=exact convs faster")
    for name in args.models.split(","):
        model, x = build(name, args.size)
        t0 = time.time()
        res = optimize(model, x, backends=args.backends.split(","), out=Path(args.out) / name, model_name=name,
                       tune_minutes=args.tune_minutes, max_partitions=args.max_partitions,
                       cache_dir=args.cache_dir, **kw)
        (Path(args.out) / name / "optimized.pt").unlink(missing_ok=True)  # weights: large, and rebuilt by a rerun
        r = res.results
        ga = ga_on_additive_model(res.problem)
        measured_ga = (r["selection"].get("ga") or {}).get("reached_exact")
        conv = r["conv_table"].get("rows", [])
        faster = sum(1 for row in conv if row["fastest"] != "torch_default"
                     and row["impl"][row["fastest"]]["ratio_hi"] < 1.0)
        s, e = r["speedup_vs_best_single"], r["speedup_vs_eager"]
        fmt = (lambda q: f"{q['ratio']:.2f}x [{q['low']:.2f}, {q['high']:.2f}] {q['vs']}" if q else "—")
        print(f"{name:16s} {r['selection']['method'] + '/' + str(len(res.plan['partitions'])):22s} {fmt(s):34s} "
              f"{fmt(e):26s} {str(ga['ga_reached']):15s} {str(measured_ga):15s} {faster}/{len(conv)}", flush=True)
        summary["models"][name] = {"speedup_vs_best_single": s, "speedup_vs_eager": e,
                                   "plan": r["selection"]["method"], "partitions": len(res.plan["partitions"]),
                                   "ga_additive": ga, "ga_measured_reached_exact": measured_ga,
                                   "convs_faster_than_eager": faster, "conv_shapes": len(conv),
                                   "seconds": round(time.time() - t0, 1), "builds": r["builds"]}
    from fxscale.optimize.measure import machine
    summary["machine"] = machine()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
