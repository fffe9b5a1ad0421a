"""Verification rules run after every pass: lint, recompile, forward at the new size, output shapes."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from fxscale.errors import VerificationError
from fxscale.tracing import META, _shapes_of, example_inputs


def _lint(gm: fx.GraphModule) -> None:
    try:
        gm.graph.lint()
        gm.recompile()
    except Exception as e:  # noqa: BLE001
        raise VerificationError(f"graph lint failed: {e}") from e


class _Runner(fx.Interpreter):
    """Interpreter that remembers the node it is running, to name it in errors."""

    current: fx.Node | None = None

    def run_node(self, n: fx.Node) -> Any:
        self.current = n
        return super().run_node(n)


def _forward(gm: fx.GraphModule, inputs: tuple) -> Any:
    runner = _Runner(gm)
    try:
        with torch.no_grad():
            return runner.run(*inputs)
    except Exception as e:  # noqa: BLE001
        n = runner.current
        where = f"node {n.name} ({n.op} {n.target})" if n is not None else "graph"
        raise VerificationError(f"forward pass failed at {where}: {type(e).__name__}: {e}") from e


def verify(gm: fx.GraphModule, expected_output_shapes: Any = None) -> Any:
    """Check a rebuilt GraphModule: lint, recompile, eval forward at its input size, output shapes."""
    _lint(gm)
    was = gm.training
    gm.eval()
    try:
        out = _forward(gm, example_inputs(gm))
        compiled = gm(*example_inputs(gm))
    finally:
        gm.train(was)
    shapes = _shapes_of(out)
    if _shapes_of(compiled) != shapes:
        raise VerificationError("recompiled forward and interpreter disagree on output shapes")
    want = expected_output_shapes if expected_output_shapes is not None else gm.meta[META]["output_shapes"]
    if shapes != want:
        raise VerificationError(f"output shapes changed: {shapes} != expected {want}")
    return out


def verify_train(gm: fx.GraphModule) -> Any:
    """Run the train-mode graph (aux heads) once on a copy, so running statistics stay untouched."""
    import copy
    tgm = copy.deepcopy(gm.meta[META]["train_gm"]).train()
    _lint(tgm)
    return _forward(tgm, example_inputs(gm, resolution=None))
