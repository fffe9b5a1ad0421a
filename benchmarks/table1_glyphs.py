"""Table I on the generated `glyphs` data (36 classes, font-split test set): accuracy-latency frontier over budgets.

    python benchmarks/table1_glyphs.py [--seeds 5] [--budgets 1.05x,1.25x,1.5x,2x] [--size 32] \
        [--out benchmarks/results/table1_glyphs]

The default net is the CIFAR VGG11 of table1_cifar10.py at width 1/2 on 32 px inputs, whose batch-1 latency on
one CPU thread (ONNX Runtime) is about a millisecond or more, so the timings measure compute rather than call
overhead; `--model digits_resnet` runs the small zoo net instead. Glyph images are rendered at 128 px and resized
to the plan's input, so a larger resolution really sees more. Writes one JSON per (model, budget) run, a combined
Markdown/CSV and frontier_<model>.png (see benchmarks/table1_common.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from table1_cifar10 import CifarVGG
from table1_common import run_table

from fxscale.scaling.pipeline import METHOD_NAMES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="glyphs_vgg11", help="glyphs_vgg11 (CIFAR VGG11 at --width) or a zoo name")
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--search-epochs", type=int, default=10)
    ap.add_argument("--sample-epochs", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--budgets", default="1.05x,1.25x,1.5x,2x")
    ap.add_argument("--methods", default=",".join(METHOD_NAMES))
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--out", default="benchmarks/results/table1_glyphs")
    ap.add_argument("--work", default=None, help="stage caches and weights (default OUT/work)")
    args = ap.parse_args()
    methods = tuple(m for m in args.methods.split(",") if m in METHOD_NAMES)
    settings = dict(data="glyphs", data_kw={"size": args.size, "per_class": args.per_class}, memory_budget="3x",
                    epochs=args.epochs, search_epochs=args.search_epochs, sample_epochs=args.sample_epochs,
                    samples=args.samples, seeds=tuple(range(args.seeds)), methods=methods, runs=args.runs,
                    batch_size=64, lr=0.05)
    runs = [(args.model, b, settings) for b in args.budgets.split(",")]
    factory = (lambda _m: CifarVGG(width=args.width, num_classes=36)) if args.model == "glyphs_vgg11" else None
    run_table("table1_glyphs", f"Table I on glyphs ({args.size} px, {args.per_class}/class, ONNX Runtime CPU, "
              "1 thread)", runs, Path(args.out), Path(args.work) if args.work else None, factory)


if __name__ == "__main__":
    main()
