"""fxscale trace + analyze + transform against Torch-Pruning's DependencyGraph build + prune, interleaved.

Each round times, on the same model and input, in alternating order:
  A: fxscale.trace + fxscale.analyze + fxscale.transform(plan: every scalable group x0.7, init="prune")
  B: torch_pruning MagnitudePruner(model copy, input, pruning_ratio=0.3) (builds the DependencyGraph) + step()
and the per-round ratio A/B is summarised as its median with a distribution-free 95% interval. One thread,
OMP_WAIT_POLICY=PASSIVE, warm-up rounds first. The goal of the architecture issue: median ratio <= 0.5 on
resnet50 at 224 px.

    python benchmarks/speed_vs_torch_pruning.py --model resnet50 --size 224 --rounds 11
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", help="fxscale.zoo model name")
    p.add_argument("--size", type=int, default=224, help="input side")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--keep", type=float, default=0.7, help="width multiplier of every scalable group")
    args = p.parse_args(argv)
    import torch

    import fxscale
    from fxscale import zoo
    from fxscale.hw.timing import median_ratio_interval
    try:
        import torch_pruning as tp
    except ImportError:
        print("speed_vs_torch_pruning: error: torch_pruning is not installed (pip install -e '.[bench]')",
              file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    model = zoo.create_model(args.model).eval()
    x = torch.randn(1, 3, args.size, args.size)
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]

    def run_fxscale() -> dict[str, float]:
        t0 = time.perf_counter()
        gm = fxscale.trace(model, x)
        t1 = time.perf_counter()
        cg = fxscale.analyze(gm)
        t2 = time.perf_counter()
        widths = {g.name: max(g.divisor, int(g.width * args.keep) // g.divisor * g.divisor) for g in cg.scalable}
        fxscale.transform(gm, fxscale.ScalingPlan(widths=widths), init="prune", cg=cg)
        t3 = time.perf_counter()
        return {"trace": t1 - t0, "analyze": t2 - t1, "transform": t3 - t2, "total": t3 - t0}

    def run_tp() -> dict[str, float]:
        m = copy.deepcopy(model)  # Torch-Pruning prunes in place: a fresh copy per round, not timed
        t0 = time.perf_counter()
        pruner = tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           pruning_ratio=1 - args.keep, ignored_layers=heads)
        t1 = time.perf_counter()
        pruner.step()
        t2 = time.perf_counter()
        return {"dependency_graph": t1 - t0, "prune": t2 - t1, "total": t2 - t0}

    for _ in range(args.warmup):
        run_fxscale()
        run_tp()
    rows_a, rows_b = [], []
    for r in range(args.rounds):
        first, second = (run_fxscale, run_tp) if r % 2 == 0 else (run_tp, run_fxscale)
        out = {first: first(), second: second()}
        rows_a.append(out[run_fxscale])
        rows_b.append(out[run_tp])
    ratio = median_ratio_interval([a["total"] / b["total"] for a, b in zip(rows_a, rows_b)])

    def med(rows: list[dict[str, float]], key: str) -> float:
        vals = sorted(row[key] for row in rows)
        return vals[len(vals) // 2]

    print(f"{args.model} at {args.size} px, x{args.keep} widths, {args.rounds} interleaved rounds, 1 thread, "
          f"torch {torch.__version__}, torch_pruning {tp.__version__}")
    print("fxscale  (median s): trace {:.3f}  analyze {:.3f}  transform {:.3f}  total {:.3f}".format(
        *(med(rows_a, k) for k in ("trace", "analyze", "transform", "total"))))
    print("TP 1.6   (median s): dependency graph {:.3f}  prune {:.3f}  total {:.3f}".format(
        *(med(rows_b, k) for k in ("dependency_graph", "prune", "total"))))
    print(f"ratio fxscale / Torch-Pruning: {ratio.ratio:.2f} (95% interval {ratio.low:.2f}-{ratio.high:.2f}, "
          f"coverage {ratio.confidence:.2f}); goal <= 0.5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
