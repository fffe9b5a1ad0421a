"""Shared driver of the Table I benchmarks: run `fxscale scale` per (model, budget), collect auditable results.

For every run it keeps the compact results (every method with its per-seed accuracies, measured latency ratio and
interval, MACs and FLOPs, search compute; the alpha search, the importance fits, the measured back-offs, the paired
bootstrap comparisons) as `<out>/<model>_<budget>.json`, and writes `<out>/<name>.md` (one Table I per run),
`<out>/<name>.csv` (one line per method and run) and, with more than one budget, `<out>/frontier_<model>.png`
(test top-1 against the measured latency ratio, one line per method over the budgets). Trained weights, ONNX
files and stage caches stay in the work folder (default: a `work/` folder beside the results, not committed).
"""
from __future__ import annotations

import csv
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fxscale.scaling.pipeline import Pipeline, ScaleConfig  # noqa: E402
from fxscale.scaling.report import table  # noqa: E402

KEEP = ("alpha", "search", "methods", "hacscale_choice", "comparisons", "importance", "latency_model", "budget",
        "conventions", "baseline_predicted_ms")


def compact(summary: dict[str, Any]) -> dict[str, Any]:
    """The auditable part of a run's results.json (config included, model files left out)."""
    return {"config": summary["config"], **{k: summary[k] for k in KEEP if k in summary}}


def csv_rows(model: str, budget: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One CSV line per method."""
    out = []
    for r in summary["methods"]:
        lo, hi = r["test_top1_ci"]
        out.append({"model": model, "budget": budget, "method": r["method"], "stride": r.get("stride"),
                    "align": r.get("align"), "params": r["params"], "macs": r["macs"], "flops": r["flops"],
                    "latency_ms": r["latency_ms"], "latency_ratio": r["latency_ratio"],
                    "latency_ratio_lo": r["latency_ratio_lo"], "latency_ratio_hi": r["latency_ratio_hi"],
                    "within_budget": r.get("within_budget"), "gflops_per_s": r["utilization"],
                    "val_top1": r["val_top1"], "test_top1": r["test_top1"], "test_top1_lo": lo, "test_top1_hi": hi,
                    "seeds": len(r["test_acc"]), "search_epochs": r["search_compute"]["epochs"],
                    "search_wall_s": r["search_compute"]["wall_s"]})
    return out


def frontier(rows: Sequence[dict[str, Any]], model: str, path: Path) -> None:
    """Test top-1 against the measured latency ratio over the budgets, one line per method."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["model"] == model))
    for i, m in enumerate(methods):
        pts = sorted(((r["latency_ratio"], 100 * r["test_top1"], r) for r in rows
                      if r["model"] == model and r["method"] == m), key=lambda p: p[0])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        yerr = [[max(0.0, y - 100 * p[2]["test_top1_lo"]) if p[2]["test_top1_lo"] == p[2]["test_top1_lo"] else 0.0
                 for y, p in zip(ys, pts)],
                [max(0.0, 100 * p[2]["test_top1_hi"] - y) if p[2]["test_top1_hi"] == p[2]["test_top1_hi"] else 0.0
                 for y, p in zip(ys, pts)]]
        ax.errorbar(xs, ys, yerr=yerr, marker="osD^vP*Xh"[i % 9], capsize=2, label=m,
                    color="black" if m == "baseline" else None)
    ax.set_xlabel("measured latency / baseline")
    ax.set_ylabel("test top-1 (%), mean over seeds (95% CI)")
    ax.set_title(f"Accuracy-latency frontier over budgets: {model}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run_table(name: str, title: str, runs: Sequence[tuple[str, str, dict[str, Any]]], out: Path,
              work: Optional[Path] = None, model_factory: Optional[Callable[[str], Any]] = None) -> list[dict]:
    """Run every (model, budget, ScaleConfig settings) and write the results files; returns the CSV rows."""
    out.mkdir(parents=True, exist_ok=True)
    work = work or out / "work"
    md = [f"# {title} ({platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')})", "",
          "Each run: `fxscale scale` with the settings in its JSON (`config`). Latency ratios are measured "
          "interleaved against the baseline with a 95% interval; accuracies are means over seeds with a 95% "
          "bootstrap CI; FLOPs = 2 x MACs (the paper's FLOPs column is MACs).", ""]
    rows: list[dict[str, Any]] = []
    for model, budget, settings in runs:
        cfg = ScaleConfig(model=model, latency_budget=budget, progress=False, **settings)
        t0 = time.perf_counter()
        net = model_factory(model) if model_factory else None
        summary = Pipeline(cfg, work / f"{model}_{budget}", model=net).run()
        (out / f"{model}_{budget}.json").write_text(json.dumps(compact(summary), indent=1, default=float))
        md += [f"## {model}, latency budget {budget}", "", table(summary["methods"]), "",
               f"alpha = {summary['alpha']['alpha']}, s = {summary['alpha'].get('s', cfg.flops_scale):.3f}; "
               f"HACScale row chosen on validation: {summary['hacscale_choice']['chosen']}; "
               f"{time.perf_counter() - t0:.0f} s", ""]
        print("\n".join(md[-5:]), flush=True)
        rows += csv_rows(model, budget, summary)
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    with open(out / f"{name}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    for model in dict.fromkeys(r["model"] for r in rows):
        if len({r["budget"] for r in rows if r["model"] == model}) > 1:
            frontier(rows, model, out / f"frontier_{model}.png")
    print(f"wrote {out}/{name}.md, .csv and one JSON per run")
    return rows


__all__ = ["compact", "csv_rows", "frontier", "run_table"]
