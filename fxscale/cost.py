"""Analytic cost model: per-layer MACs/FLOPs, parameters, activations and bytes from groups, shapes and a plan.

Conventions (pycls/fvcore style):
- ``macs`` counts multiply-accumulates of conv, linear, matmul and attention ops; ``flops = 2 * macs``
  (what ``torch.utils.flop_counter.FlopCounterMode`` reports). Biases, norms, activations and pooling add
  no FLOPs; they show up in bytes moved instead.
- ``params``: parameter elements of the rebuilt model (buffers such as BN running stats excluded).
- ``activations``: output elements of every op that computes (views, reshapes and getitems excluded).
- ``bytes``: elements read (inputs + parameters) plus written (outputs), times the dtype size, per op,
  without fusion: an upper bound on memory traffic.

The formulas per op live next to that op's channel rule (``fxscale.analysis.layers`` / ``ops``). Nothing
is rebuilt: a plan only changes channel widths (through the group labels) and the resolution (through
one cached shape propagation per resolution), so a search can call this thousands of times.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import torch
import torch.fx as fx

from fxscale.analysis.graph import ChannelGraph, analyze
from fxscale.ops.table import module_row, node_row
from fxscale.plan import ScalingPlan
from fxscale.tracing import META

if TYPE_CHECKING:
    from fxscale.materialize import Materializer

Dim = Union[int, tuple]  # a fixed size, or a channel label as ((atom, inner), ...)


@dataclass
class LayerCost:
    """Cost of one graph node under a plan."""

    name: str
    kind: str  # kernel family: conv_k3, dwconv_k3, linear, matmul, attention, norm, pool, elementwise, view, ...
    macs: int
    params: int
    activations: int
    bytes: int
    shape: tuple = ()  # output shape under the plan

    @property
    def flops(self) -> int:
        """FLOPs = 2 x MACs."""
        return 2 * self.macs


@dataclass
class CostReport:
    """Per-layer and total costs of a model under a plan."""

    layers: list[LayerCost]
    resolution: Optional[tuple[int, int]]
    dtype_bytes: int = 4
    extra_params: int = 0  # parameters no graph node reads (e.g. modules used only in training)

    macs = property(lambda self: sum(r.macs for r in self.layers))
    params = property(lambda self: sum(r.params for r in self.layers) + self.extra_params)
    activations = property(lambda self: sum(r.activations for r in self.layers))
    bytes = property(lambda self: sum(r.bytes for r in self.layers))

    @property
    def flops(self) -> int:
        """Total FLOPs = 2 x MACs."""
        return 2 * self.macs

    def by_kind(self) -> dict[str, dict[str, int]]:
        """Totals per kernel kind."""
        out: dict[str, dict[str, int]] = {}
        for r in self.layers:
            d = out.setdefault(r.kind, {"layers": 0, "macs": 0, "params": 0, "bytes": 0})
            d["layers"] += 1
            d["macs"] += r.macs
            d["params"] += r.params
            d["bytes"] += r.bytes
        return out

    def summary(self) -> dict[str, Any]:
        """Totals as a dict (FLOPs = 2 x MACs)."""
        return {"resolution": list(self.resolution) if self.resolution else None, "macs": self.macs,
                "flops": self.flops, "params": self.params, "activations": self.activations,
                "bytes": self.bytes, "dtype_bytes": self.dtype_bytes}

    def to_dict(self) -> dict[str, Any]:
        """Totals plus every layer."""
        return {**self.summary(), "layers": [asdict(r) for r in self.layers]}

    def table(self, all_layers: bool = False) -> str:
        """Plain-text per-layer table (computing layers only unless all_layers)."""
        rows = [f"{'layer':36s} {'kind':12s} {'MFLOPs':>10s} {'params':>10s} {'acts':>10s} {'KB':>10s}"]
        for r in self.layers:
            if all_layers or r.macs or r.params:
                rows.append(f"{r.name[:36]:36s} {r.kind:12s} {r.flops / 1e6:10.3f} {r.params:10d} "
                            f"{r.activations:10d} {r.bytes / 1024:10.1f}")
        rows.append(f"{'total':36s} {'':12s} {self.flops / 1e6:10.3f} {self.params:10d} {self.activations:10d} "
                    f"{self.bytes / 1024:10.1f}")
        return "\n".join(rows)


@dataclass
class _Layer:
    name: str
    cost: Callable[[list, tuple], tuple[str, int]]
    ins: list[list[Dim]]
    out: list[Dim]
    params: list[list[Dim]]
    view: bool = False


@dataclass
class CostModel:
    """Compiled cost templates of one analysed graph at one resolution; evaluate() under any widths."""

    cg: ChannelGraph
    resolution: Optional[tuple[int, int]] = None
    mode: str = "resize"
    dtype_bytes: int = 4
    layers: list[_Layer] = field(default_factory=list, init=False)
    touches: dict[int, list[int]] = field(default_factory=dict, init=False)  # size root -> layer indices
    extra_params: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        traced = self.cg.gm.meta[META].get("resolution")
        if self.resolution is not None and tuple(self.resolution) != tuple(traced or ()):
            gm = _resolution_gm(self.cg, tuple(self.resolution), self.mode)
        else:
            gm = self.cg.gm
            self.resolution = tuple(traced) if traced else None
        self._compile(gm)

    # ---- compile --------------------------------------------------------------------------------------
    def _compile(self, gm: fx.GraphModule) -> None:
        at = self.cg.ctx.atoms
        labels = {n.name: n.meta.get(META, {}).get("labels") for n in self.cg.gm.graph.nodes}
        ptmpl = _param_templates(self.cg, gm)
        owned: set[str] = set()
        uncosted: dict[str, list[str]] = {}
        for node in gm.graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            lab = labels.get(node.name) if node.name in labels else _inherit(node, labels)
            labels.setdefault(node.name, lab)
            cost, pnames = _cost_fn(self.cg, node)
            if node.op == "call_module" and module_row(self.cg.ctx.modules[node.target]) is None:
                leaf = _leaf_macs(self.cg.ctx.modules[node.target], node)
                if leaf is None:
                    uncosted.setdefault(type(self.cg.ctx.modules[node.target]).__name__, []).append(str(node.target))
                else:
                    cost = _fixed_cost(leaf)
            pnames = [p for p in pnames if p in ptmpl and p not in owned]
            owned.update(pnames)
            ins = [_template(at, a.meta.get(META, {}).get("shape"), labels.get(a.name)) for a in _node_args(node)]
            out = _template(at, node.meta.get(META, {}).get("shape"), lab)
            layer = _Layer(node.name, cost, [t for t in ins if t is not None], out or [],
                           [ptmpl[p] for p in pnames])
            layer.view = node.op == "get_attr" or cost([[1] * len(t) for t in layer.ins], (1,) * len(out or []))[0] \
                == "view"
            self.layers.append(layer)
        for kind, targets in uncosted.items():
            warnings.warn(f"fxscale.cost: leaf module type {kind} has no cost formula ({len(targets)} modules: "
                          f"{', '.join(targets[:3])}{', ...' if len(targets) > 3 else ''}): its MACs are counted as "
                          "0, its parameters and bytes still count", UserWarning, stacklevel=3)
        self.extra_params = sum(math.prod(d if isinstance(d, int) else _width(at, d) for d in t)
                                for p, t in ptmpl.items() if p not in owned)
        for i, layer in enumerate(self.layers):
            for root in {at.sized.find(a) for t in layer.ins + [layer.out] + layer.params for d in t
                         if not isinstance(d, int) for a, _k in d}:
                self.touches.setdefault(root, []).append(i)

    # ---- evaluate -------------------------------------------------------------------------------------
    def sizes(self, plan: Optional[ScalingPlan] = None) -> dict[int, int]:
        """New size of every leaf atom under a plan's widths (validated)."""
        from fxscale.passes.channel_map import new_sizes
        plan = plan or ScalingPlan()
        plan.validate(self.cg)
        return new_sizes(self.cg, plan)

    def layer(self, i: int, sizes: dict[int, int]) -> LayerCost:
        """Cost of layer i under atom sizes."""
        L = self.layers[i]
        ins = [_shape(t, sizes) for t in L.ins]
        out = _shape(L.out, sizes)
        params = sum(math.prod(_shape(t, sizes)) for t in L.params)
        kind, macs = L.cost(ins, out)
        if L.view:
            return LayerCost(L.name, kind, 0, params, 0, 0, out)
        act = math.prod(out) if out else 0
        moved = sum(math.prod(s) for s in ins) + act + params
        return LayerCost(L.name, kind, int(macs), params, act, moved * self.dtype_bytes, out)

    def evaluate(self, sizes: dict[int, int]) -> CostReport:
        """Costs of every layer under atom sizes."""
        rows = [self.layer(i, sizes) for i in range(len(self.layers))]
        return CostReport(rows, self.resolution, self.dtype_bytes, self.extra_params)

    def report(self, plan: Optional[ScalingPlan] = None) -> CostReport:
        """Costs under a plan (its resolution must match this model's)."""
        return self.evaluate(self.sizes(plan))

    def layers_of(self, group: str) -> list[int]:
        """Indices of the layers whose cost depends on a group's width."""
        return self.touches.get(self.cg[group].root, [])

    def set_width(self, sizes: dict[int, int], group: str, width: int) -> list[int]:
        """Change one group's width in `sizes` in place; return the layers to re-evaluate."""
        g = self.cg[group]
        for a in self.cg.ctx.atoms.members[g.root]:
            sizes[a] = width // g.parts
        return self.layers_of(group)


def cost(cg_or_gm: Union[ChannelGraph, fx.GraphModule], plan: Optional[ScalingPlan] = None, *,
         mode: str = "resize", dtype_bytes: int = 4, materializer: Optional["Materializer"] = None) -> CostReport:
    """Per-layer and total MACs/FLOPs, params, activations and bytes of a traced model under a plan.

    A depth plan is costed on the deeper graph (new blocks are new layers; still no training), rebuilt by
    fxscale.materialize; pass a `materializer` to reuse that rebuild across calls.
    """
    cg = cg_or_gm if isinstance(cg_or_gm, ChannelGraph) else analyze(cg_or_gm)
    plan = plan or ScalingPlan()
    if getattr(plan, "depths", None):
        from fxscale.materialize import materialize
        cg, plan = materialize(cg, plan, mode=mode, cache=materializer)
    return cost_model(cg, plan.resolution, mode=mode, dtype_bytes=dtype_bytes).report(plan)


def cost_model(cg: ChannelGraph, resolution: Optional[tuple[int, int]] = None, *, mode: str = "resize",
               dtype_bytes: int = 4) -> CostModel:
    """The (cached on the ChannelGraph) cost model of a graph at one resolution."""
    cache = cg.__dict__.setdefault("_cost_models", {})
    key = (tuple(resolution) if resolution else None, mode, dtype_bytes)
    if key not in cache:
        cache[key] = CostModel(cg, key[0], mode, dtype_bytes)
    return cache[key]


# ---- helpers ----------------------------------------------------------------------------------------
def _width(at: Any, parts: tuple, sizes: Optional[dict] = None) -> int:
    return sum((sizes or {}).get(a, at.size[a]) * k for a, k in parts)


def _shape(t: list[Dim], sizes: dict[int, int]) -> tuple:
    return tuple(d if isinstance(d, int) else sum(sizes[a] * k for a, k in d) for d in t)


def _first_tensor_shape(shape: Any) -> Optional[tuple]:
    if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape):
        return shape
    if isinstance(shape, (tuple, list)) and shape:
        return _first_tensor_shape(shape[0])
    return None


def _template(at: Any, shape: Any, labels: Any) -> Optional[list[Dim]]:
    """Per-dim template of a tensor: ints for fixed dims, expanded labels for channel dims.

    A labelled dim whose traced width differs from its size at the costed resolution (a token count labelled
    by the analysis, frozen because it follows the resolution) is a fixed size there, not a channel width."""
    shape = _first_tensor_shape(shape)
    if shape is None:
        return None
    while isinstance(labels, tuple) and labels and not _is_label(labels):  # a container: its first tensor
        labels = labels[0]
    if not isinstance(labels, list) or len(labels) != len(shape):
        return list(shape)
    out: list[Dim] = []
    for s, lab in zip(shape, labels):
        parts = None if lab is None else tuple((p.atom, p.inner) for p in at.expand(lab))
        out.append(s if parts is None or _width(at, parts) != s else parts)
    return out


def _is_label(x: Any) -> bool:
    return isinstance(x, tuple) and bool(x) and hasattr(x[0], "atom")


def _node_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: out.append(a) or a)
    return out


def _inherit(node: fx.Node, labels: dict) -> Any:
    """Labels of a node inserted by a pass (resize, pooling): those of its first input."""
    args = _node_args(node)
    return labels.get(args[0].name) if args else None


def _cost_fn(cg: ChannelGraph, node: fx.Node) -> tuple[Callable, list[str]]:
    """The node's cost formula bound to its module, and the parameter paths it reads."""
    if node.op == "call_module":
        mod = cg.ctx.modules[node.target]
        row = module_row(mod)
        names = [f"{node.target}.{n}" for n, _p in mod.named_parameters()]
        if row is None:
            return (lambda ins, out: ("other", 0)), names
        return (lambda ins, out: row.cost_of(mod, ins, out)), names
    if node.op == "get_attr":
        return (lambda ins, out: ("view", 0)), [node.target]
    op = node_row(node)
    return (lambda ins, out: op.cost_of(node, ins, out)), []


def _fixed_cost(macs: int) -> Callable:
    return lambda ins, out: ("leaf", macs)


def _leaf_macs(mod: torch.nn.Module, node: fx.Node) -> Optional[int]:
    """MACs of a leaf module without a rule, counted once by FlopCounterMode on zero inputs of its recorded input
    shapes (the graph at the costed resolution). The analysis freezes every channel a rule-less leaf touches, so
    no width plan changes them; None when the module cannot be run that way (the caller warns)."""
    def zeros(a: Any) -> Any:
        if not isinstance(a, fx.Node):
            return a
        if "value" in a.meta.get(META, {}):  # a size read off a shape during shape propagation
            return a.meta[META]["value"]
        shape = _first_tensor_shape(a.meta.get(META, {}).get("shape"))
        if shape is None:
            raise ValueError(f"{a.name} has no tensor shape")
        dtype = getattr(a.meta.get("tensor_meta"), "dtype", None) or torch.float32
        return torch.zeros(shape, dtype=dtype)
    flags = [(m, m.training) for m in mod.modules()]
    try:
        args, kwargs = fx.node.map_aggregate((node.args, node.kwargs), zeros)
        mod.eval()  # in eval mode: counting must not move BatchNorm statistics
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return reference_flops(mod, *args, **kwargs) // 2
    except Exception:  # noqa: BLE001 - not runnable on zeros of its shapes: warned as uncosted
        return None
    finally:
        for m, training in flags:
            m.train(training)


def _param_templates(cg: ChannelGraph, gm: fx.GraphModule) -> dict[str, list[Dim]]:
    """Every parameter of ``gm`` (the eval model, or it at the costed resolution; by path) with its channel dims
    as labels (a dim the resolution resized, such as a position-embedding table's, stays a fixed size)."""
    at = cg.ctx.atoms
    dims: dict[str, dict[int, Any]] = {}
    for use in cg.ctx.uses.values():
        for pname, d in use.params.items():
            dims[f"{use.name}.{pname}" if pname else use.name] = {k: lab for k, (lab, _m) in d.items()}
    out = {}
    for name, p in gm.named_parameters():
        d = dims.get(name, {})
        out[name] = _template(at, tuple(p.shape), [d.get(k) for k in range(p.dim())]) or []
    return out


def _resolution_gm(cg: ChannelGraph, resolution: tuple[int, int], mode: str) -> fx.GraphModule:
    """The model with the resolution pass applied (shapes propagated at the new size), widths unchanged."""
    from fxscale.api import copy_graph_module
    from fxscale.passes.resolution import resolution_pass
    new = copy_graph_module(cg.gm)
    new.meta[META].pop("train_gm", None)
    with torch.no_grad():
        resolution_pass(new, resolution, mode)
    return new


def reference_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of one call counted by ``FlopCounterMode``, independent of the attention kernel torch picks.

    Fused attention kernels (``_scaled_dot_product_flash_attention_for_cpu`` since torch 2.14 on CPU, the
    native MHA fast path) are not counted by every torch's FlopCounterMode; under the math SDPA backend and
    with autograd on, attention decomposes into matmuls that every supported torch counts. This is the
    independent oracle the analytic model is tested against.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    with sdpa_kernel([SDPBackend.MATH]), torch.enable_grad(), FlopCounterMode(display=False) as fc:
        fn(*args, **kwargs)
    return int(fc.get_total_flops())


__all__ = ["CostModel", "CostReport", "LayerCost", "cost", "cost_model", "reference_flops"]
