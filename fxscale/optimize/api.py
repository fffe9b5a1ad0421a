"""``fxscale.optimize``: graph passes, partitions, selection by measurement, the inference plan and the hybrid."""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from fxscale.errors import FxscaleError
from fxscale.optimize.builds import Build, best_single, compare, rows, whole_builds
from fxscale.optimize.hybrid import build_hybrid
from fxscale.optimize.measure import TOLERANCE, TimingCache, default_protocol, machine, max_abs_diff
from fxscale.optimize.partition import GRANULARITIES, SINK, SOURCE, partition_graph
from fxscale.optimize.plan import make_plan
from fxscale.optimize.search import compile_pairs, select, time_pairs, time_transitions
from fxscale.optimize.select import GAConfig
from fxscale.optimize.verify import optimize_graph
from fxscale.tracing import META

TARGETS = ("cpu",)
DEFAULT_BACKENDS = ("eager", "channels_last", "ort", "openvino")  # inductor, tvm, tensorrt: name them to use them
Progress = Callable[[str, int, int], None]


@dataclass
class OptimizeResult:
    """What optimize() returns: the plan, the hybrid module, the optimised graph, results and the report text."""

    plan: dict[str, Any]
    hybrid: nn.Module
    optimized: fx.GraphModule
    results: dict[str, Any]
    report: str = ""
    skipped: dict[str, str] = field(default_factory=dict)
    problem: Any = None  # the measured additive model (select.Problem) over the measured partitions


def check_options(target: str, backends: Optional[Sequence[str]], granularity: str, max_partitions: int,
                  tune_minutes: float) -> list[str]:
    """Every option that needs no model; FxscaleError naming the first bad one. Returns the backend names."""
    from fxscale.optimize.backends import list_backends
    if target not in TARGETS:
        raise FxscaleError(f"unknown optimize target {target!r}; valid: {', '.join(TARGETS)}")
    names = list(backends) if backends else [b for b in DEFAULT_BACKENDS if b in list_backends()]
    known = list_backends()
    for b in names:
        if b not in known:
            import difflib
            close = difflib.get_close_matches(b, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise FxscaleError(f"unknown backend {b!r}{hint}; valid backends: {', '.join(known)}")
    if granularity not in GRANULARITIES:
        raise FxscaleError(f"unknown granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    if max_partitions < 1:
        raise FxscaleError(f"max_partitions must be >= 1, got {max_partitions}")
    if not (tune_minutes >= 0 and math.isfinite(tune_minutes)):
        raise FxscaleError(f"tune_minutes must be a finite number >= 0, got {tune_minutes}")
    return list(dict.fromkeys(names))


def _traced(model_or_gm: nn.Module, x: torch.Tensor, plan: Any, leaf_modules: Sequence[type]) -> fx.GraphModule:
    import fxscale
    if isinstance(model_or_gm, fx.GraphModule) and META in getattr(model_or_gm, "meta", {}):
        gm = model_or_gm
    elif isinstance(model_or_gm, nn.Module):
        gm = fxscale.trace(model_or_gm.eval(), x, leaf_modules=leaf_modules)
    else:
        raise FxscaleError(f"optimize needs an nn.Module or a GraphModule from fxscale.trace, got "
                           f"{type(model_or_gm).__name__}")
    if plan is not None:
        if isinstance(plan, (str, Path)):
            from fxscale.cli import read_plan
            plan = read_plan(str(plan))
        gm = fxscale.transform(gm, plan)
    return gm.eval()


def create_backends(names: Sequence[str], settings: Optional[Mapping[str, Mapping[str, Any]]],
                    skipped: dict[str, str]) -> dict[str, Any]:
    """name -> backend instance for the available ones; the others are recorded in `skipped` with the reason."""
    from fxscale.optimize.backends import create_backend
    out = {}
    for name in names:
        be = create_backend(name, **dict((settings or {}).get(name, {})))
        cap = be.available()
        if cap.ok:
            out[name] = be
        else:
            skipped[name] = cap.reason or "not available"
    if not out:
        raise FxscaleError(f"no backend of {', '.join(names)} is available here: "
                           + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return out


def optimize(model_or_gm: nn.Module, example_input: torch.Tensor, target: str = "cpu",
             backends: Optional[Sequence[str]] = None, plan: Any = None, out: Optional[str | Path] = None,
             tune_minutes: float = 1.0, *, granularity: str = "block", max_partitions: int = 12,
             passes: Optional[Sequence[str]] = None, ga_population: int = 8, ga_generations: int = 4, seed: int = 0,
             runs: int = 15, rounds: int = 5, cache_dir: Optional[str | Path] = None,
             backend_settings: Optional[Mapping[str, Mapping[str, Any]]] = None, model_name: Optional[str] = None,
             leaf_modules: Sequence[type] = (), progress: Optional[Progress] = None, conv_table: bool = True,
             conv_tune: Optional[Mapping[str, Any]] = None, onnx_simplify: bool = False) -> OptimizeResult:
    """Optimise a model for inference on `target` and return (and with `out`, write) its plan and hybrid module.

    The scaling `plan` (a ScalingPlan or a plan.json path) is applied first. Graph passes run under their numerical
    checks; the graph is split into partitions (`granularity`, at most `max_partitions` blocks); every (partition,
    backend) pair and every boundary transition is timed (one thread, interleaved, median; cached in `cache_dir`);
    the additive optimum is found by DP (chains) or MILP (DAGs) and a GA on measured end-to-end latency runs.
    `tune_minutes` bounds all tuning together, on one clock started here: TVM's MetaSchedule search (backend and
    conv table), then the GA with what is left (0: no search; tuning databases already on disk still apply). With `conv_table`, each distinct conv shape is timed under every backend (WPK's per-conv
    comparison; `conv_tune`: settings of the MetaSchedule-tuned TVM build, e.g. {"trials": 64}). With `out` and
    `onnx_simplify`, the optimised graph is also written as model.onnx, simplified by onnxslim. The chosen hybrid
    is then timed interleaved against every single-backend whole build and
    the original model in torch eager. Unavailable backends are skipped with their reason.
    """
    names = check_options(target, backends, granularity, max_partitions, tune_minutes)
    x = example_input if isinstance(example_input, torch.Tensor) else None
    if x is None:
        raise FxscaleError(f"example_input must be a tensor, got {type(example_input).__name__}")
    say = progress or (lambda stage, done, total: None)
    skipped: dict[str, str] = {}
    bes = create_backends(names, backend_settings, skipped)
    deadline = time.monotonic() + tune_minutes * 60.0  # one clock for all tuning: TVM's search, the GA, the table
    for be in bes.values():
        be.tuning_deadline = deadline
    gm = _traced(model_or_gm, x, plan, leaf_modules)
    x = torch.randn(gm.meta[META]["input_shapes"][0], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = gm(x)
    opt, pass_report = optimize_graph(gm, passes, inputs=(x,))
    say("graph passes", 1, 1)
    parts = partition_graph(opt, granularity, max_partitions, (x,))
    protocol = default_protocol(runs=runs, rounds=rounds)
    m = compile_pairs(parts, bes, say)
    cache = TimingCache(Path(cache_dir) if cache_dir is not None else None)
    time_pairs(parts, m, protocol, cache, bes, say)
    time_transitions(parts, m, protocol)
    left = max(0.0, deadline - time.monotonic())
    ga = GAConfig(population=ga_population, generations=ga_generations, seed=seed, budget_s=left)
    sel = select(parts, m, protocol, ga if ga_generations > 0 and left > 0 else None, say)
    mparts, mchoice, compiled, members = _merged(parts, sel.choice, m, bes, opt)
    partitioned = build_hybrid(mparts, mchoice, compiled, m.layouts)
    with torch.no_grad():
        pdiff = max_abs_diff(partitioned(x), reference)
    whole_skipped: dict[str, str] = {}
    builds = [Build("partitioned", partitioned, "contiguous", pdiff, "the selected per-partition assignment")]
    builds += whole_builds(opt, (x,), bes, reference, whole_skipped)
    builds.append(Build("original", gm, "contiguous", 0.0, "the unoptimised graph in torch eager"))
    timings = compare(builds, (x,), protocol, lambda d, t: say("end-to-end timing", d, t))
    # partitioned, or the whole build that beats it by the median of per-round ratios (the statistic reported)
    ratios = [timings[i].ratio_to(timings[0]).ratio if i else 1.0 for i in range(len(builds) - 1)]
    chosen = min(range(len(ratios)), key=lambda i: (ratios[i] if not math.isnan(ratios[i]) else math.inf, i))
    table = rows(builds, timings, chosen)
    hybrid_row = dict(table[chosen], backend="hybrid",
                      note="the partitioned plan" if chosen == 0 else f"the whole model on {builds[chosen].backend}")
    table.insert(0, hybrid_row)
    hybrid = partitioned if chosen == 0 else build_hybrid(
        partition_graph(opt, "whole", 1, (x,)), [builds[chosen].backend], {(0, builds[chosen].backend):
                                                                           builds[chosen].fn}, m.layouts)
    inference_plan = _plan(model_name or type(model_or_gm).__name__, x, target, (mparts, mchoice, members), m, sel,
                           bes, pass_report, chosen, builds, granularity)
    results = _results(inference_plan, table, m, parts, sel, skipped, whole_skipped, pass_report, cache)
    from fxscale.optimize.report import conv_section, render_report
    results["conv_table"] = conv_section(opt, (x,), bes, protocol, cache_dir, conv_tune,
                                                             deadline) if conv_table else \
        {"status": "off", "reason": "switched off (conv_table=False / --no-conv-table)", "rows": []}
    text = render_report(inference_plan, results)
    if out is not None:
        write_outputs(Path(out), inference_plan, results, text, opt, x if onnx_simplify else None)
    return OptimizeResult(inference_plan, hybrid, opt, results, text, skipped, m.problem())


def _merged(parts: Any, choice: list[str], m: Any, bes: dict, opt: fx.GraphModule) -> tuple:
    """Adjacent partitions on one backend merged (search.merge_runs); unmerged when a merged unit fails."""
    from fxscale.optimize.search import merge_runs
    try:
        return merge_runs(parts, choice, bes, opt)
    except Exception:  # noqa: BLE001 - the measured partitions are a valid plan on their own
        return parts, choice, m.compiled, [[i] for i in range(len(parts.partitions))]


def _plan(model: str, x: torch.Tensor, target: str, merged: tuple, m: Any, sel: Any, bes: dict, pass_report: dict,
          chosen: int, builds: list[Build], granularity: str) -> dict[str, Any]:
    parts, choice, members = merged
    if chosen == 0:
        entries = []
        for p, b, mem in zip(parts.partitions, choice, members):
            j = m.backends.index(b)
            entries.append({"name": p.name, "nodes": p.nodes, "backend": b, "layout": m.layouts[b],
                            "settings": bes[b].describe(), "input_shapes": [list(t.shape) for t in p.inputs],
                            "output_shapes": p.output_shapes, "measured_partitions": mem,
                            "latency_ms": float(sum(m.latency[i, j] for i in mem))})
        gran = granularity
        transitions = [{"from": _end(u), "to": _end(v), "ms": t.tolist()} for (u, v), t in m.transitions.items()
                       if t.any()]  # indices of the measured partitions
    else:
        b = builds[chosen].backend
        nodes = [n for p in parts.partitions for n in p.nodes]
        entries = [{"name": "submod_0", "nodes": nodes, "backend": b, "layout": m.layouts[b],
                    "settings": bes[b].describe(), "input_shapes": [list(x.shape)]}]
        gran, transitions = "whole", []
    selection = {"method": sel.method if chosen == 0 else f"whole:{builds[chosen].backend}", "measured": sel.choice,
                 "additive_ms": sel.predicted_ms, "exact": sel.exact, "exact_ms": sel.exact_ms, "ga": sel.ga}
    return make_plan(model=model, input_shapes=[list(x.shape)], target=target, device=machine(), granularity=gran,
                     partitions=entries, runtimes={k: v.describe() for k, v in bes.items()},
                     passes=list(pass_report), selection=selection, transitions=transitions)


def _end(i: int) -> str:
    return "input" if i == SOURCE else "output" if i == SINK else f"submod_{i}"


def _results(plan: dict, table: list[dict], m: Any, parts: Any, sel: Any, skipped: dict, whole_skipped: dict,
             pass_report: dict, cache: TimingCache) -> dict[str, Any]:
    single = best_single(table)
    orig = next(r for r in table if r["backend"] == "original")
    pairs = {p.name: {b: (None if math.isnan(m.latency[p.index, j]) else float(m.latency[p.index, j]))
                      for j, b in enumerate(m.backends)} for p in parts.partitions}
    return {"model": plan["model"], "builds": table,
            "best_single_backend": single["backend"] if single else None,
            "speedup_vs_best_single": _ratio(single), "speedup_vs_eager": _ratio(orig),
            "selection": plan["selection"], "partitions": len(parts.partitions), "chain": parts.is_chain(),
            "pair_latency_ms": pairs, "unsupported": {f"{parts.partitions[i].name}/{b}": r
                                                      for (i, b), r in m.reasons.items()},
            "skipped_backends": skipped, "whole_build_skipped": whole_skipped,
            "passes": json.loads(json.dumps(pass_report, default=str)), "timing_cache_hits": cache.hits,
            "tolerances": {b: TOLERANCE.get(b, 1e-3) for b in m.backends}}


def _ratio(row: Optional[dict]) -> Optional[dict[str, float]]:
    if row is None:
        return None
    return {"vs": row["backend"], "ratio": row["speedup_of_hybrid"], "low": row["speedup_low"],
            "high": row["speedup_high"]}


def write_outputs(out: Path, plan: dict, results: dict, report: str, opt: fx.GraphModule,
                  onnx_input: Optional[torch.Tensor] = None) -> None:
    """inference_plan.json, results.json, report.md and optimized.pt (the graph load_hybrid rebuilds), all or none;
    with `onnx_input`, model.onnx too (the optimised graph exported, then simplified by onnxslim)."""
    from fxscale.artifacts import staged_output
    with staged_output(out) as tmp:
        if onnx_input is not None:
            from fxscale.export import export_onnx
            from fxscale.optimize.onnxsimplify import simplify_onnx
            raw = tmp / ".raw.onnx"
            export_onnx(opt, raw, onnx_input)
            results["onnx"] = {"file": "model.onnx", **simplify_onnx(raw, tmp / "model.onnx").to_dict()}
            raw.unlink()
            report += (f"\nmodel.onnx: simplified by onnxslim {results['onnx']['onnxslim']}, "
                       f"{results['onnx']['nodes_before']} -> {results['onnx']['nodes_after']} nodes, max abs diff "
                       f"{results['onnx']['max_abs_diff']:.2e} (onnxruntime).\n")
        (tmp / "inference_plan.json").write_text(json.dumps(plan, indent=2, default=str))
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (tmp / "report.md").write_text(report)
        torch.save(opt, tmp / "optimized.pt")


__all__ = ["DEFAULT_BACKENDS", "OptimizeResult", "TARGETS", "check_options", "create_backends", "optimize",
           "write_outputs"]
