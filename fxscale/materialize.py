"""Rebuild a depth plan once: the deeper graph, analysed, plus the rest of the plan mapped onto its groups.

A plan with ``depths`` adds layers, so its cost (FLOPs, params, predicted latency) cannot be read off the traced
graph: the deeper graph has to be built (the depth pass) and analysed. ``materialize(cg, plan)`` is the one
place that does it, for the cost model, the evaluator, the baselines, the latency predictor and the CLI:

- the graph is rebuilt with the plan's depths only (fresh blocks, ``init="reinit"``: weights do not enter a
  cost), verified and analysed;
- the plan's widths are mapped onto the deeper graph's groups: a group of the deeper graph takes the width of
  the traced groups its channels come from (a repeated block's inner channels, that of the block it repeats),
  found by pairing the channel labels of every node and module of the deeper graph with those of the traced
  node it copies (tagged in the node metadata during the rebuild);
- the result is ``(deeper ChannelGraph, residual plan)``, the residual holding the mapped widths and the
  resolution but no depths, so ``cost_model(deep, rest.resolution).report(rest)`` costs the whole plan exactly
  as the graph ``fxscale.transform(gm, plan, init="reinit")`` builds (widths first, then the copies) costs.

A plan without depths comes back unchanged, with no work. With a ``Materializer`` (a bounded cache its caller
owns: an Evaluator, a LatencyPredictor, a CLI run) the rebuild happens once per (traced GraphModule, depths),
so every width and resolution variant of one depth plan shares it. Where the mapping does not decide a plan
(a deep group comes from traced groups the plan gives different widths: a repeated VGG conv reads its own
output, so its input and output widths must agree; or a group without a single origin), the full plan goes
through ``fxscale.transform`` instead, which refuses it or builds it (the residual plan then being empty).
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch.fx as fx

from fxscale.analysis.graph import ChannelGraph, analyze
from fxscale.passes.depth import depth_pass
from fxscale.plan import ScalingPlan
from fxscale.tracing import META

DepthsKey = tuple[tuple[str, int], ...]
ORIGIN = "origin"  # node.meta[META] key during a rebuild: the traced node a node copies


@dataclass(frozen=True)
class _Deep:
    """One rebuilt graph: its traced GraphModule (weakly), the deeper graph, deep group -> traced groups."""

    source: "weakref.ref[fx.GraphModule]"
    cg: ChannelGraph
    groups: Optional[Mapping[str, tuple[str, ...]]]  # None: cg is the full plan's graph (fallback)


class Materializer:
    """A bounded cache of deeper graphs, keyed by (traced GraphModule, depths); owned by its caller.

    Entries hold the traced GraphModule weakly (an id reused by a new module is not mistaken for the old one)
    and the deeper ChannelGraph strongly, oldest dropped past ``maxsize``. ``rebuilds`` counts the rebuilds.
    """

    def __init__(self, maxsize: int = 16) -> None:
        self.maxsize = maxsize
        self.rebuilds = 0
        self._entries: OrderedDict[tuple, _Deep] = OrderedDict()

    def __call__(self, cg: ChannelGraph, plan: ScalingPlan, *, mode: str = "input"
                 ) -> tuple[ChannelGraph, ScalingPlan]:
        """``materialize(cg, plan, mode=mode, cache=self)``."""
        return materialize(cg, plan, mode=mode, cache=self)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Drop every cached graph."""
        self._entries.clear()

    def _get(self, key: tuple, gm: fx.GraphModule) -> Optional[_Deep]:
        hit = self._entries.get(key)
        if hit is None or hit.source() is not gm:
            return None
        self._entries.move_to_end(key)
        return hit

    def _put(self, key: tuple, entry: _Deep) -> None:
        self.rebuilds += 1
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > max(1, self.maxsize):
            self._entries.popitem(last=False)


def materialize(cg: ChannelGraph, plan: ScalingPlan, *, mode: str = "input",
                cache: Optional[Materializer] = None) -> tuple[ChannelGraph, ScalingPlan]:
    """The graph a plan's depths build and the plan's remaining widths/resolution on it (see the module docstring).

    A plan without depths: ``(cg, plan)`` as given. `mode` is the resolution mode ("input" or "resize") the
    residual plan is meant for; it only enters the full-plan fallback. `cache`: a Materializer to reuse rebuilds.
    """
    depths = getattr(plan, "depths", None)
    if not depths:
        return cg, plan
    cache = cache if cache is not None else Materializer(maxsize=2)
    gm = cg.gm
    rest = ScalingPlan(widths=dict(plan.widths), resolution=plan.resolution)
    key: tuple = (id(gm), _depths_key(depths))
    entry = cache._get(key, gm)
    if entry is None:
        deep, groups = _rebuild(cg, dict(depths))
        entry = _Deep(weakref.ref(gm), deep, groups)
        cache._put(key, entry)
    if entry.groups is not None:
        rest.validate(cg)  # group names and divisors against the traced graph, as transform checks them
        residual = _residual(entry, rest)
        if residual is not None:
            return entry.cg, residual
    full = (*key, rest.to_json(indent=None), mode)  # widths the rebuilt blocks cannot take: transform decides
    hit = cache._get(full, gm)
    if hit is None:
        from fxscale.api import transform
        new = transform(gm, ScalingPlan(widths=dict(plan.widths), resolution=plan.resolution, depths=dict(depths)),
                        init="reinit", resolution_mode=mode, cg=cg)
        hit = _Deep(weakref.ref(gm), analyze(new), None)
        cache._put(full, hit)
    return hit.cg, ScalingPlan()


def _residual(entry: _Deep, rest: ScalingPlan) -> Optional[ScalingPlan]:
    """The widths of `rest` on the deeper graph's groups; None when a deep group's origins disagree."""
    widths = {}
    deep = entry.cg.by_name
    for name, origins in (entry.groups or {}).items():
        g = deep[name]
        ws = {rest.widths.get(o, g.width) for o in origins}
        if len(ws) != 1:
            return None
        w = ws.pop()
        if w != g.width:
            if not g.scalable or w % g.divisor:
                return None
            widths[name] = w
        elif name in rest.widths or any(o in rest.widths for o in origins):
            widths[name] = w
    return ScalingPlan(widths=widths, resolution=rest.resolution)


def _depths_key(depths: Mapping[str, int]) -> DepthsKey:
    return tuple(sorted((str(k), int(v)) for k, v in depths.items()))


def _rebuild(cg: ChannelGraph, depths: dict[str, int]) -> tuple[ChannelGraph, Optional[dict[str, tuple[str, ...]]]]:
    """transform(gm, ScalingPlan(depths=depths), init="reinit"), analysed, with deep group -> traced groups."""
    from fxscale.api import copy_graph_module
    from fxscale.passes.verify import verify
    plan = ScalingPlan(depths=depths)
    plan.validate(cg)
    new = copy_graph_module(cg.gm)
    for n in new.graph.nodes:  # a fresh META dict per node (never the traced node's); the depth pass copies it
        if META in n.meta:
            n.meta[META] = {**n.meta[META], ORIGIN: n.name}
    report = depth_pass(new, depths, "reinit", seed=0)
    verify(new)
    new.meta[META]["transform"] = {"plan": plan.to_json(), "init": "reinit", **({"depth": report} if report else {})}
    new.train(cg.gm.training)
    deep = analyze(new)
    groups = _group_map(cg, deep)
    for n in new.graph.nodes:
        (n.meta.get(META) or {}).pop(ORIGIN, None)
    return deep, groups


def _is_label(x: Any) -> bool:
    return isinstance(x, tuple) and bool(x) and hasattr(x[0], "atom")


def _pair(deep: ChannelGraph, new: Any, cg: ChannelGraph, old: Any, out: dict[int, set[int]]) -> None:
    """Record deep size root -> traced size roots for every channel dim labelled in both (nested alike)."""
    if _is_label(new) and _is_label(old):
        ad, ao = deep.ctx.atoms, cg.ctx.atoms
        ed, eo = ad.expand(new), ao.expand(old)
        if len(ed) == len(eo):
            for p, q in zip(ed, eo):
                if p.inner == q.inner and ad.size[p.atom] == ao.size[q.atom]:
                    out.setdefault(ad.sized.find(p.atom), set()).add(ao.sized.find(q.atom))
        return
    if isinstance(new, (list, tuple)) and isinstance(old, (list, tuple)) and len(new) == len(old):
        for a, b in zip(new, old):
            _pair(deep, a, cg, b, out)


def _pair_uses(deep: ChannelGraph, new: Any, cg: ChannelGraph, old: Any, out: dict[int, set[int]]) -> None:
    """Pair what a module reads and writes: its inputs, outputs and parameter dims (a copied conv reads the
    channels before it, which need not be the ones its original read)."""
    if new is None or old is None:
        return
    _pair(deep, list(new.inputs), cg, list(old.inputs), out)
    _pair(deep, list(new.outputs), cg, list(old.outputs), out)
    for pname, dims in new.params.items():
        for d, (lab, _mode) in dims.items():
            hit = old.params.get(pname, {}).get(d)
            if hit is not None:
                _pair(deep, lab, cg, hit[0], out)


def _group_map(cg: ChannelGraph, deep: ChannelGraph) -> Optional[dict[str, tuple[str, ...]]]:
    """Deep group name -> the traced groups its channels come from (same width and divisor); None if any has none."""
    traced = {n.name: n for n in cg.gm.graph.nodes}
    roots: dict[int, set[int]] = {}
    for n in deep.gm.graph.nodes:
        o = traced.get((n.meta.get(META) or {}).get(ORIGIN))
        if o is None:
            continue
        _pair(deep, (n.meta.get(META) or {}).get("labels"), cg, (o.meta.get(META) or {}).get("labels"), roots)
        if n.op in ("call_module", "get_attr") and o.op == n.op:
            _pair_uses(deep, deep.ctx.uses.get(n.target), cg, cg.ctx.uses.get(o.target), roots)
    by_root = {g.root: g for g in cg.groups}
    out = {}
    for g in deep.groups:
        origins = [by_root.get(r) for r in sorted(roots.get(g.root, ()))]
        if not origins or any(o is None or (o.width, o.divisor) != (g.width, g.divisor) for o in origins):
            return None
        out[g.name] = tuple(sorted(o.name for o in origins))
    return out


__all__ = ["Materializer", "materialize"]
