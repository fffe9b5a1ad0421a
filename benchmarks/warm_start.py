"""Warm-start scaling: the same widened plan fine-tuned from the trained baseline vs trained from scratch.

    python benchmarks/warm_start.py [--data digits,glyphs] [--seeds 5] [--epochs 20] [--fraction 0.25]
                                    [--widen 1.5 | --plan plan.json] [--out benchmarks/results/warm_start]

Per dataset and seed: train the baseline from scratch for E epochs; apply the plan (a uniform x1.5 widening by
default, or a HACScale plan.json from `fxscale scale`) and train it
  - warm: from the trained baseline with init="preserve", k = round(fraction * E) epochs, the warm recipe
    (peak lr x0.2, 1 warm-up epoch, cosine), with noise 0 (pure Net2Net) and with the calibrated noise
    (largest with <= 2% output drift), and optionally with distillation from the baseline (--distill W);
  - scratch-k: from scratch for the same k epochs (the scratch recipe over k epochs);
  - scratch-full: from scratch for E epochs.
Reports test accuracy (mean and 95% bootstrap CI over seeds, fxscale.scaling.stats), the paired difference of
each warm variant against scratch-full, epochs and wall time per method, the calibrated noise and its output
drift, and val-accuracy-vs-epoch curves (png). Writes OUT/warm_start.{md,csv,json} and OUT/curves_<data>.png.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import fxscale  # noqa: E402
from fxscale.data import get_dataset, loader  # noqa: E402
from fxscale.plan import ScalingPlan  # noqa: E402
from fxscale.scaling.stats import mean_ci, paired_bootstrap  # noqa: E402
from fxscale.scaling.warm import WarmRecipe, calibrate_noise, output_drift, teacher_for, warm_start  # noqa: E402
from fxscale.train import TrainConfig, evaluate, train  # noqa: E402
from fxscale.zoo import create_model  # noqa: E402

DATA_KW = {"digits": {}, "glyphs": {"size": 8, "per_class": 50}}  # small glyphs: seconds per epoch on one core


def scratch_model(base_gm: Any, plan: ScalingPlan, seed: int) -> Any:
    """The plan's model, freshly initialised from `seed` (as the pipeline builds from-scratch runs)."""
    new = fxscale.transform(base_gm, plan, init="reinit", resolution_mode="input")
    torch.manual_seed(seed)
    for m in new.modules():
        if m is not new and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return new.train()


def run(model: Any, bundle: Any, cfg: TrainConfig, res: Any, teacher: Any = None) -> dict[str, Any]:
    """Train and test one model; returns the curve, test accuracy, epochs and wall time."""
    t0 = time.perf_counter()
    r = train(model, bundle, cfg, res, teacher=teacher)
    return {"val_curve": r.val_acc, "test_acc": evaluate(model, bundle, "test", res), "epochs": r.epochs,
            "seconds": time.perf_counter() - t0}


def one_seed(name: str, bundle: Any, plan_arg: Any, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Every method for one seed."""
    x0 = torch.zeros(1, *bundle.input_shape)
    net = create_model(args.model, num_classes=bundle.num_classes, in_channels=bundle.input_shape[0])
    torch.manual_seed(seed)
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    base = fxscale.trace(net.eval(), x0)
    plan = plan_arg(fxscale.analyze(base))
    res = tuple(plan.resolution or base.meta["fxscale"]["resolution"])
    scratch = TrainConfig(epochs=args.epochs, batch_size=64, lr=args.lr, schedule="cosine", seed=seed, device="cpu")
    out: dict[str, Any] = {"baseline": run(base.train(), bundle, scratch, None)}
    base.eval()
    recipe = WarmRecipe(fraction=args.fraction)
    warm_cfg = recipe.train_config(scratch)
    k = warm_cfg.epochs
    x = next(iter(loader(bundle, "val", 64, res, shuffle=False)))[0]
    cal = calibrate_noise(base, plan, x, target=args.drift, seed=seed)
    exact = warm_start(base, plan, seed=seed)
    out["calibration"] = {**cal.to_dict(), "exact_drift": output_drift(exact, base, x).to_dict()
                          if plan.resolution is None else None}
    variants = {"warm-noise0": (0.0, 0.0), "warm-noise": (cal.noise, 0.0)}
    if args.distill > 0:
        variants["warm-noise-kd"] = (cal.noise, args.distill)
    for tag, (noise, kd) in variants.items():
        model = warm_start(base, plan, noise=noise, seed=seed).train()
        cfg = WarmRecipe(fraction=args.fraction, distill=kd).train_config(scratch)
        out[tag] = run(model, bundle, cfg, res, teacher=teacher_for(base, plan) if kd > 0 else None)
        out[tag]["start_test_acc"] = evaluate(warm_start(base, plan, noise=noise, seed=seed), bundle, "test", res)
    out["scratch-k"] = run(scratch_model(base, plan, seed), bundle, TrainConfig(**{**scratch.__dict__, "epochs": k}),
                           res)
    out["scratch-full"] = run(scratch_model(base, plan, seed), bundle, scratch, res)
    print(f"[{name} seed {seed}] " + ", ".join(f"{t} {r['test_acc']:.4f}" for t, r in out.items() if "test_acc" in r)
          + f"; noise {cal.noise}", flush=True)
    return out


def summarize(name: str, runs: list[dict[str, Any]], args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """CSV rows and Markdown lines for one dataset."""
    methods = [m for m in runs[0] if "test_acc" in runs[0][m]]
    ref = [r["scratch-full"]["test_acc"] for r in runs]
    rows, md = [], [f"## {name} ({args.model}, {len(runs)} seeds, E = {args.epochs}, k = "
                    f"{runs[0]['warm-noise']['epochs']})", "",
                    "| method | epochs | test acc (mean, 95% CI) | minus scratch-full (mean, 95% CI, p) | s/run |",
                    "|---|---:|---|---|---:|"]
    for m in methods:
        acc = [r[m]["test_acc"] for r in runs]
        mean, lo, hi = mean_ci(acc)
        d = paired_bootstrap(acc, ref) if m != "scratch-full" else None
        secs = sum(r[m]["seconds"] for r in runs) / len(runs)
        diff = f"{d.mean * 100:+.2f} [{d.lo * 100:+.2f}, {d.hi * 100:+.2f}], p={d.p_value:.3f}" if d else "-"
        md.append(f"| {m} | {runs[0][m]['epochs']} | {mean * 100:.2f} [{lo * 100:.2f}, {hi * 100:.2f}] | {diff} | "
                  f"{secs:.1f} |")
        rows.append({"data": name, "method": m, "epochs": runs[0][m]["epochs"], "test_acc_mean": mean,
                     "ci_lo": lo, "ci_hi": hi, "diff_vs_scratch_full": d.mean if d else 0.0,
                     "diff_lo": d.lo if d else 0.0, "diff_hi": d.hi if d else 0.0,
                     "p_value": d.p_value if d else float("nan"), "seconds_per_run": secs})
    noise = [r["calibration"]["noise"] for r in runs]
    start = [r["warm-noise"]["start_test_acc"] for r in runs]
    exact = [r["calibration"]["exact_drift"]["rel"] for r in runs if r["calibration"]["exact_drift"]]
    md += ["", f"Calibrated noise (largest with <= {args.drift:.0%} relative output drift): {sorted(set(noise))}; "
           f"test accuracy right after the warm start (0 epochs): {mean_ci(start)[0] * 100:.2f}%; "
           f"noise-free warm start vs baseline, max relative output drift: {max(exact) if exact else 'n/a'}."]
    best_warm = max((r for r in rows if r["method"].startswith("warm")), key=lambda r: r["test_acc_mean"])
    if len(runs) < 2:
        verdict = "cannot be judged from one seed (no interval)"
    elif best_warm["diff_hi"] < 0:
        verdict = "does NOT reach scratch-full accuracy: the CI of the paired difference lies below 0"
    elif best_warm["diff_lo"] > 0:
        verdict = "beats scratch-full accuracy: the CI of the paired difference lies above 0"
    else:
        verdict = "reaches scratch-full accuracy within noise: the CI of the paired difference contains 0"
    md += ["", f"Verdict: {best_warm['method']} with {best_warm['epochs']} of {args.epochs} epochs "
           f"({best_warm['epochs'] / args.epochs:.0%}) {verdict} (paired difference "
           f"{best_warm['diff_vs_scratch_full'] * 100:+.2f} points, 95% CI [{best_warm['diff_lo'] * 100:+.2f}, "
           f"{best_warm['diff_hi'] * 100:+.2f}]).", ""]
    return rows, md


def plot(name: str, runs: list[dict[str, Any]], path: Path) -> None:
    """Mean val accuracy vs epoch of every method; warm runs start after the baseline's epochs are spent."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, ax = plt.subplots(figsize=(7, 4.5))
    base_e = runs[0]["baseline"]["epochs"]
    for m in [m for m in runs[0] if "val_curve" in runs[0][m]]:
        curve = np.mean([r[m]["val_curve"] for r in runs], axis=0)
        xs = np.arange(1, len(curve) + 1)
        ax.plot(xs, curve * 100, marker="o" if m.startswith("warm") else None, ms=3, label=m)
    ax.set_xlabel("epochs trained (warm runs: fine-tune epochs after the trained baseline)")
    ax.set_ylabel("val accuracy (%), mean over seeds")
    ax.set_title(f"{name}: warm start vs scratch (baseline trained {base_e} epochs)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits,glyphs")
    ap.add_argument("--model", default="digits_resnet")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--widen", type=float, default=1.5)
    ap.add_argument("--plan", default=None, help="a plan JSON (e.g. a `fxscale scale` plan.json) instead of --widen")
    ap.add_argument("--drift", type=float, default=0.02, help="noise calibration target (relative output drift)")
    ap.add_argument("--distill", type=float, default=0.0, help="also run warm + KD with this weight (0: skip)")
    ap.add_argument("--out", default="benchmarks/results/warm_start")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.plan:
        fixed = ScalingPlan.from_json(Path(args.plan).read_text())
        plan_arg = lambda cg: fixed  # noqa: E731
    else:
        from fxscale.cli import uniform_plan
        plan_arg = lambda cg: uniform_plan(cg, args.widen)  # noqa: E731
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# Warm start vs scratch ({platform.machine()}, {time.strftime('%Y-%m-%d')}, 1 CPU thread)", "",
          f"Plan: {args.plan or f'uniform widen x{args.widen}'}; warm recipe: {WarmRecipe(fraction=args.fraction)}",
          f"Command: python benchmarks/warm_start.py --data {args.data} --seeds {args.seeds} --epochs {args.epochs} "
          f"--fraction {args.fraction}{f' --distill {args.distill}' if args.distill else ''}", ""]
    rows, raw = [], {}
    t0 = time.perf_counter()
    for name in [d for d in args.data.split(",") if d]:
        bundle = get_dataset(name, **DATA_KW.get(name, {}))
        runs = [one_seed(name, bundle, plan_arg, args, s) for s in range(args.seeds)]
        r, lines = summarize(name, runs, args)
        rows += r
        md += lines
        raw[name] = runs
        plot(name, runs, out / f"curves_{name}.png")
        print("\n".join(lines), flush=True)
    md.append(f"Total wall time {time.perf_counter() - t0:.0f} s.")
    (out / "warm_start.md").write_text("\n".join(md) + "\n")
    (out / "warm_start.json").write_text(json.dumps(raw, indent=1, default=float))
    with open(out / "warm_start.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out / 'warm_start.md'}, warm_start.csv, warm_start.json, curves_*.png")


if __name__ == "__main__":
    main()
