"""Shared driver of the allocation ablation (issue 11): hacscale against uniform@hacres and random@hacres.

One `fxscale scale` run per (model, budget) with methods uniform@hacres and random@hacres and only the `hacscale`
row (no align8 / cost variants), so the three rows share HACScale's resolution and the same measured back-off and
differ only in how width is allocated. Writes `<out>/<name>.json` (the auditable part of results.json: per-seed
accuracies, plans, measured ratios with intervals, back-offs, paired bootstrap comparisons with Holm) and
`<out>/<name>.md` (the table below, one per run), and prints the table.
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fxscale.scaling.pipeline import Pipeline, ScaleConfig  # noqa: E402

ROWS = ("baseline", "hacscale", "uniform@hacres", "random@hacres")
KEEP = ("config", "alpha", "search", "methods", "method_plans", "comparisons", "budget", "conventions")


def _pct(x: float) -> str:
    return "nan" if not isinstance(x, (int, float)) or math.isnan(x) else f"{100 * x:.2f}"


def _rungs(bo: Optional[dict[str, Any]]) -> str:
    """'kept / top (measured top ratio)' of a back-off record: how far the measured check pushed the plan down."""
    if not bo:
        return "—"
    top = next((c for c in bo["checks"] if c["index"] == bo["ladder"] - 1), None)
    return f"{bo['index']} / {bo['ladder'] - 1}" + (f" (top {top['ratio']:.2f})" if top else "")


def ablation_table(summary: dict[str, Any]) -> list[str]:
    """Markdown lines: plan, measured ratio [CI], test top-1 [CI], per seed, and the paired differences to hacscale."""
    rows = {r["method"]: r for r in summary["methods"]}
    vs = summary["comparisons"].get("vs_hacscale", {})
    out = ["| method | resolution | widths | params | MACs (M) | latency ratio [95% CI] | within budget | "
           "back-off: rung kept / top | test top-1 % [95% CI] | per seed | diff to hacscale, pp [95% CI] | p | "
           "p (Holm) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    backoffs = {**{n: r.get("backoff") for n, r in summary["search"]["rows"].items()},
                **{n: m.get("backoff") for n, m in summary.get("method_plans", {}).items()}}
    for name in ROWS:
        r = rows.get(name)
        if r is None:
            continue
        plan = r["plan"]
        res = "x".join(map(str, plan.get("resolution") or ["base"]))
        widths = ",".join(str(w) for w in (plan.get("widths") or {}).values()) or "base"
        lo, hi = r["test_top1_ci"]
        d = vs.get(name)
        diff = "—" if d is None else f"{100 * d['diff']:+.2f} [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}]"
        p = "—" if d is None else f"{d['p']:.3f}"
        ph = "—" if d is None else f"{d['p_holm']:.3f}"
        seeds = " ".join(_pct(x) for x in r["test_acc"])
        out.append(f"| {name} | {res} | {widths} | {r['params']} | {r['macs'] / 1e6:.3f} | "
                   f"{r['latency_ratio']:.3f} [{r['latency_ratio_lo']:.3f}, {r['latency_ratio_hi']:.3f}] | "
                   f"{r.get('within_budget')} | {_rungs(backoffs.get(name))} | {_pct(r['test_top1'])} [{_pct(lo)}, {_pct(hi)}] | {seeds} | "
                   f"{diff} | {p} | {ph} |")
    return out


def norm_comparison(results: dict[str, Any]) -> list[str]:
    """hacscale with per-producer against per-group importance (same seeds and splits): paired bootstrap per run."""
    from fxscale.scaling.stats import paired_bootstrap
    out = []
    for key, res in results.items():
        if not key.endswith("_normproducer") or key[:-len("_normproducer")] not in results:
            continue
        rows = [{r["method"]: r for r in results[k]["methods"]}["hacscale"] for k in (key[:-13], key)]
        d = paired_bootstrap(rows[1]["test_acc"], rows[0]["test_acc"])
        plans = [r["plan"] for r in rows]
        out += [f"- {key[:-13]}: per-producer minus per-group importance, hacscale test top-1: "
                f"{100 * d.mean:+.2f} pp [{100 * d.lo:+.2f}, {100 * d.hi:+.2f}], p = {d.p_value:.3f} over {d.n} paired "
                f"seeds; {'the same plan' if plans[0] == plans[1] else 'different plans'} (widths "
                f"{plans[0].get('widths')} vs {plans[1].get('widths')})"]
    return ["## Importance normalisation (hacscale rows)", "", *out, ""] if out else []


def run_ablation(name: str, title: str, runs: Sequence[tuple[str, str, dict[str, Any]]], out: Path,
                 work: Optional[Path] = None, model_factory: Optional[Callable[[str], Any]] = None) -> dict[str, Any]:
    """Run every (model, budget, settings); write <out>/<name>.json and .md; returns {run: compact results}."""
    out.mkdir(parents=True, exist_ok=True)
    work = work or out / "work"
    md = [f"# {title} ({platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')})", "",
          "Is importance-aware allocation what helps? `hacscale` (Algorithm 1, importance-aware widths) against "
          "`uniform@hacres` (one width multiplier) and `random@hacres` (seeded random per-group widening until no "
          "group fits) at HACScale's chosen resolution, each accepted by the same measured back-off (upper end of "
          "the 95% interval of the interleaved latency ratio within the budget). Accuracies: mean over training "
          "seeds (one data split) with a 95% bootstrap CI; differences: paired bootstrap over seeds, Holm-adjusted "
          "over the family of comparisons to hacscale (baseline included).", ""]
    results: dict[str, Any] = {}
    for model, budget, settings in runs:
        cfg = ScaleConfig(model=model, latency_budget=budget, progress=False, variants=(),
                          methods=("uniform@hacres", "random@hacres"), **settings)
        t0 = time.perf_counter()
        net = model_factory(model) if model_factory else None
        key = f"{model}_{budget}_align{cfg.align}" + ("" if cfg.importance_norm == "group" else
                                                     f"_norm{cfg.importance_norm}")
        summary = Pipeline(cfg, work / key, model=net).run()
        results[key] = {k: summary[k] for k in KEEP if k in summary}
        hac = summary["search"]["rows"]["hacscale"]
        md += [f"## {model}, latency budget {budget}, align {cfg.align}, importance norm {cfg.importance_norm}", "",
               *ablation_table(summary), "",
               f"alpha = {summary['alpha']['alpha']}; HACScale took {hac['steps_kept']} of {hac['steps']} width "
               f"steps (stride {cfg.stride}, align {cfg.align}); random@hacres seed {cfg.seeds[0]}; "
               f"{len(cfg.seeds)} seeds x {cfg.epochs} epochs; {time.perf_counter() - t0:.0f} s", ""]
        print("\n".join(md[-(len(summary['methods']) + 5):]), flush=True)
    md += norm_comparison(results)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1, default=float))
    (out / f"{name}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out}/{name}.md and {name}.json")
    return results


__all__ = ["ablation_table", "norm_comparison", "run_ablation"]
