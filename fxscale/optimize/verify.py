"""Numerical verification of the graph-optimisation passes as a declarative rule table.

``PASS_RULES`` says, per pass, how its output must match its input on the traced example inputs: ``exact``
(``torch.equal``; the pass only removes identities or re-wires equal values) or ``close`` (``assert_close`` with
the given rtol and an atol relative to the output scale; folding BatchNorm into weights re-associates floating
point products). ``optimize_graph`` runs the passes one by one under the PassManager and checks each against the
graph it was given, so a broken pass is named.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx

from fxscale.errors import VerificationError
from fxscale.optimize.graphopt import DEFAULT_PASSES, PASSES
from fxscale.passes.base import PassManager
from fxscale.passes.verify import RULES
from fxscale.tracing import META, example_inputs, output_leaves


@dataclass(frozen=True)
class Check:
    """How a pass's output must match its input: exact, or close within rtol / atol x output scale."""

    exact: bool
    rtol: float = 0.0
    atol: float = 0.0
    why: str = ""


EXACT = Check(True, why="the maths is unchanged: identities removed or equal values re-wired")
PASS_RULES: dict[str, Check] = {
    "fold_bn": Check(False, 1e-4, 1e-5, "BN's scale and shift are folded into weights: products re-associate"),
    "remove_dropout_identity": EXACT,
    "fold_constants": Check(True, why="the folded subgraph runs the same ops on the same parameters once"),
    "remove_redundant_views": EXACT,
    "dce": EXACT,
    "mark_activation_fusion": Check(True, why="a marker pass: nothing is rewritten"),
}
SHAPE_RULES = tuple(r for r in RULES if r.name in ("forward", "output_shapes"))


def _outputs(gm: fx.GraphModule, inputs: tuple) -> list[torch.Tensor]:
    with torch.no_grad():
        out = gm(*inputs)
    return [v.detach().clone() for _, v in output_leaves(out) if isinstance(v, torch.Tensor)]


def check_outputs(name: str, rule: Check, got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    """Max abs diff of `got` against `want`; VerificationError naming the pass when the rule is broken."""
    if len(got) != len(want):
        raise VerificationError(f"pass {name}: {len(got)} outputs instead of {len(want)}")
    worst = 0.0
    for i, (a, b) in enumerate(zip(got, want)):
        if a.shape != b.shape:
            raise VerificationError(f"pass {name}: output {i} has shape {tuple(a.shape)} instead of {tuple(b.shape)}")
        diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        worst = max(worst, diff)
        if rule.exact:
            if not torch.equal(a, b):
                raise VerificationError(f"pass {name} must be exact but output {i} differs by {diff:.3e}")
            continue
        scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
        try:
            torch.testing.assert_close(a, b, rtol=rule.rtol, atol=rule.atol * scale)
        except AssertionError as e:
            first = str(e).strip().splitlines()[0]
            raise VerificationError(f"pass {name}: output {i} differs by {diff:.3e} (rtol {rule.rtol:g}, atol "
                                    f"{rule.atol * scale:.1e}): {first}") from None
    return worst


def inference_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """An eval-mode deep copy of an fxscale-traced GraphModule without its train-mode graph."""
    if META not in getattr(gm, "meta", {}):
        raise VerificationError("graph optimisation needs a GraphModule from fxscale.trace")
    train_gm = gm.meta[META].get("train_gm")
    gm.meta[META]["train_gm"] = None
    try:
        new = copy.deepcopy(gm)
    finally:
        gm.meta[META]["train_gm"] = train_gm
    new.meta[META] = dict(gm.meta[META], train_gm=None)
    return new.eval()


def optimize_graph(gm: fx.GraphModule, passes: Optional[Sequence[str]] = None,
                   inputs: Optional[tuple] = None) -> tuple[fx.GraphModule, dict[str, Any]]:
    """Run the named passes (default DEFAULT_PASSES) on an inference copy of `gm`, each checked by PASS_RULES.

    Returns (optimised GraphModule, report): per pass its own report, whether it modified the graph and the max
    abs diff of its outputs against its input's. `gm` is not modified.
    """
    names = list(DEFAULT_PASSES if passes is None else passes)
    unknown = [n for n in names if n not in PASSES]
    if unknown:
        raise VerificationError(f"unknown graph pass {unknown[0]!r}; known: {', '.join(PASSES)}")
    new = inference_copy(gm)
    xs = inputs if inputs is not None else example_inputs(new)
    want = _outputs(new, xs)
    report: dict[str, Any] = {}
    for name in names:
        result = PassManager([PASSES[name]()], rules=SHAPE_RULES)(new)
        new = result.graph_module
        got = _outputs(new, xs)
        diff = check_outputs(name, PASS_RULES[name], got, want)
        inner = dict(result.report.get(name, {}))
        if not inner and name == "mark_activation_fusion":
            from fxscale.optimize.graphopt import fusion_markers
            inner = {"marked": fusion_markers(new)}
        report[name] = {"modified": result.modified, "max_abs_diff": diff, **inner}
        want = got
    return new, report


__all__ = ["Check", "PASS_RULES", "check_outputs", "inference_copy", "optimize_graph"]
