"""The one channel-mapping mechanism: per index class, new channel j comes from old channel idx[j] (-1 = fresh)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from fxscale.analysis.graph import ChannelGraph
from fxscale.analysis.labels import Label
from fxscale.plan import ScalingPlan

INITS = ("preserve", "prune", "reinit")


@dataclass
class ChannelMaps:
    """New atom sizes and index maps (keyed by identity-class root) for one plan."""

    sizes: dict[int, int]  # leaf atom -> new size
    maps: dict[int, torch.Tensor]  # identity root -> LongTensor[new size] of old channels (-1: fresh)
    _index: dict = field(default_factory=dict, repr=False, compare=False)  # label -> (index, counts), this plan's

    def index(self, cg: ChannelGraph, label: Label) -> tuple[torch.Tensor, torch.Tensor]:
        """Old element index (-1 fresh) and replica count for every new element of a label (computed once)."""
        hit = self._index.get(label)
        if hit is None:
            hit = self._index[label] = self._compute_index(cg, label)
        return hit

    def _compute_index(self, cg: ChannelGraph, label: Label) -> tuple[torch.Tensor, torch.Tensor]:
        at = cg.ctx.atoms
        idxs, cnts, off = [], [], 0
        for p in at.expand(label):
            m = self.maps[at.ident.find(p.atom)]
            old = at.size[p.atom]
            counts = torch.bincount(m[m >= 0], minlength=old).clamp(min=1)
            k = torch.arange(p.inner)
            base = (m.clamp(min=0) * p.inner)[:, None] + k[None, :] + off
            base[m < 0] = -1
            idxs.append(base.reshape(-1))
            cnt = torch.where(m >= 0, counts[m.clamp(min=0)], torch.ones_like(m))
            cnts.append(cnt.repeat_interleave(p.inner))
            off += old * p.inner
        if not idxs:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.cat(idxs), torch.cat(cnts)

    def changed(self, cg: ChannelGraph, label: Label) -> bool:
        """True if any atom of the label has a non-identity map."""
        at = cg.ctx.atoms
        for p in at.expand(label):
            m = self.maps[at.ident.find(p.atom)]
            if len(m) != at.size[p.atom] or not torch.equal(m, torch.arange(len(m))):
                return True
        return False


def new_sizes(cg: ChannelGraph, plan: ScalingPlan) -> dict[int, int]:
    """New size of every leaf atom under the plan's group widths."""
    at = cg.ctx.atoms
    width = {g.root: (plan.widths.get(g.name, g.width), g.parts) for g in cg.groups}
    sizes = {}
    for r, members in at.members.items():
        if not members:
            continue
        w, parts = width.get(r, (None, 1))
        for a in members:
            sizes[a] = at.size[a] if w is None else w // parts
    return sizes


def channel_scores(cg: ChannelGraph, importance: Optional[Mapping[str, torch.Tensor]] = None) -> dict[int, torch.Tensor]:
    """Per identity class, a score per old channel: L1 norm of producer weights, or given importance."""
    at = cg.ctx.atoms
    scores: dict[int, torch.Tensor] = {}
    modules = cg.ctx.modules  # eval graph modules plus train-only ones (aux heads)
    for use in cg.ctx.uses.values():
        found = _producer_weight(cg, modules, use) if use.producer else None
        if found is None:
            continue
        w, dim, lab = found
        per = w.detach().abs().movedim(dim, 0).reshape(w.shape[dim], -1).sum(1)
        _accumulate(at, scores, lab, per)
    if importance:
        _apply_importance(cg, scores, importance)
    return scores


def _producer_weight(cg: ChannelGraph, modules: Mapping[str, torch.nn.Module], use) -> Optional[tuple]:
    """(weight tensor, its output-channel dim, that dim's label) of a producer: a module's ``weight``, or the
    parameter a functional conv/linear reads through get_attr (``F.conv2d(x, self.weight)``, key "")."""
    for key in ("weight", ""):
        dims = use.params.get(key)
        if not dims:
            continue
        out = use.outputs[0] if use.outputs else None
        dim = next((d for d, (lab, _m) in dims.items() if out is not None and lab == out), None)
        if dim is None:
            dim = next((d for d, (_lab, m) in dims.items() if m == "select"), None)
        if dim is None:
            return None
        if key == "weight":
            w = getattr(modules.get(use.name), "weight", None)
        else:
            try:
                w = cg.gm.get_parameter(use.name)
            except AttributeError:
                w = None
        if isinstance(w, torch.Tensor) and w.dim() > dim:
            return w, dim, dims[dim][0]
        return None
    return None


def _accumulate(at, scores: dict, lab: Label, per_elem: torch.Tensor) -> None:
    off = 0
    for p in at.expand(lab):
        n = at.size[p.atom] * p.inner
        ch = per_elem[off:off + n].reshape(at.size[p.atom], p.inner).sum(1).float()
        r = at.ident.find(p.atom)
        scores[r] = scores[r] + ch if r in scores else ch.clone()
        off += n


def _apply_importance(cg: ChannelGraph, scores: dict, importance: Mapping[str, torch.Tensor]) -> None:
    """Replace scores of a group's classes by user importance given over the group's defining label."""
    at = cg.ctx.atoms
    for name, imp in importance.items():
        g = cg.by_name.get(name)
        if g is None or not g.producers:
            continue
        use = cg.ctx.uses[g.producers[0]]
        off = 0
        for p in at.expand(use.outputs[0]):
            n = at.size[p.atom] * p.inner
            if at.sized.find(p.atom) == g.root:
                if len(imp) != g.width:
                    from fxscale.errors import PlanError
                    raise PlanError(f"importance for group {name!r} has {len(imp)} entries, width is {g.width}")
                scores[at.ident.find(p.atom)] = torch.as_tensor(imp, dtype=torch.float)[off:off + n].reshape(
                    at.size[p.atom], p.inner).sum(1)
                off += n


def build_maps(cg: ChannelGraph, plan: ScalingPlan, init: str = "preserve", seed: int = 0,
               importance: Optional[Mapping[str, torch.Tensor]] = None) -> ChannelMaps:
    """Index maps for every identity class: shrink keeps the most important, growth replicates or adds fresh."""
    if init not in INITS:
        from fxscale.errors import PlanError
        raise PlanError(f"init must be one of {INITS}, got {init!r}")
    at = cg.ctx.atoms
    sizes = new_sizes(cg, plan)
    scores = channel_scores(cg, importance)
    maps: dict[int, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(seed)
    for a, new in sizes.items():
        r = at.ident.find(a)
        if r in maps:
            continue
        old = at.size[a]
        s = scores.get(r)
        if s is None:
            s = torch.rand(old, generator=gen)
        maps[r] = _one_map(old, new, s, init)
    return ChannelMaps(sizes, maps)


def _one_map(old: int, new: int, score: torch.Tensor, init: str) -> torch.Tensor:
    """Map of one class: identity, top-k by score (shrink), or identity + replicas/fresh (grow)."""
    if new == old:
        return torch.arange(old)
    order = torch.argsort(score, descending=True, stable=True)
    if new < old:
        return torch.sort(order[:new]).values
    extra = new - old
    if init == "preserve":
        reps = order[torch.arange(extra) % old]
    else:
        reps = torch.full((extra,), -1, dtype=torch.long)
    return torch.cat([torch.arange(old), reps])
