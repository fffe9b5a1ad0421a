"""The rows of results.json: one per method with its cost, measured ratio, accuracy statistics and search compute.

Conventions: `macs` counts multiply-accumulates and `flops = 2 x macs` (the paper's Table I "FLOPs" column counts
MACs, so compare it with `macs`). `latency_ratio` is the median over interleaved rounds of the method's round median
over the baseline's, with `latency_ratio_lo`/`_hi` its 95% order-statistic interval. `test_top1_ci` is the 95%
percentile-bootstrap interval of the mean over seeds (nan with one seed). HACScale's variants are chosen between on
validation accuracy only (`choose_hacscale`); test accuracy never selects anything.
"""
from __future__ import annotations

import json
import math
import statistics
from typing import Any, Optional, Sequence

import fxscale
from fxscale.plan import ScalingPlan
from fxscale.scaling.stats import holm, mean_ci, paired_bootstrap


def _compute(name: str, search: dict[str, Any], methods: dict[str, Any], alpha: dict[str, Any],
             importance: dict[str, Any]) -> dict[str, Any]:
    """Epochs trained and wall seconds spent searching for the method's plan (final training not included)."""
    if name == "baseline":
        return {"epochs": 0, "wall_s": 0.0, "what": "none"}
    if name in methods:
        bo = methods[name].get("backoff") or {}
        out = {"epochs": methods[name].get("search_epochs", 0), "wall_s": methods[name]["wall_s"],
               "backoff_wall_s": bo.get("wall_s", 0.0),
               "what": methods[name].get("search_what", "knob search on the latency model + measured back-off")}
        if "@hacres" in name:  # the ablation rows reuse HACScale's resolution, so its alpha search too
            out.update(epochs=alpha.get("epochs", 0), wall_s=out["wall_s"] + alpha.get("wall_s", 0.0),
                       what="HACScale's alpha search (its resolution) + width allocation on the latency model + "
                            "measured back-off")
        return out
    row = search["rows"][name]
    return {"epochs": alpha.get("epochs", 0) + importance.get("epochs", 0),
            "wall_s": alpha.get("wall_s", 0.0) + importance.get("wall_s", 0.0) + search.get("setup_wall_s", 0.0)
            + row["wall_s"], "backoff_wall_s": row["backoff"]["wall_s"],
            "what": "alpha candidates + importance samples (shared by the HACScale rows) + Algorithm 1 + measured "
                    "back-off"}


def method_rows(pipe: Any, plans: dict[str, Any], results: dict[str, Any], meas: dict[str, Any],
                search: dict[str, Any], methods: dict[str, Any], alpha: dict[str, Any],
                ratio: Optional[float]) -> list[dict[str, Any]]:
    """One row per method (baseline first), with per-seed values and the fields listed in the module doc."""
    seeds = list(pipe.cfg.seeds)
    imp = getattr(pipe, "importance_compute", {})
    rows = []
    for name, p in plans.items():
        plan = ScalingPlan.from_json(json.dumps(p))
        c = fxscale.cost(pipe.cg, plan, mode="input")  # depth plans are costed on the deeper graph
        m, r = meas[name], results[name]
        val, test = r["val_acc"], r["test_acc"]
        mean, lo, hi = mean_ci(test)
        v = search["rows"].get(name, {})
        row = {"method": name, "plan": p, "rule": v.get("rule"), "stride": v.get("stride"),
               "align": v.get("align", methods.get(name, {}).get("align", 1 if name == "baseline" else pipe.cfg.baseline_align)), "params": c.params, "macs": c.macs, "flops": c.flops,
               "latency_ms": m["median"], "latency_p10": m["p10"], "latency_p90": m["p90"],
               "latency_ratio": m["ratio"]["ratio"], "latency_ratio_lo": m["ratio"]["low"],
               "latency_ratio_hi": m["ratio"]["high"], "latency_ratio_rounds": m["ratio"]["rounds"],
               "latency_ratio_tight": m["ratio"]["tight"],
               "accepted_ratio": ((v or methods.get(name, {})).get("backoff") or {}).get("measured"),
               "val_top1": statistics.fmean(val), "test_top1": mean, "test_top1_ci": [lo, hi],
               "val_acc": val, "test_acc": test,
               "per_seed": [{"seed": s, "val_top1": a, "test_top1": b} for s, a, b in zip(seeds, val, test)],
               "search_compute": _compute(name, search, methods, alpha, imp),
               "train_compute": {"epochs_per_seed": (r.get("epochs") or [None])[0],
                                 "wall_s_per_seed": statistics.fmean(r["wall_s"]) if r.get("wall_s") else None,
                                 "start": pipe.cfg.start}}
        row["utilization"] = c.flops / (m["median"] * 1e6) if m["median"] > 0 else float("nan")
        # a plan identical to the baseline's is the baseline model: its measured ratio only shows the noise floor
        row["same_as_baseline"] = _is_baseline(pipe, plan)
        if ratio is not None:
            row["within_budget"] = bool(row["same_as_baseline"] or row["latency_ratio_hi"] <= ratio)
        rows.append(row)
    return rows


def _is_baseline(pipe: Any, plan: ScalingPlan) -> bool:
    """True when the plan leaves every width, the resolution and the depth as they are."""
    return (not plan.depths and all(plan.widths.get(g.name, g.width) == g.width for g in pipe.cg.groups)
            and tuple(pipe.resolution_of(plan)) == tuple(pipe.resolution_of(ScalingPlan())))


def choose_hacscale(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The HACScale row with the highest mean validation top-1 (ties: the first, `hacscale` itself)."""
    hac = [r for r in rows if r["method"].startswith("hacscale")]
    best = max(hac, key=lambda r: (r["val_top1"], -hac.index(r)))
    return {"chosen": best["method"], "by": "mean validation top-1 (test accuracy is never used to choose)",
            "val_top1": {r["method"]: r["val_top1"] for r in hac}}


def comparisons(rows: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Paired bootstrap differences of test top-1 to the baseline and to `hacscale`, Holm-adjusted per family."""
    if len(seeds) < 2:
        return {"note": "one seed: no paired statistics (run with --seeds >= 2)"}
    by = {r["method"]: r for r in rows}
    out: dict[str, Any] = {}
    for ref in ("baseline", "hacscale"):
        if ref not in by:
            continue
        fam = {r["method"]: paired_bootstrap(r["test_acc"], by[ref]["test_acc"]) for r in rows if r["method"] != ref}
        adj = holm({k: d.p_value for k, d in fam.items()})
        out[f"vs_{ref}"] = {k: {"diff": d.mean, "lo": d.lo, "hi": d.hi, "p": d.p_value,
                                "p_holm": adj.adjusted[k], "reject": adj.reject[k], "n": d.n} for k, d in fam.items()}
    out["method"] = "paired bootstrap over seeds of the mean test top-1 difference (95% CI), Holm per family"
    return out


def finite(x: Any) -> bool:
    """True for a finite number."""
    return isinstance(x, (int, float)) and math.isfinite(x)


__all__ = ["choose_hacscale", "comparisons", "finite", "method_rows"]
