"""Verification rules run after every pass: lint, recompile, forward at the new size, output shapes."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from fxscale.errors import VerificationError
from fxscale.tracing import META, _shapes_of, eval_only_error, example_inputs, leaf_at


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
    if expected_output_shapes is not None:
        if shapes != expected_output_shapes:
            raise VerificationError(f"output shapes changed: {shapes} != expected {expected_output_shapes}")
        return out
    want = gm.meta[META]["output_shapes"]
    dense = gm.meta[META].get("dense_outputs") or {}
    if shapes != want:
        note = f" (dense outputs, which follow the input size: {[list(p) for p in dense]})" if dense else ""
        raise VerificationError(f"output shapes changed: {shapes} != expected {want}{note}")
    errors = dense_output_errors(gm, shapes)
    if errors:
        raise VerificationError("; ".join(errors))
    return out


def dense_output_errors(gm: fx.GraphModule, shapes: Any) -> list[str]:
    """Check each dense output against the current input size (H, W).

    A dense leaf keeps its traced leading dims; its trailing dims equal the traced ones at the traced input size
    and otherwise move in the same direction as the input size (conv / pool / interpolate output sizes are
    monotone in the input size; by how much depends on their rounding, which only the shape propagation of the
    pass knows, so the amount is checked against the shapes the pass recorded). In 'input' mode the current
    input size is the new one; in 'resize' mode it is the traced one (the dense outputs are resized back), so
    one rule covers both modes.
    """
    info = gm.meta[META]
    hw = tuple(info["input_shapes"][0][-2:])
    errors = []
    for path, spec in (info.get("dense_outputs") or {}).items():
        try:
            got = tuple(leaf_at(shapes, path))
        except (KeyError, IndexError, TypeError):
            errors.append(f"dense output {list(path)} is missing from the outputs")
            continue
        traced, traced_hw = tuple(spec["shape"]), tuple(spec.get("input", hw))
        if len(got) != len(traced) or got[:-2] != traced[:-2]:
            errors.append(f"dense output {list(path)}: shape {got} does not keep the traced leading dims "
                          f"{traced[:-2]}")
            continue
        want = [a * s + b for (a, b), s in zip(spec["affine"], hw)]
        bad = False
        for g, t, h, h0 in zip(got[-2:], traced[-2:], hw, traced_hw):
            moved, grew = (g > t) - (g < t), (h > h0) - (h < h0)
            bad |= moved * grew < 0 or (grew == 0 and moved != 0)
        if bad:
            errors.append(f"dense output {list(path)}: spatial size {got[-2:]} does not follow the input size "
                          f"{hw} (traced {traced[-2:]} at {traced_hw}, expected about "
                          f"{tuple(round(float(w), 2) for w in want)})")
    return errors


def verify_train(gm: fx.GraphModule) -> Any:
    """Run the train-mode graph (aux heads) once on a copy, so running statistics stay untouched."""
    import copy
    if gm.meta[META].get("eval_only"):
        raise eval_only_error(gm)
    tgm = copy.deepcopy(gm.meta[META]["train_gm"]).train()
    _lint(tgm)
    return _forward(tgm, example_inputs(gm, resolution=None))
