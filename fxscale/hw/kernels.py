"""Kernel geometry of conv layers; one-op models drawn around the layers of traced models: specs, rebuilding at
other widths, features."""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from fxscale.analysis.graph import ChannelGraph, analyze
from fxscale.cost import cost_model
from fxscale.errors import FxscaleError
from fxscale.hw.devprofile import ProfileError
from fxscale.ops.row import KernelKind
from fxscale.tracing import META

CHANNEL_RANGE = (0.5, 2.5)
RESOLUTION_RANGE = (0.5, 2.0)
MAX_GROWTH = 10.0  # a grid point may cost at most this many times the layer it was drawn from


# ---- conv geometry (the latency predictor's kernel taps and strides; fxscale.hw.predictor re-exports it) --------
def conv_taps(in_sp: tuple, out_sp: tuple, kernel: tuple, stride: tuple, padding: tuple,
              dilation: tuple) -> tuple[float, float]:
    """(fraction of kernel taps inside the input, averaged over outputs; fraction of taps used by any output)."""
    mf = wf = 1.0
    for i_n, o_n, k, st, p, d in zip(in_sp, out_sp, kernel, stride, padding, dilation):
        used, total = set(), 0
        for o in range(o_n):
            for t in range(k):
                if 0 <= o * st - p + t * d < i_n:
                    total += 1
                    used.add(t)
        mf *= total / max(1, o_n * k)
        wf *= len(used) / max(1, k)
    return mf, wf


@dataclass(frozen=True)
class Geometry:
    """Kernel, stride, padding and dilation of a conv-like layer (one entry per spatial dim)."""

    kernel: tuple
    stride: tuple
    padding: tuple
    dilation: tuple


def _module_geometry(n: fx.Node, mods: dict[str, nn.Module]) -> Optional[Geometry]:
    mod = mods.get(n.target)
    if not isinstance(mod, nn.modules.conv._ConvNd):
        return None
    k = tuple(mod.kernel_size)
    pad = mod.padding
    if isinstance(pad, str):  # "valid" / "same" (stride 1)
        pad = tuple(0 if pad == "valid" else (kk - 1) * dd // 2 for kk, dd in zip(k, mod.dilation))
    return Geometry(k, tuple(mod.stride), tuple(pad), tuple(mod.dilation))


def _function_geometry(n: fx.Node, mods: dict[str, nn.Module]) -> Optional[Geometry]:
    if getattr(n.target, "__name__", "") not in ("conv1d", "conv2d", "conv3d"):
        return None
    dims = int(n.target.__name__[4])
    w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
    wshape = w.meta.get(META, {}).get("shape") if isinstance(w, fx.Node) else None
    names = ("stride", "padding", "dilation")
    vals = [n.kwargs.get(nm, n.args[3 + j] if len(n.args) > 3 + j else (0 if nm == "padding" else 1))
            for j, nm in enumerate(names)]
    if not isinstance(wshape, tuple) or any(isinstance(v, str) for v in vals):
        return None
    st, pad, dil = (tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * dims for v in vals)
    return Geometry(tuple(wshape[2:]), st, pad, dil)


GEOMETRY: dict[str, Callable[[fx.Node, dict[str, nn.Module]], Optional[Geometry]]] = {  # readers by node op
    "call_module": _module_geometry, "call_function": _function_geometry}


def layer_geometry(cg: ChannelGraph) -> dict[str, Geometry]:
    """Geometry of every nn.ConvNd / F.convNd node of the graph, by node name."""
    mods = dict(cg.gm.named_modules())
    geo = {n.name: GEOMETRY[n.op](n, mods) for n in cg.gm.graph.nodes if n.op in GEOMETRY}
    return {name: g for name, g in geo.items() if g is not None}


# ---- one-op models -------------------------------------------------------------------------------------
class Sentinel:
    """Marks where a replayed op takes its input."""

    def __repr__(self) -> str:
        return "<x>"


X = Sentinel()


def add_op(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a + b (a module-level function, so replays of it trace to operator.add)."""
    return a + b


def fill(a: Any, x: Any) -> Any:
    """`a` with every X replaced by x (through lists, tuples and dicts)."""
    if a is X:
        return x
    if isinstance(a, (list, tuple)):
        return type(a)(fill(v, x) for v in a)
    if isinstance(a, dict):
        return {k: fill(v, x) for k, v in a.items()}
    return a


class Replay(nn.Module):
    """A function or method call of a graph node replayed on one input (every tensor argument becomes x)."""

    def __init__(self, fn: Any, args: tuple, kwargs: dict, method: bool = False) -> None:
        super().__init__()
        self.fn, self.args, self.kwargs, self.method = fn, args, kwargs, method

    def forward(self, x: torch.Tensor) -> Any:
        """Call the op with x in every tensor position."""
        args, kwargs = fill(self.args, x), fill(self.kwargs, x)
        if self.method:
            return getattr(args[0], self.fn)(*args[1:], **kwargs)
        return self.fn(*args, **kwargs)


class Residual(nn.Module):
    """relu(x + body(x)), for the fusion test."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body, self.relu = body, nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The residual sum then ReLU."""
        return self.relu(x + self.body(x))


# ---- kernel specs ---------------------------------------------------------------------------------------
@dataclass
class KernelSpec:
    """One costing layer of a profiled model and how to rebuild it at other widths / resolutions."""

    kind: KernelKind  # fine kind
    family: str  # how it is rebuilt: a BUILDERS key (conv, linear, norm), module (copied) or replay
    op: Any
    in_t: list  # input template (ints and labels)
    out_t: list
    sizes: dict[int, int]
    base_in: tuple
    base_out: tuple


@dataclass
class KernelSample:
    """One grid point: spec index, channel/resolution factors, features and measured ms."""

    spec: int
    cin: float
    cout: float
    res: float
    kind: Optional[KernelKind] = None  # fine kind
    macs_f: float = 0.0
    bytes_f: float = 0.0
    ms: float = float("nan")
    weight_bytes: float = 0.0
    model: Any = field(default=None, repr=False)
    shape: tuple = ()


# Rebuilder family of a leaf module, by module type (first match); other modules are copied as they are.
MODULE_FAMILIES: tuple[tuple[tuple[type, ...], str], ...] = (
    ((nn.modules.conv._ConvNd,), "conv"), ((nn.Linear,), "linear"),
    ((nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm), "norm"))


def kernel_specs(entries: Sequence[Any]) -> list[KernelSpec]:
    """Distinct costing layers of all models (by kind, op and shapes)."""
    from fxscale.hw.predictor import _shape, layer_sites  # the predictor imports this module's geometry
    out, seen = [], set()
    for e in entries:
        cm = cost_model(e.cg)
        sizes = cm.sizes()
        nodes = {n.name: n for n in e.cg.gm.graph.nodes}
        mods = dict(e.cg.gm.named_modules())
        for site in layer_sites(e.cg, cm, sizes):
            L, node = cm.layers[site.index], nodes.get(site.name)
            if site.view or node is None or not L.ins:
                continue
            lc = cm.layer(site.index, sizes)
            ins = [_shape(t, sizes) for t in L.ins]
            if node.op == "call_module":
                mod = mods[node.target]
                family = next((f for types, f in MODULE_FAMILIES if isinstance(mod, types)), "module")
                op: Any = mod
            elif node.op in ("call_function", "call_method"):
                if any(a.op == "get_attr" for a in node.all_input_nodes):
                    continue  # functional ops on parameters (F.conv2d(x, self.w)) cannot be replayed on x alone
                family = "replay"
                op = Replay(node.target, fx.node.map_arg(node.args, lambda _n: X),
                             fx.node.map_arg(node.kwargs, lambda _n: X), node.op == "call_method")
            else:
                continue
            key = (site.fine, family, _op_key(op), ins[0], lc.shape)
            if key in seen:
                continue
            seen.add(key)
            out.append(KernelSpec(site.fine, family, op, L.ins[0], L.out, sizes, ins[0], tuple(lc.shape)))
    return out


def _op_key(op: Any) -> str:
    if isinstance(op, Replay):
        return repr((op.fn, op.args, op.kwargs, op.method))
    return repr(op)


def _scale_dim(d: Any, sizes: dict[int, int], f: float) -> int:
    """A channel label's width with every atom scaled by f (multiples of 8 stay multiples of 8)."""
    total = 0
    for a, k in d:
        v = sizes[a]
        step = 8 if v >= 16 and v % 8 == 0 else 1
        total += k * max(step, int(round(v * f / step)) * step)
    return total


OUT_CHANNEL_DIM = {"conv": 1, "linear": -1}  # output-channel dim of the families whose weights scale with it


def _cout(spec: KernelSpec, cout_f: float) -> int:
    co_t = spec.out_t[OUT_CHANNEL_DIM[spec.family]]
    return co_t if isinstance(co_t, int) else _scale_dim(co_t, spec.sizes, cout_f)


def _build_conv(spec: KernelSpec, shape: list[int], cout_f: float) -> nn.Module:
    op, cin, cout = spec.op, shape[1], _cout(spec, cout_f)
    groups = op.groups
    if groups == op.in_channels and groups > 1:  # depthwise (times a depth multiplier)
        groups, cout = cin, cin * (op.out_channels // op.in_channels)
    elif groups > 1:
        cin, cout = (max(groups, round(c / groups) * groups) for c in (cin, cout))
        shape[1] = cin
    extra = {"output_padding": op.output_padding} if op.transposed else {}
    return type(op)(cin, cout, op.kernel_size, stride=op.stride, padding=op.padding, dilation=op.dilation,
                    groups=groups, bias=op.bias is not None, **extra)


def _build_linear(spec: KernelSpec, shape: list[int], cout_f: float) -> nn.Module:
    return nn.Linear(shape[-1], _cout(spec, cout_f), bias=spec.op.bias is not None)


def _build_norm(spec: KernelSpec, shape: list[int], cout_f: float) -> nn.Module:
    op = spec.op
    if isinstance(op, nn.GroupNorm):
        shape[1] = max(op.num_groups, round(shape[1] / op.num_groups) * op.num_groups)
        return nn.GroupNorm(op.num_groups, shape[1])
    if isinstance(op, nn.LayerNorm):
        return nn.LayerNorm(tuple(shape[-len(op.normalized_shape):]))
    return type(op)(shape[1])


# Rebuilders by spec family: (spec, input shape (may adjust its channels), output channel factor) -> module.
# Other families (copied modules, replayed calls) run as they are on the resized input.
BUILDERS: dict[str, Callable[[KernelSpec, list[int], float], nn.Module]] = {
    "conv": _build_conv, "linear": _build_linear, "norm": _build_norm}


def build_kernel(spec: KernelSpec, cin_f: float, cout_f: float, res_f: float) -> tuple[nn.Module, tuple[int, ...]]:
    """The one-op model of a spec at channel factors (in, out) and a resolution factor, and its input shape."""
    rank = len(spec.in_t)
    shape = [1] + [_scale_dim(d, spec.sizes, cin_f) if not isinstance(d, int) else
                   (max(1, int(round(d * res_f))) if rank >= 3 and p >= 2 and spec.family != "linear" else d)
                   for p, d in enumerate(spec.in_t[1:], 1)]
    build = BUILDERS.get(spec.family)
    mod = build(spec, shape, cout_f) if build is not None else copy.deepcopy(spec.op)
    return nn.Sequential(mod).eval(), tuple(shape)  # a wrapper: the op stays a call_module leaf when traced


def _growth(spec: KernelSpec, model: nn.Module, shape: tuple) -> float:
    """Rough cost ratio of a grid point to the layer it was drawn from (for capping the grid)."""
    r = math.prod(shape) / max(1, math.prod(spec.base_in))
    dim = OUT_CHANNEL_DIM.get(spec.family)
    if dim is not None:
        w = next(iter(model[0].parameters()))
        r *= w.shape[0] / max(1, spec.base_out[dim])
    return r


def kernel_features(model: nn.Module, shape: tuple, block: int,
                    dtype_bytes: int) -> tuple[KernelKind, float, float, float]:
    """Fine kind, (MACs, bytes, weight bytes) of a one-op model, through the predictor's own feature path."""
    import fxscale
    from fxscale.hw.predictor import layer_features, layer_sites
    cg = analyze(fxscale.trace(model, torch.randn(shape)))
    cm = cost_model(cg, dtype_bytes=dtype_bytes)
    sizes = cm.sizes()
    rows = [(site.fine, *layer_features(site, cm, sizes, block)[1:]) for site in layer_sites(cg, cm, sizes)
            if not site.view]
    if len(rows) != 1:
        raise ProfileError(f"a one-op model has {len(rows)} costing layers: {[str(r[0]) for r in rows]}")
    return rows[0]



def _draw(spec: KernelSpec, rng: random.Random, near: Optional[KernelSample] = None) -> tuple[float, float, float]:
    if near is not None:
        j = lambda v, lo, hi: min(hi, max(lo, v * math.exp(rng.gauss(0.0, 0.25))))  # noqa: E731
        return j(near.cin, *CHANNEL_RANGE), j(near.cout, *CHANNEL_RANGE), j(near.res, *RESOLUTION_RANGE)
    lu = lambda lo, hi: math.exp(rng.uniform(math.log(lo), math.log(hi)))  # noqa: E731
    return lu(*CHANNEL_RANGE), lu(*CHANNEL_RANGE), lu(*RESOLUTION_RANGE)


def draw_sample(specs: list[KernelSpec], idx: int, rng: random.Random, block: int, dtype_bytes: int, seen: set,
          near: Optional[KernelSample] = None, max_weight_bytes: float = math.inf) -> Optional[KernelSample]:
    """A new grid point of spec idx, shrunk until its weights stay in cache (None when 8 draws fail)."""
    spec = specs[idx]
    for _ in range(8):
        cin, cout, res = _draw(spec, rng, near)
        try:
            for _shrink in range(4):
                model, shape = build_kernel(spec, cin, cout, res)
                if _growth(spec, model, shape) > MAX_GROWTH:
                    break
                kind, mf, bf, wb = kernel_features(model, shape, block, dtype_bytes)
                if wb <= max_weight_bytes:
                    break
                f = 0.9 * math.sqrt(max_weight_bytes / wb)
                cin, cout = cin * f, cout * f
            else:
                continue
            key = (idx, shape, tuple(p.shape for p in model.parameters()))
            if _growth(spec, model, shape) > MAX_GROWTH or wb > max_weight_bytes or key in seen:
                continue
        except (FxscaleError, RuntimeError, ValueError, TypeError):
            continue
        seen.add(key)
        return KernelSample(idx, cin, cout, res, kind, mf, bf, weight_bytes=wb, model=model, shape=shape)
    return None
