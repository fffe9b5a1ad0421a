"""Partitions of an optimised graph: contiguous runs of its topological order, each a GraphModule runnable alone.

Granularities:
- ``op``: a new partition starts at every compute op (conv, linear, matmul): conv + its activation / elementwise
  tail form one fusible group;
- ``block`` (default): module-hierarchy blocks (``layer1.0``, ``features.3``); the block with the most compute ops
  is split into its sub-blocks while the count stays within ``max_partitions``, so the count stays manageable;
- ``whole``: one partition.

A contiguous run of a topological order is convex (a path leaving it and coming back would pass a node between
two of its nodes), so ``torch.fx.passes.split_module`` turns the runs into submodules with no cycle between them.
Partitions without a compute op are merged into their predecessor. Each partition's exact example inputs are
recorded by running the split graph once, and the edges between partitions (with their boundary tensors) are
what the selection prices as transitions.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.fx.passes.split_module import split_module
from torch.utils import _pytree as pytree

from fxscale.errors import FxscaleError
from fxscale.optimize.graphopt import is_conv_or_linear
from fxscale.tracing import example_inputs

GRANULARITIES = ("op", "block", "whole")
COMPUTE_FNS = (torch.matmul, torch.bmm, torch.mm, torch.einsum, F.scaled_dot_product_attention, operator.matmul,
               F.conv_transpose2d, F.conv_transpose1d)
SOURCE, SINK = -1, -2  # the graph's inputs and outputs, as pseudo partitions of edges


@dataclass
class Partition:
    """One partition: its node names in the optimised graph, its GraphModule and exact example inputs."""

    index: int
    name: str  # the split graph's submodule name (submod_<index>)
    nodes: list[str]
    gm: fx.GraphModule
    inputs: tuple[torch.Tensor, ...]
    output_shapes: list[list[int]] = field(default_factory=list)

    def signature(self) -> str:
        """The partition's code and input shapes (the key of cached timings)."""
        shapes = ";".join(f"{list(x.shape)}:{x.dtype}" for x in self.inputs)
        return f"{self.gm.code}\n{shapes}"


@dataclass
class Partitioning:
    """The split graph (a GraphModule calling submod_<i>), its partitions and the edges between them.

    edges[(u, v)]: the tensors partition u hands partition v (u = SOURCE: the graph's inputs; v = SINK: outputs).
    """

    split: fx.GraphModule
    partitions: list[Partition]
    edges: dict[tuple[int, int], list[torch.Tensor]]
    granularity: str
    inputs: tuple = ()  # the graph's example inputs

    def is_chain(self) -> bool:
        """Whether every edge joins consecutive partitions (then dynamic programming is exact)."""
        n = len(self.partitions)
        for u, v in self.edges:
            u = -1 if u == SOURCE else u
            v = n if v == SINK else v
            if v != u + 1:
                return False
        return True

    def inner_edges(self) -> list[tuple[int, int]]:
        return [e for e in self.edges if e[0] != SOURCE and e[1] != SINK]

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": p.name, "nodes": p.nodes, "input_shapes": [list(x.shape) for x in p.inputs],
                 "output_shapes": p.output_shapes} for p in self.partitions]


def is_compute(gm: fx.GraphModule, n: fx.Node) -> bool:
    """conv / linear (modules or functionals) and matrix products."""
    if is_conv_or_linear(gm, n) is not None:
        return True
    if n.op == "call_module":
        m = gm.get_submodule(n.target)
        return isinstance(m, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.MultiheadAttention))
    if n.op == "call_function":
        try:
            return n.target in COMPUTE_FNS
        except TypeError:
            return False
    return n.op == "call_method" and n.target in ("matmul", "bmm", "mm")


def module_path(n: fx.Node) -> list[str]:
    """The innermost module path of a node (its nn_module_stack), split into components ([] at top level)."""
    stack = n.meta.get("nn_module_stack") or {}
    if not stack:
        return []
    key = list(stack.keys())[-1].split("@")[0]
    value = list(stack.values())[-1]
    path = value[0] if isinstance(value, tuple) and isinstance(value[0], str) else key
    return [p for p in str(path).split(".") if p]


def _runs(nodes: Sequence[fx.Node], key: Any) -> list[list[fx.Node]]:
    out: list[list[fx.Node]] = []
    last = object()
    for n in nodes:
        k = key(n)
        if not out or k != last:
            out.append([])
        out[-1].append(n)
        last = k
    return out


def _merge_free(gm: fx.GraphModule, runs: list[list[fx.Node]]) -> list[list[fx.Node]]:
    """Runs without a compute op join their predecessor (the first one joins its successor)."""
    out: list[list[fx.Node]] = []
    pending: list[fx.Node] = []
    for r in runs:
        if any(is_compute(gm, n) for n in r):
            out.append(pending + r)
            pending = []
        elif out:
            out[-1].extend(r)
        else:
            pending.extend(r)
    if pending:
        if out:
            out[-1].extend(pending)
        else:
            out.append(pending)
    return out


def _balanced(gm: fx.GraphModule, pieces: list[list[fx.Node]], k: int) -> list[list[fx.Node]]:
    """Consecutive pieces joined into k chunks of about equal compute-op counts."""
    weights = [max(1, sum(is_compute(gm, n) for n in p)) for p in pieces]
    total, out, acc = sum(weights), [[]], 0
    for p, w in zip(pieces, weights):
        if out[-1] and acc + w / 2 > total * len(out) / k and len(out) < k:
            out.append([])
        out[-1].extend(p)
        acc += w
    return out


def _blocks(gm: fx.GraphModule, nodes: list[fx.Node], max_partitions: int) -> list[list[fx.Node]]:
    segs: list[tuple[int, list[fx.Node]]] = [(0, nodes)]
    while True:
        order = sorted(range(len(segs)), key=lambda i: -sum(is_compute(gm, n) for n in segs[i][1]))
        for i in order:
            depth, seg = segs[i]
            deepest = max((len(module_path(n)) for n in seg), default=0)
            pieces, d = [seg], depth
            while len(pieces) == 1 and d < deepest:
                d += 1
                pieces = _merge_free(gm, _runs(seg, lambda n, d=d: tuple(module_path(n)[:d])))
            room = max_partitions - len(segs) + 1
            if len(pieces) > 1 and room >= 2:
                if len(pieces) > room:
                    segs[i:i + 1] = [(d - 1, p) for p in _balanced(gm, pieces, room)]
                else:
                    segs[i:i + 1] = [(d, p) for p in pieces]
                break
        else:
            return [s for _, s in segs]


def segments(gm: fx.GraphModule, granularity: str = "block", max_partitions: int = 12) -> list[list[fx.Node]]:
    """The partitions' nodes (placeholders and outputs excluded; get_attr nodes go with their first user)."""
    if granularity not in GRANULARITIES:
        raise FxscaleError(f"unknown partition granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    if max_partitions < 1:
        raise FxscaleError(f"max_partitions must be >= 1, got {max_partitions}")
    body = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")]
    if not body:
        raise FxscaleError("the graph has no operation to partition")
    if granularity == "whole":
        return [body]
    if granularity == "op":
        count = iter(range(len(body) + 1))
        state = {"k": next(count)}

        def key(n: fx.Node) -> int:
            if is_compute(gm, n):
                state["k"] = next(count)
            return state["k"]
        return _merge_free(gm, _runs(body, key))
    return _blocks(gm, body, max_partitions)


def partition_graph(gm: fx.GraphModule, granularity: str = "block", max_partitions: int = 12,
                    inputs: Optional[tuple] = None, groups: Optional[Sequence[Sequence[str]]] = None) -> Partitioning:
    """Split `gm` into partitions (or into the given node-name `groups`, e.g. from an inference plan)."""
    xs = tuple(inputs) if inputs is not None else example_inputs(gm)
    if groups is not None:
        by_name = {n.name: n for n in gm.graph.nodes}
        missing = [name for g in groups for name in g if name not in by_name]
        if missing:
            raise FxscaleError(f"partition node {missing[0]!r} is not in the graph")
        segs = [[by_name[name] for name in g] for g in groups]
        granularity = "plan"
    else:
        segs = segments(gm, granularity, max_partitions)
    part_of = {n: i for i, seg in enumerate(segs) for n in seg}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            users = [u for u in n.users if u in part_of]
            part_of[n] = part_of[users[0]] if users else 0
    split = split_module(gm, gm, lambda n: part_of[n], keep_original_order=True, keep_original_node_name=True)
    return _describe(split, segs, xs, granularity)


def _describe(split: fx.GraphModule, segs: list[list[fx.Node]], xs: tuple, granularity: str) -> Partitioning:
    calls = [n for n in split.graph.nodes if n.op == "call_module" and n.target.startswith("submod_")]
    captured: dict[str, tuple] = {}

    class Capture(fx.Interpreter):
        def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
            if str(target).startswith("submod_"):
                captured[str(target)] = tuple(args)
            return super().call_module(target, args, kwargs)

    with torch.no_grad():
        Capture(split).run(*xs)
    index = {n: i for i, n in enumerate(calls)}
    partitions = []
    for i, n in enumerate(calls):
        sub = split.get_submodule(n.target)
        args = captured[n.target]
        if not all(isinstance(a, torch.Tensor) for a in args):
            raise FxscaleError(f"partition {n.target} takes a non-tensor input; use a coarser granularity")
        with torch.no_grad():
            out = sub(*args)
        shapes = [list(t.shape) for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        k = int(n.target.split("_")[1])
        partitions.append(Partition(i, n.target, [m.name for m in segs[k]], sub, args, shapes))
    edges: dict[tuple[int, int], list[torch.Tensor]] = {}

    def producer(a: fx.Node) -> int:
        while a.op == "call_function" and a.target is operator.getitem:
            a = a.args[0]
        return SOURCE if a.op == "placeholder" else index[a]

    for i, n in enumerate(calls):
        for a, value in zip(n.args, captured[n.target]):
            edges.setdefault((producer(a), i), []).append(value)
    out_node = next(n for n in split.graph.nodes if n.op == "output")
    for a in out_node.all_input_nodes:
        if a.op != "placeholder":
            edges.setdefault((producer(a), SINK), [])
    sink_values = _sink_values(split, xs, calls, index, producer)
    for key, vals in sink_values.items():
        edges[key] = vals
    return Partitioning(split, partitions, edges, granularity, tuple(xs))


def _sink_values(split: fx.GraphModule, xs: tuple, calls: list, index: dict, producer: Any) -> dict:
    """(u, SINK) -> the tensors partition u hands the graph's output."""
    out_node = next(n for n in split.graph.nodes if n.op == "output")
    env: dict[fx.Node, Any] = {}

    class Record(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            env[n] = v = super().run_node(n)
            return v

    with torch.no_grad():
        Record(split).run(*xs)
    got: dict[tuple[int, int], list[torch.Tensor]] = {}
    for a in out_node.all_input_nodes:
        if a.op == "placeholder":
            continue
        got.setdefault((producer(a), SINK), []).extend(
            t for t in pytree.tree_leaves(env[a]) if isinstance(t, torch.Tensor))
    return got


__all__ = ["GRANULARITIES", "Partition", "Partitioning", "SINK", "SOURCE", "is_compute", "module_path",
           "partition_graph", "segments"]
