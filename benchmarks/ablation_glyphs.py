"""The allocation ablation on the generated `glyphs` data (font-split test set, nets of about 1 ms per image).

    python benchmarks/ablation_glyphs.py [--seeds 5] [--epochs 30] [--budgets 1.5x] [--aligns 1,8] \
        [--out benchmarks/results/ablation]

hacscale vs uniform@hacres vs random@hacres at HACScale's resolution (see benchmarks/ablation_common.py) on the CIFAR
VGG11 of table1_cifar10.py at width --width, 36 classes, --size px inputs rendered from 128 px glyphs. Writes
ablation_glyphs.md / .json; per-run stage caches and weights go to OUT/work (not committed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ablation_common import run_ablation
from table1_cifar10 import CifarVGG


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
    ap.add_argument("--stride", type=int, default=10)
    ap.add_argument("--aligns", default="1,8")
    ap.add_argument("--budgets", default="1.5x")
    ap.add_argument("--memory-budget", default="3x")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--max-rounds", type=int, default=60)
    ap.add_argument("--out", default="benchmarks/results/ablation")
    ap.add_argument("--name", default="ablation_glyphs", help="results file stem")
    ap.add_argument("--work", default=None, help="stage caches and weights (default OUT/work)")
    args = ap.parse_args()
    settings = dict(data="glyphs", data_kw={"size": args.size, "per_class": args.per_class},
                    memory_budget=args.memory_budget, epochs=args.epochs, search_epochs=args.search_epochs,
                    sample_epochs=args.sample_epochs, samples=args.samples, seeds=tuple(range(args.seeds)),
                    stride=args.stride, runs=args.runs, max_rounds=args.max_rounds, batch_size=64, lr=0.05)
    runs = [(args.model, b, {**settings, "align": int(a)}) for b in args.budgets.split(",")
            for a in args.aligns.split(",")]
    factory = (lambda _m: CifarVGG(width=args.width, num_classes=36)) if args.model == "glyphs_vgg11" else None
    run_ablation(args.name, f"Allocation ablation on glyphs ({args.size} px, {args.per_class}/class, ONNX Runtime "
                 "CPU, 1 thread)", runs, Path(args.out), Path(args.work) if args.work else None, factory)


if __name__ == "__main__":
    main()
