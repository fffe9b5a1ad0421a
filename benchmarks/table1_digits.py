"""Table I on the embedded digits data: a VGG-style and a ResNet-style CNN, tight and loose budgets, all methods.

    python benchmarks/table1_digits.py [--seeds 5] [--train-fraction 0.25] [--out benchmarks/results/table1_digits]

Trains on a reduced split (so methods separate), several training seeds (one data split), times every model
interleaved on the local CPU (ONNX Runtime, 1 thread) and writes one JSON per (model, budget) run plus a combined
Markdown/CSV (see benchmarks/table1_common.py). Digits nets run at 20-60 us: overhead dominates the timings, so the
latency ratios here measure rounding and runtime overhead more than compute; see table1_glyphs.py for >= 1 ms nets.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from table1_common import run_table

from fxscale.scaling.pipeline import METHOD_NAMES

BUDGETS = {"tight": "1.05x", "loose": "1.5x"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits_vgg,digits_resnet")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--train-fraction", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--stride", type=int, default=10, help="kernels per greedy step (paper and default: 10)")
    ap.add_argument("--methods", default=",".join(METHOD_NAMES))
    ap.add_argument("--budgets", default="tight,loose", help="tight, loose, or ratios like 1.25x")
    ap.add_argument("--out", default="benchmarks/results/table1_digits")
    ap.add_argument("--work", default=None, help="stage caches and weights (default OUT/work)")
    args = ap.parse_args()
    methods = tuple(m for m in args.methods.split(",") if m in METHOD_NAMES)
    runs = [(model, BUDGETS.get(b, b), dict(data="digits", data_kw={"train_fraction": args.train_fraction},
                                             memory_budget="3x", epochs=args.epochs, seeds=tuple(range(args.seeds)),
                                             stride=args.stride, methods=methods))
            for model in args.models.split(",") for b in args.budgets.split(",")]
    run_table("table1_digits", "Table I on digits (ONNX Runtime CPU, 1 thread)", runs, Path(args.out),
              Path(args.work) if args.work else None)


if __name__ == "__main__":
    main()
