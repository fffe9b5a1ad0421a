"""report.md of `fxscale accelerate`: methods table, per-site choices, frontier, additivity, phase-1 times."""
from __future__ import annotations

from typing import Any, Mapping


def methods_table(rows: list[Mapping[str, Any]]) -> str:
    """The methods as a Markdown table (also printed by the CLI)."""
    lines = ["| method | latency ratio (median) | ratio 95% hi | test top-1 | 95% CI | seeds |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["test_top1_ci"]
        lines.append(f"| {r['method']} | {r['latency_ratio']:.3f} | {r['latency_ratio_hi']:.3f} | "
                     f"{100 * r['test_top1']:.2f}% | [{100 * lo:.2f}, {100 * hi:.2f}] | {r['seeds']} |")
    return "\n".join(lines)


def render(results: Mapping[str, Any], cfg: Any, distilled: Mapping[str, Any], teacher: Mapping[str, Any],
           score_info: Mapping[str, Any]) -> str:
    """The whole report."""
    secs = [v["seconds"] for d in distilled.values() for v in d.values() if not v["resumed"]]
    add = results.get("additivity") or {}
    out = [f"# fxscale accelerate: {cfg.model} on {cfg.data} ({cfg.target})", "",
           f"Teacher: {results['teacher_ms']:.4f} ms at batch 1 (latency table session), val top-1 "
           f"{100 * teacher['val_acc']:.2f}%, test top-1 {100 * teacher['test_acc']:.2f}%. Budget "
           f"{cfg.latency_budget} = {results['budget_ms']:.4f} ms. L_fixed = {results['fixed_ms']:.4f} ms. "
           f"Score: `{results['score']}`. Phase 2 solved in {results['solve_s'] or float('nan'):.3f} s.", "",
           "## Methods at HANT's measured latency", "",
           "All students are fine-tuned by the same KD recipe "
           f"({cfg.finetune_epochs} epochs, Adam {cfg.finetune_lr}); `uniform` and `taylor` are the largest pruned "
           "teachers (keep fraction; widths multiples of 8) whose measured latency is not above HANT's, and so are the "
           "rungs of `hacscale` (the teacher shrunk by HACScale's Algorithm 1) and `hant_scale` (HANT at 0.75x the "
           "budget, then widened by HACScale). Latency ratios are measured end to end, interleaved with the teacher.",
           "", methods_table(results["methods"]), "",
           "## Per-site choices", "", "| site | kind | candidate | latency ms | teacher ms | score | val NMSE |",
           "|---|---|---|---|---|---|---|"]
    for r in results["sites"]:
        out.append(f"| {r['site']} | {r['kind']} | `{r['spec']}` | {r['latency_ms']:.4f} | {r['teacher_ms']:.4f} | "
                   f"{r['score']:.4g} | {r['val_nmse']:.4g} |")
    out += ["", "## Accuracy against latency (distilled candidates, no fine-tune, predicted latency)", "",
            "| budget | predicted ratio | test top-1 |", "|---|---|---|"]
    for f in results["frontier"]:
        out.append(f"| {f['budget']:.2f}x | " + (f"{f['predicted_ratio']:.3f} | {100 * f['test_top1']:.2f}% |"
                                                 if f["feasible"] else "infeasible | - |"))
    where = (f"predicted from the device profile {cfg.latency_profile}"
             if results.get("latency_source") == "predicted" else "timed on the target")
    out += ["", "## Latency model", "",
            f"Per-pair latencies {where}. Measured end to end against predicted (L_fixed + sum of candidate "
            "latencies) in the solve loop:", ""]
    for c in results["corrections"]:
        out.append(f"- iteration {c['iteration']}: predicted {c['predicted_ms']:.4f} ms, measured "
                   f"{c['measured_ms']:.4f} ms (L_fixed {c['fixed_ms']:.4f} ms)" + (" (kept)" if c.get("kept") else ""))
    if add:
        out.append(f"- additivity on {add['n']} random assemblies: mean |error| {add['mean_abs_rel_error']:.1%}, "
                   f"max {add['max_abs_rel_error']:.1%}")
    out += ["", "## Phase 1", "",
            f"{sum(len(d) for d in distilled.values())} pairs; {len(secs)} trained in this run"
            + (f", {sum(secs) / len(secs):.2f} s per pair on average (total {sum(secs):.1f} s)." if secs else "."),
            f"Scores: Spearman rank correlation of dloss and dacc over {score_info['pairs']} pairs: "
            f"{score_info['spearman_dloss_dacc']:.3f}.", "",
            "## Not done here", "",
            "- The HACScale rows (`hacscale`, `hant_scale`) fit importance laws on pruned, not retrained, copies "
            "and keep the data's resolution; HACScale's own trained samples and resolution scaling are "
            "`fxscale scale`'s job."]
    if not cfg.multi_site:
        out.append("- No multi-site candidates (one block replacing two consecutive sites): ask for them with "
                   "`--multi-site SPECS`.")
    for name, lad in results.get("ladders", {}).items():
        if lad.get("note"):
            out.append(f"- `{name}` has no row: {lad['note']}")
    out.append("")
    return "\n".join(out)


__all__ = ["methods_table", "render"]
