"""Table I on the embedded digits data: a VGG-style and a ResNet-style CNN, tight and loose budgets, all methods.

    python benchmarks/table1_digits.py [--seeds 3] [--train-fraction 0.25] [--out benchmarks/results/table1_digits]

Trains on a reduced split (so methods separate), several seeds (mean ± std), times every model interleaved on
the local CPU (ONNX Runtime, 1 thread) and writes one report per (model, budget) plus a combined Markdown/CSV.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fxscale.scaling.pipeline import METHOD_NAMES, Pipeline, ScaleConfig  # noqa: E402
from fxscale.scaling.report import table  # noqa: E402

BUDGETS = {"tight": "1.05x", "loose": "1.5x"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits_vgg,digits_resnet")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-fraction", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--stride", type=int, default=4, help="kernels per greedy step (paper: 10; digits nets are tiny)")
    ap.add_argument("--methods", default="uniform,resolution,depth,efficientnet,dollar,neuralscale")
    ap.add_argument("--budgets", default="tight,loose")
    ap.add_argument("--out", default="benchmarks/results/table1_digits")
    args = ap.parse_args()
    out = Path(args.out)
    rows_csv, md = [], [f"# Table I on digits ({platform.processor() or platform.machine()}, "
                        f"{time.strftime('%Y-%m-%d')}, ONNX Runtime CPU 1 thread)", ""]
    methods = tuple(m for m in args.methods.split(",") if m in METHOD_NAMES)
    for model in args.models.split(","):
        for budget in args.budgets.split(","):
            cfg = ScaleConfig(model=model, data="digits", data_kw={"train_fraction": args.train_fraction},
                              latency_budget=BUDGETS[budget], memory_budget="3x", epochs=args.epochs,
                              seeds=tuple(range(args.seeds)), stride=args.stride, methods=methods, progress=False)
            t0 = time.perf_counter()
            summary = Pipeline(cfg, out / f"{model}_{budget}").run()
            md += [f"## {model}, {budget} budget ({BUDGETS[budget]} latency)", "", table(summary["methods"]), "",
                   f"alpha = {summary['alpha']['alpha']}; {time.perf_counter() - t0:.0f} s", ""]
            print("\n".join(md[-5:]), flush=True)
            for r in summary["methods"]:
                rows_csv.append({"model": model, "budget": budget, "method": r["method"], "params": r["params"],
                                 "flops": r["flops"], "latency_ms": r["latency_ms"], "gflops_per_s": r["utilization"],
                                 "test_acc_mean": statistics.fmean(r["test_acc"]),
                                 "test_acc_std": statistics.stdev(r["test_acc"]) if len(r["test_acc"]) > 1 else 0.0})
    (out / "table1_digits.md").write_text("\n".join(md) + "\n")
    with open(out / "table1_digits.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows_csv[0]))
        w.writeheader()
        w.writerows(rows_csv)
    print(f"wrote {out}/table1_digits.md and .csv")


if __name__ == "__main__":
    main()
