"""Rebuilding a hybrid from an inference plan: ``load_hybrid`` (an output folder of `fxscale optimize`) and
``measure_under_plan`` (the scale pipeline's hook: a rescaled model timed under the same per-partition choices)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.fx as fx

from fxscale.errors import FxscaleError
from fxscale.optimize.hybrid import build_hybrid
from fxscale.optimize.measure import Call, default_protocol, hi_of, max_abs_diff, time_calls, to_layout
from fxscale.optimize.partition import partition_graph
from fxscale.optimize.plan import read_plan, validate_plan
from fxscale.tracing import META, example_inputs


def _backend(entry: Mapping[str, Any]) -> Any:
    from fxscale.optimize.backends import create_backend
    settings = dict(entry.get("settings", {}).get("settings", {}))
    return create_backend(entry["backend"], **settings)


def compile_plan(opt: fx.GraphModule, plan: Mapping[str, Any], inputs: tuple) -> fx.GraphModule:
    """The hybrid of `plan` on the optimised graph `opt` (its partitions' node names must all be in `opt`)."""
    plan = validate_plan(dict(plan))
    parts = partition_graph(opt, inputs=inputs, groups=[p["nodes"] for p in plan["partitions"]])
    compiled, layouts, choice = {}, {}, []
    for p, entry in zip(parts.partitions, plan["partitions"]):
        be = _backend(entry)
        cap = be.available()
        if not cap.ok:
            raise FxscaleError(f"inference plan partition {entry['name']} needs backend {entry['backend']}: "
                               f"{cap.reason}")
        compiled[(p.index, be.name)] = be.compile(p.gm, tuple(to_layout(x, be.layout) for x in p.inputs))
        layouts[be.name] = be.layout
        choice.append(be.name)
    return build_hybrid(parts, choice, compiled, layouts)


def load_hybrid(folder: str | Path) -> fx.GraphModule:
    """The hybrid module of an `fxscale optimize` output folder (optimized.pt + inference_plan.json), recompiled."""
    folder = Path(folder)
    plan = read_plan(folder)
    path = folder / "optimized.pt"
    if not path.is_file():
        raise FxscaleError(f"no optimised graph {path}")
    try:
        opt = torch.load(path, weights_only=False)  # written by fxscale optimize: a pickled GraphModule
    except Exception as e:  # noqa: BLE001 - a torn file: one line naming it
        raise FxscaleError(f"{path} is not a GraphModule written by fxscale optimize ({type(e).__name__}: {e})") from e
    inputs = tuple(torch.randn(s) for s in plan["input_shapes"])
    return compile_plan(opt, plan, inputs)


def measure_under_plan(gm: fx.GraphModule, example_input: Any, inference_plan: Mapping[str, Any] | str | Path,
                       *, runs: int = 15, rounds: int = 5, passes: Optional[list[str]] = None) -> dict[str, Any]:
    """Latency of `gm` (e.g. a rescaled model) under `inference_plan`'s per-partition backend choices.

    The graph passes run, then the plan's partitions are rebuilt where all their nodes still exist (a width change
    keeps node names; shapes may differ, so each is recompiled at its new shapes); when they do not all exist, the
    graph is re-partitioned at the plan's granularity and each partition takes the fastest backend among the
    plan's by a quick interleaved timing. Returns latency_ms, latency_ms_hi, max_abs_diff, whether the plan matched
    and the partitions re-selected.
    """
    from fxscale.optimize.verify import optimize_graph
    plan = read_plan(inference_plan) if isinstance(inference_plan, (str, Path)) else validate_plan(dict(inference_plan))
    if META not in getattr(gm, "meta", {}):
        import fxscale
        gm = fxscale.trace(gm.eval(), example_input)
    x = example_input if isinstance(example_input, torch.Tensor) else example_inputs(gm)[0]
    opt, _ = optimize_graph(gm, passes if passes is not None else plan.get("passes"), inputs=(x,))
    names = {n.name for n in opt.graph.nodes}
    matched = all(n in names for p in plan["partitions"] for n in p["nodes"])
    protocol = default_protocol(runs=runs, rounds=rounds)
    reselected: list[str] = []
    if matched:
        hybrid = compile_plan(opt, plan, (x,))
    else:
        hybrid, reselected = _reselect(opt, plan, x, protocol)
    with torch.no_grad():
        want = gm(x)
        diff = max_abs_diff(hybrid(x), want)
    (t,) = time_calls([Call(hybrid, (x,))], protocol)
    return {"latency_ms": t.value, "latency_ms_hi": hi_of(t), "max_abs_diff": diff, "matched": matched,
            "reselected": reselected, "hybrid": hybrid}


def _reselect(opt: fx.GraphModule, plan: Mapping[str, Any], x: torch.Tensor, protocol: Any) -> tuple:
    gran = plan.get("granularity", "block")
    gran = gran if gran in ("op", "block", "whole") else "block"
    parts = partition_graph(opt, gran, max(1, len(plan["partitions"])), (x,))
    entries = {e["backend"]: e for e in plan["partitions"]}
    bes = {name: _backend(e) for name, e in entries.items()}
    compiled, layouts, choice, names = {}, {b: be.layout for b, be in bes.items()}, [], []
    for p in parts.partitions:
        cands = []
        for b, be in bes.items():
            xs = tuple(to_layout(t, be.layout) for t in p.inputs)
            try:
                compiled[(p.index, b)] = fn = be.compile(p.gm, xs)
                cands.append((b, Call(fn, xs)))
            except Exception:  # noqa: BLE001 - a backend that cannot take the partition is not a candidate
                continue
        if not cands:
            raise FxscaleError(f"no backend of the inference plan can run partition {p.name}")
        times = time_calls([c for _, c in cands], protocol)
        best = min(range(len(cands)), key=lambda i: times[i].value)
        choice.append(cands[best][0])
        names.append(p.name)
    return build_hybrid(parts, choice, compiled, layouts), names


__all__ = ["compile_plan", "load_hybrid", "measure_under_plan"]
