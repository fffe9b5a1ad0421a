"""Verification as named rules, run once by the PassManager after the last pass (tinygrad's spec style).

Each rule takes ``(gm, context)`` and returns a list of problems; the first rule with problems raises a
VerificationError naming the rule and the node, module or parameter. In order:
- ``param_shapes`` (static): every parameter of every analysed layer has the width its channel labels give
  under the plan, so a mis-grouping is caught without running anything;
- ``forward``: one shape-propagating forward at the model's current input size (refreshes node shapes);
- ``opaque_forward``: where the graph calls code without an op row (an fx-wrapped function, a leaf module),
  one real eval forward too: meta tensors cannot see what such code does with values (an index past a table);
- ``output_shapes``: outputs keep their traced shapes, except dense outputs, which follow the input size;
- ``dense_outputs``: each dense output keeps its leading dims and moves with the input size;
- ``train_graph``: the train-mode graph (aux heads) runs, when there is one.
"""
from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx as fx

from fxscale.errors import TraceError, VerificationError
from fxscale.tracing import (
    META,
    eval_only_error,
    example_inputs,
    infer_shapes,
    leaf_at,
)

Context = Mapping[str, Any]


@dataclass(frozen=True)
class Rule:
    """One named verification rule: ``check(gm, context) -> problems``."""

    name: str
    check: Callable[[fx.GraphModule, Context], list[str]]
    doc: str = ""


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


def _get(root: Any, path: str) -> Any:
    for part in path.split(".") if path else ():
        root = getattr(root, part)
    return root


def check_param_shapes(gm: fx.GraphModule, context: Context) -> list[str]:
    """Static: every analysed parameter dim has the width of its channel label under the plan's atom sizes."""
    cg, maps = context.get("cg"), context.get("maps")
    if cg is None:
        return []
    from fxscale.analysis.graph import label_width
    sizes = maps.sizes if maps is not None else None
    tgm = gm.meta[META].get("train_gm")
    by_root = {g.root: g for g in cg.groups}
    at = cg.ctx.atoms
    problems = []
    for use in cg.ctx.uses.values():
        for pname, dims in use.params.items():
            path = f"{use.name}.{pname}" if pname else use.name
            try:
                t = _get(gm, path)
            except AttributeError:
                try:
                    t = _get(tgm, path) if tgm is not None else None
                except AttributeError:
                    t = None
            if not isinstance(t, torch.Tensor):
                continue
            for d, (lab, _mode) in dims.items():
                groups = [by_root.get(at.sized.find(a)) for a in at.leaves(lab)]
                if not any(g is not None and g.scalable for g in groups):
                    continue  # a fixed dim: widths never change it (a resolution change may: position tables)
                want = label_width(cg.ctx, lab, sizes)
                if d < t.dim() and t.shape[d] != want:
                    groups = sorted({g.name for g in groups if g is not None})
                    problems.append(f"parameter {path} dim {d} has {t.shape[d]} channels, its channel groups "
                                    f"{groups} give {want}")
    return problems


def check_forward(gm: fx.GraphModule, context: Context) -> list[str]:
    """One eval forward at the current input size, shape-only on meta tensors (node shapes are refreshed)."""
    was = gm.training
    gm.eval()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback of a failing node
            out_shapes = infer_shapes(gm, *example_inputs(gm))
    except TraceError as e:
        return [str(e).replace("shape propagation failed", "forward pass failed", 1)]
    finally:
        gm.train(was)
    context["_out"] = out_shapes  # type: ignore[index]
    return []


def check_opaque_forward(gm: fx.GraphModule, context: Context) -> list[str]:
    """One real eval forward (random inputs at the current size) when the graph calls code without an op row."""
    from fxscale.ops.table import UNKNOWN, module_row, node_row
    modules = dict(gm.named_modules())
    if not any(n.op == "call_function" and node_row(n) is UNKNOWN or n.op == "call_module"
               and module_row(modules[n.target]) is None for n in gm.graph.nodes):
        return []
    was = gm.training
    gm.eval()
    try:
        _forward(gm, example_inputs(gm))
    except VerificationError as e:
        return [str(e)]
    finally:
        gm.train(was)
    return []


def check_output_shapes(gm: fx.GraphModule, context: Context) -> list[str]:
    """Outputs keep the expected shapes (dense outputs were given their new shapes by the resolution pass)."""
    shapes = context.get("_out")
    want = context.get("expected_output_shapes") or gm.meta[META]["output_shapes"]
    if shapes == want:
        return []
    dense = gm.meta[META].get("dense_outputs") or {}
    note = f" (dense outputs, which follow the input size: {[list(p) for p in dense]})" if dense else ""
    return [f"output shapes changed: {shapes} != expected {want}{note}"]


def check_dense_outputs(gm: fx.GraphModule, context: Context) -> list[str]:
    if context.get("expected_output_shapes") is not None:
        return []
    return dense_output_errors(gm, context.get("_out"))


def check_train_graph(gm: fx.GraphModule, context: Context) -> list[str]:
    if gm.meta[META].get("train_gm") is None:
        return []
    verify_train(gm)
    return []


RULES: tuple[Rule, ...] = (
    Rule("param_shapes", check_param_shapes, "parameter widths follow their channel labels (static)"),
    Rule("forward", check_forward, "one shape-propagating forward at the current input size"),
    Rule("opaque_forward", check_opaque_forward, "a real forward where code without an op row runs"),
    Rule("output_shapes", check_output_shapes, "outputs keep their shapes; dense outputs follow the input"),
    Rule("dense_outputs", check_dense_outputs, "dense outputs keep leading dims and move with the input"),
    Rule("train_graph", check_train_graph, "the train-mode graph runs"),
)


def run_rules(gm: fx.GraphModule, rules: Sequence[Rule], context: Mapping[str, Any]) -> dict[str, Any]:
    """Run rules in order; the first with problems raises a VerificationError naming it. Returns the context
    with what the rules recorded (``_out``: the output shapes of the forward pass)."""
    ctx = dict(context)
    for rule in rules:
        problems = rule.check(gm, ctx)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise VerificationError(f"verification rule {rule.name}: {problems[0]}{more}")
    return ctx


def verify(gm: fx.GraphModule, expected_output_shapes: Any = None, **context: Any) -> Any:
    """Lint, recompile and run the eval-graph rules on a GraphModule; returns the forward's output shapes."""
    _lint(gm)
    rules = [r for r in RULES if r.name != "train_graph"]
    return run_rules(gm, rules, {"expected_output_shapes": expected_output_shapes, **context}).get("_out")


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
