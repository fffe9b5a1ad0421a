"""Table I warm: `fxscale scale --start trained` against `--start scratch`, the same command otherwise.

    python benchmarks/warm_table1.py [--data digits] [--data-kw JSON] [--seeds 5] [--epochs 20]
                                     [--warm-fraction 0.25] [--out benchmarks/results/warm_table1]
                                     [--runs DIR]  # where the two run folders go (default: OUT/runs)
                                     [--reuse]     # only summarise the runs already in DIR

Both runs get the same model, data, target, latency and memory budgets (each measured against the same baseline,
with every method's measured back-off), seeds and epochs E. The scratch run trains every method's plan from a
fresh initialisation for E epochs; the warm run trains the baseline once for E epochs, then applies every plan
(alpha candidates, importance samples and the final methods) to it with init="preserve" and fine-tunes each for
round(fraction * E) epochs with the warm recipe (fxscale.scaling.warm). Per method the table gives both test
accuracies (mean and 95% bootstrap CI over seeds), the seed-paired difference warm − scratch (paired bootstrap),
the measured latency ratio of each run's plan, final-training epochs and wall seconds per seed, and the search
compute. The two runs search separately, so a method's plan can differ between them; the table shows both ratios.
Writes OUT/warm_table1_<data>.md and .json; each run's report.md / results.json stay in DIR/<data>_<start>/.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fxscale.scaling.stats import mean_ci, paired_bootstrap  # noqa: E402

COMMON = ["--target", "ort", "--latency-budget", "1.5x", "--memory-budget", "1.5x", "--flops-scale", "2"]


def run_scale(args: argparse.Namespace, start: str, out: Path) -> float:
    """One `fxscale scale` run (skipped when its results.json exists); returns its wall seconds."""
    if (out / "results.json").is_file():
        return float("nan")
    argv = [sys.executable, "-m", "fxscale", "scale", args.model, "--data", args.data, *COMMON,
            "--seeds", str(args.seeds), "--epochs", str(args.epochs), "--start", start, "--out", str(out)]
    if args.data_kw:
        argv += ["--data-kw", args.data_kw]
    if start == "trained":
        argv += ["--warm-fraction", str(args.warm_fraction)]
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t0


def _ci(v: list[float]) -> str:
    m, lo, hi = mean_ci([100 * a for a in v])
    return f"{m:.2f} [{lo:.2f}, {hi:.2f}]"


def compare(scratch: dict[str, Any], warm: dict[str, Any]) -> list[dict[str, Any]]:
    """Per method present in both runs: accuracies, paired difference, ratios and compute."""
    w_rows = {r["method"]: r for r in warm["methods"]}
    out = []
    for s in scratch["methods"]:
        w = w_rows.get(s["method"])
        if w is None:
            continue
        pd = paired_bootstrap([100 * a for a in w["test_acc"]], [100 * a for a in s["test_acc"]])
        d = {"diff": pd.mean, "lo": pd.lo, "hi": pd.hi, "p": pd.p_value}
        out.append({"method": s["method"], "scratch_acc": s["test_acc"], "warm_acc": w["test_acc"],
                    "diff": d, "scratch_ratio": [s["latency_ratio"], s["latency_ratio_lo"], s["latency_ratio_hi"]],
                    "warm_ratio": [w["latency_ratio"], w["latency_ratio_lo"], w["latency_ratio_hi"]],
                    "same_plan": s["plan"] == w["plan"], "scratch_train": s.get("train_compute"),
                    "warm_train": w.get("train_compute"), "scratch_search": s["search_compute"],
                    "warm_search": w["search_compute"]})
    return out


def markdown(rows: list[dict[str, Any]], warm: dict[str, Any], cmd: str, data: str, walls: dict[str, float]) -> str:
    cfg = warm["config"]
    bases = list(((warm.get("warm_start") or {}).get("baselines") or {}).values()) or [{}]
    lines = [f"# Table I warm vs scratch: {cfg['model']} on {data} ({time.strftime('%Y-%m-%d')}, 1 CPU thread)", "",
             f"Command: `{cmd}`", "",
             f"{len(cfg['seeds'])} seeds, E = {cfg['epochs']} epochs from scratch; warm fine-tunes "
             f"{rows[0]['warm_train']['epochs_per_seed'] if rows else '?'} epochs from its seed's baseline "
             f"({len(bases)} baselines of {bases[0].get('epochs', '?')} epochs, "
             f"{sum(b.get('seconds') or 0.0 for b in bases):.0f} s in all). Latency budget "
             f"{cfg['latency_budget']} of the measured baseline for both runs.", "",
             "| method | scratch top-1 | warm top-1 | warm − scratch (pp, 95% CI, p) | ratio scratch | ratio warm | "
             "same plan | epochs/seed scratch, warm | train s/seed scratch, warm | search epochs scratch, warm |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, st, wt = r["diff"], r["scratch_train"] or {}, r["warm_train"] or {}
        lines.append(
            f"| {r['method']} | {_ci(r['scratch_acc'])} | {_ci(r['warm_acc'])} | {d['diff']:+.2f} "
            f"[{d['lo']:+.2f}, {d['hi']:+.2f}], p={d['p']:.3f} | {r['scratch_ratio'][0]:.3f}x "
            f"[{r['scratch_ratio'][1]:.3f}, {r['scratch_ratio'][2]:.3f}] | {r['warm_ratio'][0]:.3f}x "
            f"[{r['warm_ratio'][1]:.3f}, {r['warm_ratio'][2]:.3f}] | {'yes' if r['same_plan'] else 'no'} | "
            f"{st.get('epochs_per_seed')}, {wt.get('epochs_per_seed')} | {st.get('wall_s_per_seed', 0):.1f}, "
            f"{wt.get('wall_s_per_seed', 0):.1f} | {r['scratch_search']['epochs']}, {r['warm_search']['epochs']} |")
    hac = next((r for r in rows if r["method"] == "hacscale"), None)
    if hac is not None:
        d = hac["diff"]
        verdict = ("beats" if d["lo"] > 0 else "reaches (within noise: the CI contains 0)" if d["hi"] >= 0
                   else "does NOT reach")
        frac = hac["warm_train"]["epochs_per_seed"] / max(1, hac["scratch_train"]["epochs_per_seed"])
        lines += ["", f"Verdict (hacscale): warm with {100 * frac:.0f}% of the final-training epochs {verdict} "
                  f"from-scratch accuracy (paired difference {d['diff']:+.2f} pp, 95% CI [{d['lo']:+.2f}, "
                  f"{d['hi']:+.2f}])."]
    over = [r["method"] for r in rows for k in ("scratch_ratio", "warm_ratio")
            if r["warm_ratio"] and r[k][2] > float(warm["budget"]["latency_ratio"] or "inf")]
    if over:
        lines += ["", "Upper end of the final measured ratio over the budget: " + ", ".join(sorted(set(over)))
                  + " (the final session of a loaded machine; each plan was accepted by its own measured back-off)."]
    if walls:
        lines += ["", "Wall time of the runs: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items() if v == v)
                  + "."]
    else:  # --reuse: the runs were not timed here; sum the training seconds the results record
        n = len(cfg["seeds"])
        tot = {k: sum((r[k] or {}).get("wall_s_per_seed", 0.0) * n for r in rows)
               for k in ("scratch_train", "warm_train")}
        lines += ["", f"Final-training wall time summed over methods and seeds (from results.json): scratch "
                  f"{tot['scratch_train']:.0f} s, warm {tot['warm_train']:.0f} s (plus the warm baselines above)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits_resnet")
    ap.add_argument("--data", default="digits")
    ap.add_argument("--data-kw", default=None, help="JSON object passed to --data-kw of both runs")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--warm-fraction", type=float, default=0.25)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/warm_table1"))
    ap.add_argument("--runs", type=Path, default=None, help="folder of the two runs (default: OUT/runs)")
    ap.add_argument("--reuse", action="store_true", help="only summarise the runs already in RUNS")
    args = ap.parse_args()
    runs = {start: (args.runs or args.out / "runs") / f"{args.data}_{start}" for start in ("scratch", "trained")}
    walls = {}
    for start, path in runs.items():
        if not args.reuse:
            walls[start] = run_scale(args, start, path)
    scratch, warm = (json.loads((p / "results.json").read_text()) for p in runs.values())
    rows = compare(scratch, warm)
    args.out.mkdir(parents=True, exist_ok=True)
    argv, skip = [], False  # the command that reproduces the runs (where they were kept does not matter)
    for a in sys.argv[1:]:
        if not skip and a not in ("--reuse", "--runs"):
            argv.append(a)
        skip = a == "--runs"
    cmd = "python benchmarks/warm_table1.py " + " ".join(argv)
    md = markdown(rows, warm, cmd, args.data, walls)
    (args.out / f"warm_table1_{args.data}.md").write_text(md)
    (args.out / f"warm_table1_{args.data}.json").write_text(json.dumps(rows, indent=1, default=float))
    print(md)


if __name__ == "__main__":
    main()
