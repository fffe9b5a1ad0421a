"""Trace a model into a torch.fx GraphModule with shape metadata under node.meta["fxscale"]."""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from fxscale.errors import TraceError

META = "fxscale"  # the one node.meta / gm.meta key fxscale writes


class LeafTracer(fx.Tracer):
    """fx.Tracer that also keeps user-registered module types (and torch.nn modules) as leaves."""

    def __init__(self, leaf_modules: Iterable[type] = ()) -> None:
        super().__init__()
        self.leaf_types = tuple(leaf_modules)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, qualname)


def _as_tuple(example_input: Any) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


def _trace_graph(model: nn.Module, leaf_modules: Sequence[type]) -> fx.GraphModule:
    tracer = LeafTracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # noqa: BLE001 - re-raised with guidance
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}. "
            "Data-dependent control flow or unsupported Python in forward() must be hidden inside a leaf: "
            "pass leaf_modules=[TheModuleType] to fxscale.trace (or torch.fx.wrap a free function).") from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def propagate_shapes(gm: fx.GraphModule, *inputs: torch.Tensor) -> Any:
    """Run ShapeProp and copy each node's tensor shapes into node.meta["fxscale"]["shape"]."""
    try:
        with torch.no_grad():
            out = ShapeProp(gm).propagate(*inputs)
    except Exception as e:  # noqa: BLE001
        node = _failing_node(gm, inputs)
        raise TraceError(f"shape propagation failed at node {node}: {type(e).__name__}: {e}") from e
    for node in gm.graph.nodes:
        node.meta.setdefault(META, {})["shape"] = _shapes(node.meta.get("tensor_meta"))
    return out


def _shapes(tm: Any) -> Any:
    """Tensor shapes (tuples) from ShapeProp metadata, nested like the value."""
    if tm is None:
        return None
    if hasattr(tm, "shape"):
        return tuple(int(s) for s in tm.shape)
    if isinstance(tm, (list, tuple)):
        return type(tm)(_shapes(t) for t in tm) if not hasattr(tm, "_fields") else tuple(_shapes(t) for t in tm)
    if isinstance(tm, dict):
        return {k: _shapes(v) for k, v in tm.items()}
    return None


def _failing_node(gm: fx.GraphModule, inputs: tuple) -> str:
    """Name the first node whose interpretation raises (for error messages)."""
    class _Find(fx.Interpreter):
        last = "?"

        def run_node(self, n: fx.Node) -> Any:
            _Find.last = f"{n.name} ({n.op} {n.target})"
            return super().run_node(n)
    try:
        with torch.no_grad():
            _Find(gm).run(*inputs)
    except Exception:  # noqa: BLE001
        return _Find.last
    return "?"


def trace(model: nn.Module, example_input: Any, leaf_modules: Sequence[type] = (),
          mode: Optional[str] = None) -> fx.GraphModule:
    """Trace `model` (eval mode unless mode="train") into a GraphModule with shapes on every node."""
    if not isinstance(model, nn.Module):
        raise TraceError(f"fxscale.trace needs an nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example_input)
    was_training = model.training
    model.train(mode == "train")
    try:
        gm = _trace_graph(model, leaf_modules)
        gm.train(mode == "train")
        out = propagate_shapes(gm, *inputs)
    finally:
        model.train(was_training)
    train_gm = _train_only_graph(model, gm, inputs, leaf_modules) if mode != "train" else None
    gm.meta[META] = {
        "train_gm": train_gm,
        "input_shapes": [tuple(t.shape) for t in inputs],
        "input_dtypes": [t.dtype for t in inputs],
        "output_shapes": _shapes_of(out),
        "leaf_modules": tuple(leaf_modules),
        "resolution": tuple(inputs[0].shape[2:]) if inputs[0].dim() >= 3 else None,
    }
    return gm


def _module_targets(gm: fx.GraphModule) -> set:
    return {n.target for n in gm.graph.nodes if n.op == "call_module"}


def share_modules(gm: fx.GraphModule, train_gm: fx.GraphModule) -> None:
    """Make the train-mode graph use the eval graph's module objects wherever both call one."""
    for target in _module_targets(train_gm) & _module_targets(gm):
        parent, _, leaf = target.rpartition(".")
        setattr(train_gm.get_submodule(parent) if parent else train_gm, leaf, gm.get_submodule(target))


def _train_only_graph(model: nn.Module, gm: fx.GraphModule, inputs: tuple,
                      leaf_modules: Sequence[type]) -> Optional[fx.GraphModule]:
    """The train-mode trace when it calls modules the eval trace does not (GoogLeNet/Inception aux heads)."""
    import copy
    twin = copy.deepcopy(model).train()
    try:
        tgm = _trace_graph(twin, leaf_modules)
    except TraceError:
        return None
    if not (_module_targets(tgm) - _module_targets(gm)):
        return None
    state = copy.deepcopy(tgm.state_dict())
    tgm.train()
    propagate_shapes(tgm, *inputs)
    tgm.load_state_dict(state)
    share_modules(gm, tgm)
    return tgm


def train_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """The GraphModule to train with: the train-mode graph (aux heads) if the model has one, else gm."""
    tgm = gm.meta.get(META, {}).get("train_gm")
    return tgm.train() if tgm is not None else gm.train()


def _shapes_of(out: Any) -> Any:
    """Shapes of a forward result (tensor, tuple, list, dict, namedtuple)."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, dict):
        return {k: _shapes_of(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return tuple(_shapes_of(v) for v in out)
    return None


def example_inputs(gm: fx.GraphModule, resolution: Optional[tuple] = None, seed: int = 0) -> tuple:
    """Random inputs of the traced shapes (spatial dims of the first input replaced by `resolution`)."""
    info = gm.meta.get(META)
    if not info:
        raise TraceError("this GraphModule was not produced by fxscale.trace (no gm.meta['fxscale'])")
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (shape, dtype) in enumerate(zip(info["input_shapes"], info["input_dtypes"])):
        if i == 0 and resolution is not None:
            shape = tuple(shape[:2]) + tuple(resolution)
        out.append(torch.randn(shape, generator=g).to(dtype) if dtype.is_floating_point
                   else torch.zeros(shape, dtype=dtype))
    return tuple(out)
