"""The hybrid module: the split graph whose partition submodules call their chosen compiled implementation.

Each partition submodule is replaced by a ``CompiledPartition`` that converts its 4-D inputs to its backend's layout
(the boundary transition; a no-op when the producer already returns that layout) and calls the compiled callable;
the graph's outputs are converted back to contiguous tensors. Compiled callables (ORT sessions, OpenVINO models)
cannot be pickled, so what is saved is the inference plan and the optimised GraphModule, and ``load_hybrid``
recompiles each partition with the backend the plan names.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.utils import _pytree as pytree

from fxscale.optimize.measure import to_layout
from fxscale.optimize.partition import Partitioning


class CompiledPartition(nn.Module):
    """One partition on its chosen backend: inputs to `layout`, then the compiled callable."""

    def __init__(self, fn: Callable[..., Any], backend: str, layout: str, name: str) -> None:
        super().__init__()
        self.fn, self.backend, self.layout, self.partition = fn, backend, layout, name

    def forward(self, *args: Any) -> Any:
        return self.fn(*(to_layout(a, self.layout) for a in args))

    def extra_repr(self) -> str:
        return f"{self.partition}: backend={self.backend}, layout={self.layout}"


def contiguous_outputs(out: Any) -> Any:
    """Every 4-D tensor leaf of `out` in the contiguous (NCHW) format."""
    return pytree.tree_map(lambda t: to_layout(t, "contiguous"), out)


def build_hybrid(parts: Partitioning, choice: Sequence[str], compiled: Mapping[tuple[int, str], Callable[..., Any]],
                 layouts: Mapping[str, str]) -> fx.GraphModule:
    """A GraphModule running partition i with backend choice[i] (compiled[(i, choice[i])])."""
    graph = copy.deepcopy(parts.split.graph)
    hybrid = fx.GraphModule(parts.split, graph, "HybridModule")
    for p, name in zip(parts.partitions, choice):
        setattr(hybrid, p.name, CompiledPartition(compiled[(p.index, name)], name, layouts[name], p.name))
    out = next(n for n in hybrid.graph.nodes if n.op == "output")
    if any(layouts[c] != "contiguous" for c in choice):
        with hybrid.graph.inserting_before(out):
            conv = hybrid.graph.call_function(contiguous_outputs, (out.args[0],))
        out.args = (conv,)
    hybrid.graph.lint()
    hybrid.recompile()
    hybrid.eval()
    return hybrid


def eager_reference(parts: Partitioning) -> list[Any]:
    """Each partition's eager output on its example inputs."""
    outs = []
    with torch.no_grad():
        for p in parts.partitions:
            outs.append(p.gm(*p.inputs))
    return outs


__all__ = ["CompiledPartition", "build_hybrid", "contiguous_outputs", "eager_reference"]
