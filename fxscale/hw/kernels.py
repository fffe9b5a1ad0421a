"""One-op models drawn around the layers of traced models: specs, rebuilding at other widths, features."""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from fxscale.analysis.graph import analyze
from fxscale.cost import cost_model
from fxscale.errors import FxscaleError
from fxscale.hw.devprofile import ProfileError
from fxscale.hw.predictor import _shape, layer_features, layer_sites

CHANNEL_RANGE = (0.5, 2.5)
RESOLUTION_RANGE = (0.5, 2.0)
MAX_GROWTH = 10.0  # a grid point may cost at most this many times the layer it was drawn from


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

    kind: str
    family: str  # conv, linear, norm, module, replay
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
    kind: str = ""
    macs_f: float = 0.0
    bytes_f: float = 0.0
    ms: float = float("nan")
    weight_bytes: float = 0.0
    model: Any = field(default=None, repr=False)
    shape: tuple = ()


def kernel_specs(entries: Sequence[Any]) -> list[KernelSpec]:
    """Distinct costing layers of all models (by kind, op and shapes)."""
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
                family = ("conv" if isinstance(mod, nn.modules.conv._ConvNd) else
                          "linear" if isinstance(mod, nn.Linear) else
                          "norm" if isinstance(mod, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
                          else "module")
                op: Any = mod
            elif node.op in ("call_function", "call_method"):
                if any(a.op == "get_attr" for a in node.all_input_nodes):
                    continue  # functional ops on parameters (F.conv2d(x, self.w)) cannot be replayed on x alone
                family = "replay"
                op = Replay(node.target, fx.node.map_arg(node.args, lambda _n: X),
                             fx.node.map_arg(node.kwargs, lambda _n: X), node.op == "call_method")
            else:
                continue
            key = (site.kind, family, _op_key(op), ins[0], lc.shape)
            if key in seen:
                continue
            seen.add(key)
            out.append(KernelSpec(site.kind, family, op, L.ins[0], L.out, sizes, ins[0], tuple(lc.shape)))
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


def build_kernel(spec: KernelSpec, cin_f: float, cout_f: float, res_f: float) -> tuple[nn.Module, tuple[int, ...]]:
    """The one-op model of a spec at channel factors (in, out) and a resolution factor, and its input shape."""
    rank = len(spec.in_t)
    shape = [1] + [_scale_dim(d, spec.sizes, cin_f) if not isinstance(d, int) else
                   (max(1, int(round(d * res_f))) if rank >= 3 and p >= 2 and spec.family != "linear" else d)
                   for p, d in enumerate(spec.in_t[1:], 1)]
    op = spec.op
    if spec.family == "conv":
        cin = shape[1]
        co_t = spec.out_t[1]
        cout = co_t if isinstance(co_t, int) else _scale_dim(co_t, spec.sizes, cout_f)
        groups = op.groups
        if groups == op.in_channels and groups > 1:  # depthwise (times a depth multiplier)
            groups, cout = cin, cin * (op.out_channels // op.in_channels)
        elif groups > 1:
            cin, cout = (max(groups, round(c / groups) * groups) for c in (cin, cout))
            shape[1] = cin
        extra = {"output_padding": op.output_padding} if op.transposed else {}
        mod: nn.Module = type(op)(cin, cout, op.kernel_size, stride=op.stride, padding=op.padding,
                                  dilation=op.dilation, groups=groups, bias=op.bias is not None, **extra)
    elif spec.family == "linear":
        co_t = spec.out_t[-1]
        cout = co_t if isinstance(co_t, int) else _scale_dim(co_t, spec.sizes, cout_f)
        mod = nn.Linear(shape[-1], cout, bias=op.bias is not None)
    elif spec.family == "norm":
        if isinstance(op, nn.GroupNorm):
            shape[1] = max(op.num_groups, round(shape[1] / op.num_groups) * op.num_groups)
            mod = nn.GroupNorm(op.num_groups, shape[1])
        elif isinstance(op, nn.LayerNorm):
            mod = nn.LayerNorm(tuple(shape[-len(op.normalized_shape):]))
        else:
            mod = type(op)(shape[1])
    else:
        mod = copy.deepcopy(op)
    return nn.Sequential(mod).eval(), tuple(shape)  # a wrapper: the op stays a call_module leaf when traced


def _growth(spec: KernelSpec, model: nn.Module, shape: tuple) -> float:
    """Rough cost ratio of a grid point to the layer it was drawn from (for capping the grid)."""
    r = math.prod(shape) / max(1, math.prod(spec.base_in))
    if spec.family in ("conv", "linear"):
        w = next(iter(model[0].parameters()))
        base = spec.base_out[1] if spec.family == "conv" else spec.base_out[-1]
        r *= w.shape[0] / max(1, base)
    return r


def kernel_features(model: nn.Module, shape: tuple, block: int, dtype_bytes: int) -> tuple[str, float, float, float]:
    """Fine kind, (MACs, bytes, weight bytes) of a one-op model, through the predictor's own feature path."""
    import fxscale
    cg = analyze(fxscale.trace(model, torch.randn(shape)))
    cm = cost_model(cg, dtype_bytes=dtype_bytes)
    sizes = cm.sizes()
    rows = [(site.kind, *layer_features(site, cm, sizes, block)[1:]) for site in layer_sites(cg, cm, sizes)
            if not site.view]
    if len(rows) != 1:
        raise ProfileError(f"a one-op model has {len(rows)} costing layers: {[r[0] for r in rows]}")
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
