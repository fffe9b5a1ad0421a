"""Layer-wise latency predictor: per-kind fits of a DeviceProfile summed over the cost model, updated incrementally.

A layer's hot-cache time is ``fit[kind](MACs, activation bytes, weight bytes)``, the features being the cost
model's with channels padded to the runtime's channel block (ORT's NCHWc kernels on AVX-512 pad to 16) and kernel
taps that fall into the padding skipped; the kind is the cost model's refined by stride (``conv_k3_s2``) and global
pooling (``gpool``). The model's latency is

    constant + sum_l scale[kind_l] * hot_l + dram_scale * ramp(W) * sum_l ((hot_l^p + (kappa*w_l)^p)^(1/p) - hot_l)

where W is the model's total weight bytes and ramp(W) the fraction of them streamed from DRAM each inference (0
while they fit in the last-level cache); constant, scales and the per-model terms come from the calibration.
``bind()`` compiles one small Python function per layer, so a search can change one group's width and read the
new total in microseconds.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Union

import torch.fx as fx

from fxscale.analysis.graph import ChannelGraph, analyze
from fxscale.cost import CostModel, cost_model
from fxscale.errors import PlanError
from fxscale.hw.devprofile import (COLD_KIND, FUSED_FAMILIES, KERNEL_KIND, KERNEL_UNIT_MS, DeviceProfile, KindFit,
                                   as_kind)
from fxscale.materialize import Materializer
from fxscale.hw.kernels import GEOMETRY, Geometry, conv_taps, layer_geometry  # noqa: F401 - re-exported
from fxscale.hw.latency import fingerprint
from fxscale.ops.row import KernelKind
from fxscale.plan import ScalingPlan

VIEW = KernelKind("view")  # the fine kind of every view layer (no kernel runs)
Ratios = tuple[float, float, float, float]  # padding factors of input bytes, output bytes, weight bytes, MACs


def pad_to(c: int, block: int) -> int:
    """c rounded up to a multiple of block."""
    return -(-c // block) * block


def _pad_dense(cin: int, cout: int, block: int) -> Ratios:
    rin = pad_to(cin, block) / cin if cin >= block else 1.0  # an input narrower than a block runs unpadded
    rout = pad_to(cout, block) / cout
    return rin, rout, rin * rout, rin * rout


# Conv families whose channels the runtime pads to its channel block (depthwise: as its output; grouped: not at all)
# and whose padding taps it skips, by family; their kinds are refined by stride. ConvTranspose layers run as costed.
CHANNEL_PADDING: dict[str, Callable[[int, int, int], Ratios]] = {
    "conv": _pad_dense, "dwconv": lambda cin, cout, block: (pad_to(cout, block) / cout,) * 4,
    "gconv": lambda cin, cout, block: (1.0,) * 4}


def _global_pool(kind: KernelKind, stride: int, ins: list[tuple], out: tuple) -> KernelKind:
    glob = len(out) > 2 and all(d == 1 for d in out[2:]) and ins and any(d != 1 for d in ins[0][2:])
    return KernelKind("gpool") if glob else kind


# kind refinements by family: conv families by stride, pooling to a 1x1 map as gpool
REFINE: dict[str, Callable[[KernelKind, int, list[tuple], tuple], KernelKind]] = {
    **dict.fromkeys(CHANNEL_PADDING, lambda kind, stride, ins, out: replace(kind, stride=max(stride, 1))),
    "pool": _global_pool}


def refine_kind(kind: KernelKind, stride: int, ins: list[tuple], out: tuple) -> KernelKind:
    """The cost model's kind refined by stride (conv_k3_s2) and global pooling (gpool)."""
    rule = REFINE.get(kind.family)
    return rule(kind, stride, ins, out) if rule is not None else kind


def fine_kind(kind: Union[KernelKind, str], stride: int, ins: list[tuple], out: tuple) -> str:
    """refine_kind as a profile key."""
    return str(refine_kind(as_kind(kind), stride, ins, out))


def features(kind: Union[KernelKind, str], ins: list[tuple], out: tuple, macs: int, nbytes: int, params: int,
             dtype_bytes: int, block: int, taps: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float, float]:
    """(MACs, bytes, weight bytes) of one layer as the runtime executes it (padded channels, used taps)."""
    # Conv kinds: channels padded to the runtime's block (inputs with fewer channels than a block run unpadded),
    # MACs times the fraction of kernel taps inside the input (padding taps are skipped), weight bytes times the
    # fraction of taps any output uses (a 3x3 conv on a 1x1 map reads only the centre tap). Others: as costed.
    pad = CHANNEL_PADDING.get((kind if isinstance(kind, KernelKind) else KernelKind.parse(kind)).family)
    if pad is None or not ins or len(ins[0]) < 2 or len(out) < 2 or ins[0][1] < 1 or out[1] < 1:
        return float(macs), float(nbytes), float(params * dtype_bytes)
    cin, cout = ins[0][1], out[1]
    mt, wt = taps
    rin, rout, rw, rm = pad(cin, cout, block) if block > 1 else (1.0,) * 4
    wbytes = params * dtype_bytes * rw * wt
    return macs * rm * mt, dtype_bytes * (math.prod(ins[0]) * rin + math.prod(out) * rout) + wbytes, wbytes


@dataclass
class LayerSite:
    """Width-independent facts of one cost-model layer: fine kind and kernel-tap fractions."""

    index: int
    name: str
    fine: KernelKind  # the cost model's kind refined by stride / global pooling (VIEW for views)
    cost_kind: KernelKind  # the cost model's kind
    taps: tuple[float, float] = (1.0, 1.0)
    view: bool = False
    params: bool = False

    @property
    def kind(self) -> str:
        """The fine kind as a profile key ("conv_k3_s2", "view" for views)."""
        return str(self.fine)

    @property
    def base(self) -> str:
        """The cost model's kind string."""
        return str(self.cost_kind)


def layer_sites(cg: ChannelGraph, cm: CostModel, sizes: dict[int, int]) -> list[LayerSite]:
    """Fine kind and tap fractions of every layer (they depend on the resolution, not on widths)."""
    geo = layer_geometry(cg)
    out = []
    for i, L in enumerate(cm.layers):
        lc = cm.layer(i, sizes)
        base = KernelKind.parse(lc.kind)  # where a cost-model kind enters the predictor
        if L.view or base.moves_nothing:
            out.append(LayerSite(i, L.name, VIEW, base, view=True, params=bool(L.params)))
            continue
        ins = [_shape(t, sizes) for t in L.ins]
        g = geo.get(L.name)
        stride = max(g.stride) if g else 1
        kind = refine_kind(base, stride, ins, lc.shape)
        taps = (1.0, 1.0)
        if g and kind.family in CHANNEL_PADDING and ins and len(ins[0]) == len(lc.shape) == 2 + len(g.kernel):
            taps = conv_taps(ins[0][2:], lc.shape[2:], g.kernel, g.stride, g.padding, g.dilation)
        out.append(LayerSite(i, L.name, kind, base, taps, False, bool(L.params)))
    return out


def layer_features(site: LayerSite, cm: CostModel, sizes: dict[int, int], block: int) -> tuple[Any, float, float,
                                                                                                  float]:
    """(LayerCost, MACs, bytes, weight bytes) of one layer under atom sizes (the reference path)."""
    lc = cm.layer(site.index, sizes)
    ins = [_shape(t, sizes) for t in cm.layers[site.index].ins]
    return (lc, *features(site.fine, ins, lc.shape, lc.macs, lc.bytes, lc.params, cm.dtype_bytes, block,
                          site.taps))


def _shape(t: list, sizes: dict[int, int]) -> tuple:
    return tuple(d if isinstance(d, int) else sum(sizes[a] * k for a, k in d) for d in t)


@dataclass
class LayerLatency:
    """Predicted latency of one layer and the features it was computed from."""

    name: str
    kind: str
    macs: int
    bytes: int
    macs_f: float
    bytes_f: float
    ms: float  # kernel prediction (scaled) plus cold_ms
    weight_bytes: float = 0.0  # as the runtime stores them (padded channels, used taps)
    cold_ms: float = 0.0  # time for streaming its weights from DRAM (when the model's weights outgrow the cache)


@dataclass
class _Info:
    site: LayerSite
    fit: Optional[KindFit]  # None for views
    scale: float
    mac_free: bool  # no multiply-accumulates: only bytes moved
    active: bool  # False: predicted 0 ms (views, kinds scaled to 0, all-zero fits)
    kappa: float = 0.0  # ms per weight byte streamed from DRAM

    @property
    def index(self) -> int:
        """Layer index in the cost model."""
        return self.site.index


class _Compiled:
    """Static part of a bound predictor: per-layer functions and the group -> (atoms, parts, layers) table."""

    def __init__(self, pred: "LatencyPredictor", cg: ChannelGraph, cm: CostModel, sizes: dict[int, int]) -> None:
        self.cm, self.cg = cm, cg
        hot, cold, const = pred.profile.model_terms(fingerprint(cg))
        self.infos = pred._infos(cg, cm, sizes, hot)
        self.constant = const + hot * pred._kernel_ms(self.infos)
        self.ramp = pred.profile.ramp_fn()
        self.cold_scale = cold * pred.profile.scale(COLD_KIND)
        self.fns: list[Optional[Callable[[dict], tuple[float, float, float]]]] = _compile(self.infos, cm,
                                                                                          pred.profile)
        at = cg.ctx.atoms
        self.groups: dict[str, tuple[tuple[int, ...], int, tuple[int, ...]]] = {}
        for g in cg.groups:
            idx = tuple(i for i in cm.touches.get(g.root, []) if self.fns[i] is not None)
            self.groups[g.name] = (tuple(at.members[g.root]), g.parts, idx)


def _dim_src(d: Any) -> str:
    if isinstance(d, int):
        return str(d)
    return "(" + " + ".join(f"s[{a}]" if k == 1 else f"s[{a}] * {k}" for a, k in d) + ")"


def _prod_src(t: list) -> str:
    const = math.prod(d for d in t if isinstance(d, int))
    labs = [_dim_src(d) for d in t if not isinstance(d, int)]
    return " * ".join(([str(const)] if const != 1 or not labs else []) + labs)


def _kernels(infos: list[_Info]) -> int:
    """Layers the runtime runs as kernels of their own: costing layers other than norms and element-wise ops."""
    return sum(1 for i in infos if i.fit is not None and i.site.cost_kind.family not in FUSED_FAMILIES)


def _mac_free(kind: KernelKind) -> bool:
    """A known family without multiply-accumulates (an unknown family's MACs come from its cost formula)."""
    return kind.known and not kind.has_macs


def extra_ms(hot: float, kappa: float, weight_bytes: float, p: float = 2.0) -> float:
    """Extra time of a layer whose weights stream from DRAM: a smooth roofline (hot^p + (kappa*w)^p)^(1/p) - hot."""
    if not weight_bytes or not kappa:
        return 0.0
    return (max(hot, 0.0) ** p + (kappa * weight_bytes) ** p) ** (1.0 / p) - max(hot, 0.0)


def _compile(infos: list[_Info], cm: CostModel,
             prof: DeviceProfile) -> list[Optional[Callable[[dict], tuple[float, float, float]]]]:
    """One generated function per layer: sizes -> (ms, DRAM extra ms, weight bytes), as the reference path."""
    ns: dict[str, Any] = {"_features": features, "_extra": extra_ms, "_dt": cm.dtype_bytes,
                          "_block": prof.channel_block, "_p": prof.roofline_p()}
    src: list[str] = []
    for info in infos:
        if not (info.active or info.site.params) or info.site.view:
            continue
        i, L = info.index, cm.layers[info.index]
        ns[f"_fit{i}"], ns[f"_sc{i}"], ns[f"_cost{i}"], ns[f"_k{i}"] = info.fit, info.scale, L.cost, info.kappa
        ns[f"_kind{i}"] = info.site.fine
        f = info.fit
        ns[f"_a{i}"], ns[f"_b{i}"], ns[f"_c{i}"], ns[f"_d{i}"] = (f.intercept_ms, f.ms_per_mac, f.ms_per_byte,
                                                                  f.ms_per_weight_byte)
        params = " + ".join(_prod_src(t) for t in L.params) or "0"
        moved = [_prod_src(t) for t in L.ins] + ([_prod_src(L.out)] if L.out else []) + \
                [_prod_src(t) for t in L.params]
        nb = f"({' + '.join(moved) or '0'}) * _dt"
        if info.mac_free and info.site.fine.family not in CHANNEL_PADDING and info.fit.model == "linear":
            body = [f"    mf, bf, wf = 0.0, float({nb}), float(({params}) * _dt)"]
        else:
            ins = "[" + ", ".join("(" + "".join(_dim_src(d) + ", " for d in t) + ")" for t in L.ins) + "]"
            out = "(" + "".join(_dim_src(d) + ", " for d in L.out) + ")"
            body = [f"    ins = {ins}", f"    out = {out}",
                    "    macs = 0" if info.mac_free else f"    macs = int(_cost{i}(ins, out)[1])",
                    f"    mf, bf, wf = _features(_kind{i}, ins, out, macs, {nb}, {params}, _dt, _block, "
                    f"{info.site.taps!r})"]
        if info.fit.model == "linear":
            body.append(f"    h = _a{i} + _b{i} * mf + _c{i} * (bf - wf) + _d{i} * wf")
        else:
            body.append(f"    h = _fit{i}.predict(mf, bf, wf)")
        ms = f"_sc{i} * h" if info.active else "0.0"
        extra = f"_extra(h, _k{i}, wf, _p)" if info.site.params and info.kappa else "0.0"
        body.append(f"    return {ms}, {extra}, wf")
        src.append(f"def _f{i}(s):\n" + "\n".join(body) + "\n")
    exec(compile("\n".join(src), "<fxscale latency predictor>", "exec"), ns)  # noqa: S102 - generated above
    return [ns.get(f"_f{info.index}") for info in infos]


class PredictorState:
    """Latency of one model under changing widths: set_width / delta touch only the layers a group feeds."""

    __slots__ = ("_c", "sizes", "_vals", "_extras", "_wbs", "hot", "extra", "weight_bytes", "total", "widths",
                 "resolution")

    def __init__(self, compiled: _Compiled, sizes: dict[int, int], widths: dict[str, int],
                 resolution: Optional[tuple[int, int]]) -> None:
        self._c, self.sizes, self.widths, self.resolution = compiled, sizes, widths, resolution
        rows = [f(sizes) if f is not None else (0.0, 0.0, 0.0) for f in compiled.fns]
        self._vals, self._extras, self._wbs = ([r[k] for r in rows] for k in range(3))
        self.hot = math.fsum(self._vals)  # sum of the kernel predictions
        self.extra = math.fsum(self._extras)  # sum of the DRAM extras if every weight streamed
        self.weight_bytes = math.fsum(self._wbs)
        self.total = self._total(self.hot, self.extra, self.weight_bytes)

    def _total(self, hot: float, extra: float, wb: float) -> float:
        c = self._c
        return c.constant + hot + c.cold_scale * c.ramp(wb) * extra

    def _group(self, group: str) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
        g = self._c.groups.get(group)
        if g is None:
            raise PlanError(f"no channel group named {group!r}")
        return g

    def _apply(self, group: str, width: int) -> tuple[list, list, list, list]:
        """Set the group's atom sizes; return (atoms, their old sizes, touched layers, their new values)."""
        atoms, parts, idx = self._group(group)
        s, fns = self.sizes, self._c.fns
        old = [s[a] for a in atoms]
        v = width // parts
        for a in atoms:
            s[a] = v
        return atoms, old, idx, [fns[i](s) for i in idx]

    def _sums(self, idx: list, new: list) -> tuple[float, float, float]:
        """Changes of the hot, extra and weight-byte sums from the touched layers' new values."""
        vals, extras, wbs = self._vals, self._extras, self._wbs
        return (sum(ms - vals[i] for i, (ms, _e, _w) in zip(idx, new)),
                sum(ex - extras[i] for i, (_m, ex, _w) in zip(idx, new)),
                sum(wb - wbs[i] for i, (_m, _e, wb) in zip(idx, new)))

    def set_width(self, group: str, width: int) -> float:
        """Commit a new width for one group; return the new total latency (ms)."""
        _atoms, _old, idx, new = self._apply(group, width)
        dh, de, dw = self._sums(idx, new)
        for i, (ms, ex, wb) in zip(idx, new):
            self._vals[i], self._extras[i], self._wbs[i] = ms, ex, wb
        self.hot += dh
        self.extra += de
        self.weight_bytes += dw
        self.total = self._total(self.hot, self.extra, self.weight_bytes)
        self.widths[group] = width
        return self.total

    def delta(self, group: str, width: int) -> float:
        """Latency change (ms) if `group` had `width`, without committing it."""
        atoms, old, idx, new = self._apply(group, width)
        for a, o in zip(atoms, old):
            self.sizes[a] = o
        dh, de, dw = self._sums(idx, new)
        return self._total(self.hot + dh, self.extra + de, self.weight_bytes + dw) - self.total

    def peek(self, group: str, width: int) -> float:
        """Total latency (ms) if `group` had `width`, without committing it."""
        return self.total + self.delta(group, width)

    def copy(self) -> "PredictorState":
        """Independent state sharing the compiled per-layer functions."""
        new = PredictorState.__new__(PredictorState)
        new._c, new.sizes, new._vals, new._wbs = self._c, dict(self.sizes), list(self._vals), list(self._wbs)
        new._extras, new.hot, new.extra = list(self._extras), self.hot, self.extra
        new.weight_bytes, new.total = self.weight_bytes, self.total
        new.widths, new.resolution = dict(self.widths), self.resolution
        return new

    def layer_ms(self) -> dict[str, float]:
        """Current per-layer kernel predictions (costing layers only, without the DRAM-weights term)."""
        return {info.name: self._vals[info.index] for info in self._c.infos if info.active}

    def plan(self) -> ScalingPlan:
        """The current widths and resolution as a ScalingPlan."""
        return ScalingPlan(widths=dict(self.widths), resolution=self.resolution)


class LatencyPredictor:
    """Predict a model's latency on the profiled target from its cost model and a plan."""

    def __init__(self, profile: Union[DeviceProfile, str, os.PathLike[str]], mode: str = "input") -> None:
        self.profile = profile if isinstance(profile, DeviceProfile) else DeviceProfile.load(profile)
        self.mode = mode  # "input": the network is fed at the new resolution; "resize": in-graph resize op
        self._compiled: dict[int, tuple[CostModel, _Compiled]] = {}
        self._materializer = Materializer()  # deeper graphs of depth plans, one rebuild per (model, depths)

    def _cost_model(self, cg: Union[ChannelGraph, fx.GraphModule],
                    resolution: Optional[tuple[int, int]]) -> tuple[ChannelGraph, CostModel]:
        cg = cg if isinstance(cg, ChannelGraph) else analyze(cg)
        return cg, cost_model(cg, resolution, mode=self.mode, dtype_bytes=self.profile.dtype_bytes)

    def _infos(self, cg: ChannelGraph, cm: CostModel, sizes: dict[int, int], hot: float = 1.0) -> list[_Info]:
        infos = []
        for site in layer_sites(cg, cm, sizes):
            if site.view:
                infos.append(_Info(site, None, 0.0, True, False))
                continue
            fit, scale = self.profile.fit(site.fine), hot * self.profile.scale(site.fine)
            infos.append(_Info(site, fit, scale, _mac_free(site.cost_kind), scale != 0.0 and not fit.is_zero(),
                               self.profile.kappa(site.fine)))
        return infos

    def _deepened(self, cg: Union[ChannelGraph, fx.GraphModule], plan: ScalingPlan
                  ) -> tuple[ChannelGraph, ScalingPlan]:
        """The graph rebuilt with a plan's depths (one rebuild per depths) and the plan's rest on it."""
        cg = cg if isinstance(cg, ChannelGraph) else analyze(cg)
        return self._materializer(cg, plan, mode=self.mode)

    def _kernel_ms(self, infos: list[_Info]) -> float:
        """Calibrated per-kernel cost times the kernels the runtime runs (layers other than norms/element-wise)."""
        return self.profile.scale(KERNEL_KIND) * KERNEL_UNIT_MS * _kernels(infos)

    def _compile(self, cg: ChannelGraph, cm: CostModel) -> _Compiled:
        hit = self._compiled.get(id(cm))
        if hit is None or hit[0] is not cm:
            hit = (cm, _Compiled(self, cg, cm, cm.sizes()))
            self._compiled[id(cm)] = hit
        return hit[1]

    def predict_layers(self, cg: Union[ChannelGraph, fx.GraphModule], plan: Optional[ScalingPlan] = None,
                       raw: bool = False) -> list[LayerLatency]:
        """Per-layer predictions (reference path, no generated code); raw: before the whole-model scales."""
        plan = plan or ScalingPlan()
        if getattr(plan, "depths", None):  # new blocks are new layers: predict the rebuilt graph
            return self.predict_layers(*self._deepened(cg, plan), raw)
        cg, cm = self._cost_model(cg, plan.resolution)
        sizes = cm.sizes(plan)
        out, extras = [], []
        for info in self._compile(cg, cm).infos:
            if info.site.view:
                lc = cm.layer(info.index, sizes)
                out.append(LayerLatency(info.site.name, info.site.kind, lc.macs, lc.bytes, 0.0, 0.0, 0.0))
                extras.append(0.0)
                continue
            lc, mf, bf, wf = layer_features(info.site, cm, sizes, self.profile.channel_block)
            h = info.fit.predict(mf, bf, wf)
            ms = h if raw else info.scale * h if info.active else 0.0
            out.append(LayerLatency(info.site.name, info.site.kind, lc.macs, lc.bytes, mf, bf, ms, wf))
            extras.append(extra_ms(h, info.kappa, wf, self.profile.roofline_p()) if info.site.params else 0.0)
        frac = self.profile.ramp_fn()(math.fsum(r.weight_bytes for r in out))
        scale = 1.0 if raw else self._compile(cg, cm).cold_scale
        for r, ex in zip(out, extras):
            r.cold_ms = scale * frac * ex
            r.ms += r.cold_ms
        return out

    def predict(self, cg: Union[ChannelGraph, fx.GraphModule], plan: Optional[ScalingPlan] = None) -> float:
        """Predicted latency (ms) of the model under a plan (widths and resolution)."""
        plan = plan or ScalingPlan()
        if getattr(plan, "depths", None):
            return self.predict(*self._deepened(cg, plan))
        rows = self.predict_layers(cg, plan)
        const = self._compile(*self._cost_model(cg, plan.resolution)).constant
        return const + math.fsum(r.ms - r.cold_ms for r in rows) + math.fsum(r.cold_ms for r in rows)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: the profile file it was loaded from (None for an in-memory profile)."""
        return {"kind": "device profile", "path": self.profile.source}

    def by_kind(self, cg: Union[ChannelGraph, fx.GraphModule], plan: Optional[ScalingPlan] = None,
                raw: bool = False) -> dict[str, float]:
        """Summed layer predictions (ms) per kind plus the DRAM term; raw: before the whole-model scales."""
        out: dict[str, float] = {}
        cold = 0.0
        for r in self.predict_layers(cg, plan, raw=raw):
            cold += r.cold_ms
            if r.kind != str(VIEW):
                out[r.kind] = out.get(r.kind, 0.0) + r.ms - r.cold_ms
        if cold:
            out[COLD_KIND] = cold
        if raw:
            out[KERNEL_KIND] = KERNEL_UNIT_MS * _kernels(self._compile(*self._cost_model(
                cg, (plan or ScalingPlan()).resolution)).infos)
        return out

    def bind(self, cg: Union[ChannelGraph, fx.GraphModule], plan: Union[ScalingPlan, tuple[int, int], None] = None,
             start: Optional[ScalingPlan] = None) -> PredictorState:
        """LatencyModel.bind: incremental state at `plan`'s resolution (else the traced one), starting at `plan`.

        The older form bind(cg, resolution[, plan]), a resolution or None second, still binds at that resolution.
        """
        if isinstance(plan, ScalingPlan):
            return self._bind(cg, None, plan)
        return self._bind(cg, plan, start)

    def _bind(self, cg: Union[ChannelGraph, fx.GraphModule], resolution: Optional[tuple[int, int]],
              plan: Optional[ScalingPlan]) -> PredictorState:
        plan = plan or ScalingPlan()
        if getattr(plan, "depths", None):  # bind the deepened graph (its own groups), at the plan's resolution
            deep, rest = self._deepened(cg, plan)
            return self._bind(deep, None, rest)
        res = tuple(resolution) if resolution is not None else plan.resolution
        cg, cm = self._cost_model(cg, res)
        sizes = cm.sizes(plan)
        widths = {g.name: plan.widths.get(g.name, g.width) for g in cg.groups}
        return PredictorState(self._compile(cg, cm), sizes, widths, cm.resolution)


__all__ = ["CHANNEL_PADDING", "GEOMETRY", "REFINE", "VIEW", "extra_ms", "fingerprint", "Geometry", "LatencyPredictor",
           "LayerLatency", "LayerSite", "PredictorState", "conv_taps", "features", "fine_kind", "layer_features",
           "layer_geometry", "layer_sites", "pad_to", "refine_kind"]
