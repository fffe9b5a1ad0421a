"""report.md of `fxscale optimize`: builds and ratios, the plan's partitions, the pair table, skipped backends and
the per-conv table (fastest implementation per conv shape against the library default)."""
from __future__ import annotations

import math
from typing import Any, Mapping


def conv_section(gm: Any, inputs: tuple, backends: Mapping[str, Any], protocol: Any = None,
                 cache_dir: Any = None, tune: Mapping[str, Any] | None = None,
                 tuning_deadline: float | None = None) -> dict[str, Any]:
    """The backends package's per-conv table (fxscale.optimize.backends.convtable.conv_table) for the backends in
    use: each distinct conv shape under every implementation against the library default (torch eager)."""
    try:
        from fxscale.optimize.backends.convtable import IMPLEMENTATIONS, conv_table, table_markdown
    except ImportError as e:
        return {"status": "unavailable", "reason": f"fxscale.optimize.backends.convtable is not importable ({e})",
                "rows": []}
    labels = {"eager": "torch_default", "tvm": "tvm_default"}
    chosen = [labels.get(b, b) for b in backends if labels.get(b, b) in IMPLEMENTATIONS]
    if "tvm" in backends and tune:
        chosen.append("tvm_tuned")
    try:
        rows = conv_table(gm, inputs[0], backends=chosen, protocol=protocol, tune=tune, cache_dir=cache_dir,
                          use_cache=cache_dir is not None, tuning_deadline=tuning_deadline)
    except Exception as e:  # noqa: BLE001 - the table is a report section, not a reason to fail the run
        return {"status": "failed", "reason": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}", "rows": []}
    if not rows:
        return {"status": "empty", "reason": "the model has no 2-D convolution", "rows": []}
    return {"status": "ok", "rows": rows, "markdown": table_markdown(rows)}


def _ms(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _ratio(r: Mapping[str, Any] | None) -> str:
    if not r:
        return "—"
    return f"{r['ratio']:.2f}x [{r['low']:.2f}, {r['high']:.2f}] vs {r['vs']}"


def render_report(plan: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """The markdown report."""
    dev = plan["device"]
    lines = [f"# fxscale optimize: {plan['model']}", "",
             f"Target {plan['target']} ({dev.get('cpu')}, 1 thread), input {plan['input_shapes']}, torch "
             f"{plan['torch']}. Selection: {plan['selection']['method']}; {results['partitions']} partitions "
             f"({'a chain' if results['chain'] else 'a DAG'}).", "",
             f"- hybrid against the best single backend: {_ratio(results['speedup_vs_best_single'])}",
             f"- hybrid against torch eager (unoptimised graph): {_ratio(results['speedup_vs_eager'])}", "",
             "Ratios are medians of per-round ratios with a distribution-free 95% interval, measured in one run.", "",
             "## Builds (one interleaved run)", "",
             "| build | latency ms | slowest round ms | max abs diff | hybrid speed-up [interval] | note |",
             "|---|---|---|---|---|---|"]
    for r in results["builds"]:
        lines.append(f"| {r['backend']} | {_ms(r['latency_ms'])} | {_ms(r['latency_ms_hi'])} | "
                     f"{r['max_abs_diff']:.2e} | {r['speedup_of_hybrid']:.2f}x [{r['speedup_low']:.2f}, "
                     f"{r['speedup_high']:.2f}] | {r['note']} |")
    lines += ["", "## Inference plan", "", "| partition | backend | layout | nodes | latency ms |",
              "|---|---|---|---|---|"]
    for p in plan["partitions"]:
        nodes = ", ".join(p["nodes"][:4]) + (f", … ({len(p['nodes'])})" if len(p["nodes"]) > 4 else "")
        lines.append(f"| {p['name']} | {p['backend']} | {p['layout']} | {nodes} | {_ms(p.get('latency_ms'))} |")
    ga = plan["selection"].get("ga")
    if ga:
        lines += ["", f"GA: population {ga['population']}, {ga['generations']} generations, {ga['evaluated']} "
                      f"end-to-end evaluations; best per generation (ms): "
                      f"{', '.join(f'{v:.3f}' for v in ga['history_ms'])}; reached the exact additive optimum: "
                      f"{ga['reached_exact']}."]
    backends = sorted({b for row in results["pair_latency_ms"].values() for b in row})
    lines += ["", "## Partition x backend latency (ms; — unsupported)", "",
              "| partition | " + " | ".join(backends) + " |", "|---" * (len(backends) + 1) + "|"]
    for name, row in results["pair_latency_ms"].items():
        lines.append(f"| {name} | " + " | ".join(_ms(row.get(b)) for b in backends) + " |")
    conv = results.get("conv_table") or {}
    lines += ["", "## Per-conv table (fastest implementation against the library default)", ""]
    if conv.get("status") == "ok":
        lines += ["Each distinct conv shape as a one-op module under every implementation: median ms (ratio to "
                  "torch eager, the library default, with its interval), the fastest and its speed-up.", "",
                  conv["markdown"].rstrip()]
    else:
        lines.append(f"Not produced: {conv.get('reason', 'no conv in the model')}.")
    skipped = {**results.get("skipped_backends", {}),
               **{f"{k} (whole model)": v for k, v in results.get("whole_build_skipped", {}).items()}}
    if skipped or results.get("unsupported"):
        lines += ["", "## Skipped", ""]
        lines += [f"- backend {k}: {v}" for k, v in skipped.items()]
        lines += [f"- {k}: {v}" for k, v in results.get("unsupported", {}).items()]
    passes = results.get("passes", {})
    lines += ["", "## Graph passes (each checked against its input)", ""]
    lines += [f"- {k}: modified {v.get('modified')}, max abs diff {v.get('max_abs_diff', 0):.2e}"
              for k, v in passes.items()]
    return "\n".join(lines) + "\n"


__all__ = ["conv_section", "render_report"]
