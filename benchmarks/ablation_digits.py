"""The allocation ablation on digits: hacscale vs uniform@hacres vs random@hacres at HACScale's resolution.

    python benchmarks/ablation_digits.py [--seeds 5] [--epochs 20] [--budgets 3x] [--aligns 1,8] \
        [--norms group,producer] [--out benchmarks/results/ablation]

A budget where HACScale adds width (3x latency, 3x params, stride 10: the paper's Algorithm 1; at 2x digits' alpha
search leaves HACScale about one width step), widths aligned to 1 (the paper) and to 8 (ORT/MLAS), several
training seeds on one reduced data split, ONNX Runtime on one CPU thread. Writes ablation_digits.md / .json (see
benchmarks/ablation_common.py); per-run stage caches and weights go to OUT/work (not committed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ablation_common import run_ablation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits_resnet")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--train-fraction", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--search-epochs", type=int, default=8)
    ap.add_argument("--sample-epochs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--stride", type=int, default=10)
    ap.add_argument("--aligns", default="1,8", help="width alignments, one run each (1: the paper; 8: ORT/MLAS blocks)")
    ap.add_argument("--budgets", default="3x", help="latency budgets, e.g. 1.5x,2x")
    ap.add_argument("--norms", default="group", help="importance normalisations, one run each: group, producer "
                    "(per-producer against per-group is then compared per seed)")
    ap.add_argument("--memory-budget", default="3x")
    ap.add_argument("--flops-scale", type=float, default=2.0, help="the alpha search's s (upper end when searched)")
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--max-rounds", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/results/ablation")
    ap.add_argument("--work", default=None, help="stage caches and weights (default OUT/work)")
    args = ap.parse_args()
    settings = dict(data="digits", data_kw={"train_fraction": args.train_fraction}, memory_budget=args.memory_budget,
                    epochs=args.epochs, search_epochs=args.search_epochs, sample_epochs=args.sample_epochs,
                    samples=args.samples, seeds=tuple(range(args.seeds)), stride=args.stride,
                    runs=args.runs, max_rounds=args.max_rounds, flops_scale=args.flops_scale)
    runs = [(m, b, {**settings, "align": int(a), "importance_norm": n}) for m in args.models.split(",")
            for b in args.budgets.split(",") for a in args.aligns.split(",") for n in args.norms.split(",")]
    run_ablation("ablation_digits", "Allocation ablation on digits (ONNX Runtime CPU, 1 thread)", runs,
                 Path(args.out), Path(args.work) if args.work else None)


if __name__ == "__main__":
    main()
