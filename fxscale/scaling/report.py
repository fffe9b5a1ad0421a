"""Final artefacts of `fxscale scale`: plan.json, model.pt, model.onnx, results.json, report.md and plots."""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from fxscale.plan import ScalingPlan
from fxscale.scaling.stages import load_weights


def _ms(values: list[float]) -> str:
    vals = [100 * v for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The paper's Table I columns (power needs a Jetson: see fxscale.hw.table1) as Markdown."""
    base = rows[0]
    b_acc = statistics.fmean(base["test_acc"])
    out = ["| Method | Params (M) | FLOPs (M) | Latency (ms) | Utilization (GFLOP/s) | Val top-1 (%) | "
           "Test top-1 (%) | Δ test |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        util = r["utilization"] / base["utilization"] if base["utilization"] else float("nan")
        flag = "" if r.get("within_budget", True) else " ⚠ over budget"
        out.append(f"| {r['method']}{flag} | {r['params'] / 1e6:.4f} | {r['flops'] / 1e6:.2f} | "
                   f"{r['latency_ms']:.4f} ({r['latency_ms'] / base['latency_ms']:.2f}x) | "
                   f"{r['utilization']:.2f} ({util:.2f}x) | {_ms(r['val_acc'])} | {_ms(r['test_acc'])} | "
                   f"{100 * (statistics.fmean(r['test_acc']) - b_acc):+.2f} |")
    return "\n".join(out)


def _plots(pipe: Any, summary: dict[str, Any], plan: ScalingPlan, tmp: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = []
    groups = [g for g in pipe.cg.scalable]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(groups)), 3.5))
    xs = range(len(groups))
    ax.bar([x - 0.2 for x in xs], [g.width for g in groups], 0.4, label="baseline")
    ax.bar([x + 0.2 for x in xs], [plan.widths.get(g.name, g.width) for g in groups], 0.4, label="HACScale")
    ax.set_xticks(list(xs), [g.name for g in groups], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("channels")
    ax.legend()
    fig.tight_layout()
    fig.savefig(tmp / "widths.png", dpi=120)
    names.append("widths.png")
    rows = summary["methods"]
    for key, ylabel, fname in (("test_acc", "test top-1 (%)", "accuracy_vs_latency.png"),
                               ("utilization", "utilization (GFLOP/s)", "utilization.png")):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for r in rows:
            y = 100 * statistics.fmean(r[key]) if key == "test_acc" else r[key]
            ax.scatter(r["latency_ms"], y, label=r["method"])
            ax.annotate(r["method"], (r["latency_ms"], y), fontsize=7)
        ax.set_xlabel(f"latency (ms, {pipe.cfg.target})")
        ax.set_ylabel(ylabel)
        fig.tight_layout()
        fig.savefig(tmp / fname, dpi=120)
        plt.close("all")
        names.append(fname)
    return names


def _markdown(pipe: Any, summary: dict[str, Any], plots: list[str]) -> str:
    cfg = pipe.cfg
    s = summary["search"]
    lines = [f"# fxscale scale: {cfg.model} on {cfg.data}", "",
             f"Target `{cfg.target}` ({pipe.target.describe().get('device', '?')}, threads={cfg.threads}); latency "
             f"budget {cfg.latency_budget}, memory budget {cfg.memory_budget}, FLOPs scale {cfg.flops_scale}; "
             f"{cfg.epochs} epochs x {len(cfg.seeds)} seed(s). Latency: median of {cfg.runs} runs, all models "
             "timed interleaved in one session; FLOPs = 2 x MACs. ⚠ marks a method whose measured latency "
             "exceeds the budget (plans are sized by the latency model; only HACScale backs off by measurement).", "", "## Results (Table I columns)", "",
             table(summary["methods"]), "",
             "## Alpha search (r = sqrt(s)^alpha, w = sqrt(s)^(1-alpha))", "", "| alpha | resolution | val top-1 |",
             "|---:|---|---:|"]
    for c in summary["alpha"]["candidates"]:
        lines.append(f"| {c['alpha']} | {c['plan']['resolution']} | {100 * c.get('val_acc', float('nan')):.2f} |")
    lines += ["", f"Chosen alpha: **{summary['alpha']['alpha']}**", "", "## Importance predictor (I = a * C^b)", "",
              "| group | a | b | R² | R² (log) | samples | note |", "|---|---:|---:|---:|---:|---:|---|"]
    for g, f in summary["importance"]["fits"].items():
        lines.append(f"| {g} | {f['a']:.3g} | {f['b']:.3f} | {f['r2']:.2f} | {f['r2_log']:.2f} | {f['n']} | "
                     f"{f['note']} |")
    poor = summary["importance"].get("poorly_fit") or []
    lines += ["", f"Poorly fitted groups (log-space R² < 0.5): {', '.join(poor) if poor else 'none'}."]
    lines += ["", "## Width search (Algorithm 1)", "", "| rule | steps | kept after measuring | measured latency | "
              "predicted ms | params | importance added | stopped |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for rule, r in s["rules"].items():
        mr = r.get("measured_ratio")
        lines.append(f"| {rule}{' (hacscale)' if rule == cfg.rule else f' (hacscale-{rule})'} | {r['steps']} | "
                     f"{r.get('steps_kept', r['steps'])} | {'n/a' if mr is None else f'{mr:.3f}x'} | "
                     f"{r['predicted_ms']:.4f} | {r['params']} | {r['importance_added']:.3g} | {r['stopped']} |")
    mr = s.get("measured_ratio")
    lines += ["", f"Start: resolution {s['start']['resolution']}; kept {s['steps_kept']} steps after measuring"
              + (f" (measured latency {mr:.3f}x baseline)." if mr is not None else "."), "",
              "| group | baseline | HACScale |", "|---|---:|---:|"]
    for g in pipe.cg.scalable:
        lines.append(f"| {g.name} | {g.width} | {s['plan']['widths'].get(g.name, g.width)} |")
    lines += ["", "## Latency model", "", "```", json.dumps(summary["latency_model"], indent=1), "```", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def write_outputs(pipe: Any, summary: dict[str, Any], plan: ScalingPlan) -> None:
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
        model.load_state_dict(load_weights(pipe.stages / "weights" / f"hacscale_s{cfg.seeds[0]}.pt"))
        model.eval()
        x = torch.randn(1, pipe.bundle.input_shape[0], *pipe.resolution_of(plan))
        contract = input_contract(x, dynamic_batch=dynamic, mean=pipe.bundle.mean, std=pipe.bundle.std,
                                  num_classes=pipe.bundle.num_classes)
        plan.meta["input"] = contract
        (tmp / "plan.json").write_text(plan.to_json())
        rep = export_onnx(model, tmp / "model.onnx", x, dynamic_batch=dynamic, metadata=contract_props(contract))
        summary["onnx"] = {"opset": rep.opset, "max_abs_diff": rep.max_abs_diff, "dynamic_batch": dynamic}
        summary["input"] = contract
        plots = _plots(pipe, summary, plan, tmp)
        (tmp / "report.md").write_text(_markdown(pipe, summary, plots))
        problem = write_model_files(model, tmp, x, contract, {"plan": json.loads(plan.to_json()),
                                                              "model": cfg.model, "data": cfg.data}, pipe.log)
        summary["model_pt2"] = problem or "model.pt2"
        (tmp / "results.json").write_text(json.dumps(summary, indent=1, default=float))


__all__ = ["table", "write_outputs"]
