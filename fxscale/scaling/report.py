"""Final artefacts of `fxscale scale`: plan.json, model.pt, model.onnx, results.json, report.md and plots."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from fxscale.plan import ScalingPlan
from fxscale.scaling.results import finite
from fxscale.scaling.stages import load_weights


def _pct(values: list[float]) -> str:
    vals = [100 * v for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def _ci(r: dict[str, Any]) -> str:
    lo, hi = r.get("test_top1_ci", [float("nan")] * 2)
    mean = 100 * r.get("test_top1", statistics.fmean(r["test_acc"]))
    return f"{mean:.2f}" if not finite(lo) else f"{mean:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"


def table(rows: list[dict[str, Any]]) -> str:
    """The paper's Table I columns (power needs a Jetson: see fxscale.hw.table1) as Markdown.

    MACs and FLOPs (= 2 x MACs) are both shown: the paper's "FLOPs" column counts MACs. Latency is the measured
    median and its ratio to the baseline with the 95% interval; ⚠ marks an interval whose upper end is over budget
    (never a plan identical to the baseline's: its ratio only shows the measurement's noise floor).
    """
    base = rows[0]
    b_acc = statistics.fmean(base["test_acc"])
    out = ["| Method | stride / align | Params (M) | MACs (M) | FLOPs (M) | Latency (ms) | ratio [95% CI] | "
           "Utilization (GFLOP/s) | Val top-1 (%) | Test top-1 (%) [95% CI] | Δ test |",
           "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        util = r["utilization"] / base["utilization"] if base["utilization"] else float("nan")
        flag = "" if r.get("within_budget", True) else " ⚠ over budget"
        sa = f"{r['stride']} / {r['align']}" if r.get("stride") else f"- / {r.get('align', '-')}"
        ratio = r.get("latency_ratio", r["latency_ms"] / base["latency_ms"])
        ci = f" [{r['latency_ratio_lo']:.3f}, {r['latency_ratio_hi']:.3f}]" if "latency_ratio_hi" in r else ""
        out.append(f"| {r['method']}{flag} | {sa} | {r['params'] / 1e6:.4f} | {r.get('macs', r['flops'] / 2) / 1e6:.3f} | "
                   f"{r['flops'] / 1e6:.3f} | {r['latency_ms']:.4f} | {ratio:.3f}x{ci} | "
                   f"{r['utilization']:.2f} ({util:.2f}x) | {_pct(r['val_acc'])} | {_ci(r)} | "
                   f"{100 * (statistics.fmean(r['test_acc']) - b_acc):+.2f} |")
    return "\n".join(out)


def _plots(pipe: Any, summary: dict[str, Any], tmp: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    from fxscale.scaling import plots
    cfg = pipe.cfg
    rows = summary["methods"]
    ratio = summary["budget"].get("latency_ratio")
    what = f"{cfg.model} on {cfg.data}, target {cfg.target}, {len(cfg.seeds)} seed(s)"
    plots.widths(pipe.cg.scalable, rows, pipe.resolution_of(ScalingPlan()), f"Per-group widths: {what}",
                 tmp / "widths.png")
    plots.accuracy_vs_latency(rows, ratio, f"Accuracy vs measured latency: {what}", tmp / "accuracy_vs_latency.png")
    plots.utilization(rows, f"Utilisation: {what}", tmp / "utilization.png")
    return ["widths.png", "accuracy_vs_latency.png", "utilization.png"]


def _comparisons(c: dict[str, Any]) -> list[str]:
    if "note" in c:
        return [c["note"] + "."]
    lines = [c["method"] + ".", ""]
    for fam, rows in c.items():
        if not fam.startswith("vs_"):
            continue
        lines += [f"| method − {fam[3:]} | Δ test top-1 (pp) | 95% CI | p | p (Holm) |", "|---|---:|---|---:|---:|"]
        for m, d in rows.items():
            lines.append(f"| {m} | {100 * d['diff']:+.2f} | [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}] | "
                         f"{d['p']:.3f} | {d['p_holm']:.3f}{' *' if d['reject'] else ''} |")
        lines.append("")
    return lines


def _markdown(pipe: Any, summary: dict[str, Any], plots: list[str]) -> str:
    cfg = pipe.cfg
    s, a = summary["search"], summary["alpha"]
    ratio = summary["budget"].get("latency_ratio")
    lines = [f"# fxscale scale: {cfg.model} on {cfg.data}", "",
             f"Target `{cfg.target}` ({pipe.target.describe().get('device', '?')}, threads={cfg.threads}); latency "
             f"budget {cfg.latency_budget}, memory budget {cfg.memory_budget}, s <= {cfg.flops_scale}; "
             f"{cfg.epochs} epochs x {len(cfg.seeds)} seed(s).", "",
             "Every method gets the same measured back-off on its own knobs (resolution included): a plan is "
             "accepted when the upper end of the 95% interval of its interleaved measured latency ratio to the "
             f"baseline is within the budget; rounds are added until the interval half-width is <= "
             f"{100 * cfg.ci_halfwidth:g}% of the ratio or {cfg.max_rounds} rounds. The ratios below come from one "
             "final interleaved session of all methods; ⚠ marks an upper end over budget there (a plan identical to "
             "the baseline's is never marked: its ratio shows the noise floor).", "",
             "Conventions: " + "; ".join(summary["conventions"].values()) + ".", "",
             "NeuralScale-lite is not the published NeuralScale: one simulated global pruning with fixed scores, "
             "no retraining, rescoring or architecture-descent iteration; `neuralscale` is the published method "
             "(iterative pruning of the trained baseline with rescoring and fine-tunes, architecture descent).", "",
             "## Results (Table I columns)", "", table(summary["methods"]), "",
             f"HACScale rows are chosen between on validation only: **{summary['hacscale_choice']['chosen']}** "
             "(exported as plan.json / model.*).", "", "## Statistics", ""]
    lines += _comparisons(summary["comparisons"])
    lines += ["", "## Compute (epochs trained and wall seconds spent choosing each plan, then training it)", "",
              "| method | search epochs | search wall (s) | of which measured back-off (s) | final epochs per seed | "
              "final wall per seed (s) |", "|---|---:|---:|---:|---:|---:|"]
    for r in summary["methods"]:
        c, t = r["search_compute"], r.get("train_compute") or {}
        wall = t.get("wall_s_per_seed")
        lines.append(f"| {r['method']} | {c['epochs']} | {c['wall_s']:.1f} | {c.get('backoff_wall_s', 0.0):.1f} | "
                     f"{t.get('epochs_per_seed', '-')} | {'-' if wall is None else f'{wall:.1f}'} |")
    if cfg.start == "trained":
        bases = list(((summary.get("warm_start") or {}).get("baselines") or {}).values())
        src = "--weights " + bases[0]["source"] if bases and bases[0]["epochs"] == 0 else "training here"
        lines += ["", f"Warm start: every model above is the plan applied to its seed's trained baseline with "
                  f"init=\"preserve\", fine-tuned for a fraction {cfg.warm_fraction} of the epochs; the "
                  f"{len(bases)} baseline(s) came from {src} ({bases[0]['epochs'] if bases else '?'} epochs each, "
                  f"{sum(b.get('seconds') or 0.0 for b in bases):.1f} s in all), a cost shared by every method."]
    lines += ["", f"## Alpha search (r = sqrt(s)^alpha, w = sqrt(s)^(1-alpha)); s = {a.get('s', cfg.flops_scale):.3f}"
              f"{' (largest s whose candidates all fit the budget)' if a.get('s_searched') else ''}", "",
              f"Candidates are equalised in FLOPs after rounding (tolerance {100 * a.get('flops_tol', 0):g}%). "
              f"Tie rule: {a.get('tie_rule', 'best validation')}.", "",
              "| alpha | resolution | width multiplier | FLOPs / base | within tol | val top-1 | measured ms (ties) |",
              "|---:|---|---:|---:|---|---:|---:|"]
    for c in a["candidates"]:
        lines.append(f"| {c['alpha']} | {c['plan']['resolution']} | {c.get('width_multiplier', float('nan')):.3f} | "
                     f"{c.get('flops_ratio', float('nan')):.3f} | {c.get('within_tol', '-')} | "
                     f"{100 * c.get('val_acc', float('nan')):.2f} | {c.get('measured_ms', float('nan')):.4f} |")
    lines += ["", f"Chosen alpha: **{a['alpha']}**", "", "## Importance predictor (I = a * C^b)", "",
              "| group | a | b | R² | R² (log) | samples | note |", "|---|---:|---:|---:|---:|---:|---|"]
    for g, f in summary["importance"]["fits"].items():
        lines.append(f"| {g} | {f['a']:.3g} | {f['b']:.3f} | {f['r2']:.2f} | {f['r2_log']:.2f} | {f['n']} | "
                     f"{f['note']} |")
    poor = summary["importance"].get("poorly_fit") or []
    lines += ["", f"Poorly fitted groups (log-space R² < 0.5): {', '.join(poor) if poor else 'none'}."]
    conv = (summary.get("importance_sampling") or {}).get("convergence")
    if conv:
        lines += ["", f"Importance runs converged: {conv['converged']} of {conv['judged']} judged ({conv['criterion']}; "
                      f"epochs used {conv['epochs']}, cap {conv['max_epochs'] or 'none'})."]
    lines += ["", "## Width search (Algorithm 1) and measured back-off", "",
              "| row | rule | stride | align | steps | kept | accepted ratio [95% CI] | rounds | predicted ms | "
              "params | importance added | stopped |", "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for name, r in s["rows"].items():
        m = r["backoff"]["measured"]
        acc = "n/a" if m is None else f"{m['ratio']:.3f}x [{m['low']:.3f}, {m['high']:.3f}]"
        lines.append(f"| {name} | {r['rule']} | {r['stride']} | {r['align']} | {r['steps']} | {r['steps_kept']} | "
                     f"{acc} | {'-' if m is None else m['rounds']} | {r['predicted_ms']:.4f} | {r['params']} | "
                     f"{r['importance_added']:.3g} | {r['stopped']} |")
    lines += ["", f"Start resolution {s['start']['resolution']}" + (f"; budget ratio {ratio:.3f}x." if ratio else "."),
              "", "| group | baseline | " + " | ".join(s["rows"]) + " |", "|---|---:|" + "---:|" * len(s["rows"])]
    for g in pipe.cg.scalable:
        lines.append(f"| {g.name} | {g.width} | " + " | ".join(
            str(r["plan"]["widths"].get(g.name, g.width)) for r in s["rows"].values()) + " |")
    lines.append("| resolution | " + "x".join(map(str, pipe.resolution_of(ScalingPlan()))) + " | " + " | ".join(
        "x".join(map(str, r["plan"]["resolution"] or pipe.resolution_of(ScalingPlan()))) for r in s["rows"].values())
        + " |")
    lines += ["", "## Latency model", "", "```", json.dumps(summary["latency_model"], indent=1), "```", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_outputs(pipe: Any, summary: dict[str, Any], plan: ScalingPlan, method: str = "hacscale") -> None:
    """Write every artefact into a temporary folder, then move them into the out dir together (nothing on error).

    plan.json (meta["input"]), model.pt (its input checked), model.pt2 (fxscale.load) and the ONNX metadata carry
    the input contract: shape, dtype, the data's normalisation and label count.
    """
    from fxscale.artifacts import contract_props, input_contract, staged_output, write_model_files
    from fxscale.export import export_onnx
    cfg = pipe.cfg
    dynamic = not getattr(cfg, "static_batch", False)
    with staged_output(pipe.out) as tmp:
        model = pipe.build(plan)
        model.load_state_dict(load_weights(pipe.stages / "weights" / f"{method}_s{cfg.seeds[0]}.pt"))
        model.eval()
        x = torch.randn(1, pipe.bundle.input_shape[0], *pipe.resolution_of(plan))
        contract = input_contract(x, dynamic_batch=dynamic, mean=pipe.bundle.mean, std=pipe.bundle.std,
                                  num_classes=pipe.bundle.num_classes)
        plan.meta["input"] = contract
        (tmp / "plan.json").write_text(plan.to_json())
        rep = export_onnx(model, tmp / "model.onnx", x, dynamic_batch=dynamic, metadata=contract_props(contract))
        summary["onnx"] = {"opset": rep.opset, "max_abs_diff": rep.max_abs_diff, "dynamic_batch": dynamic}
        summary["input"] = contract
        plots = _plots(pipe, summary, tmp)
        (tmp / "report.md").write_text(_markdown(pipe, summary, plots))
        problem = write_model_files(model, tmp, x, contract, {"plan": json.loads(plan.to_json()),
                                                              "model": cfg.model, "data": cfg.data}, pipe.log)
        summary["model_pt2"] = problem or "model.pt2"
        (tmp / "results.json").write_text(json.dumps(summary, indent=1, default=float))


__all__ = ["table", "write_outputs"]
