"""First-order Taylor importance (HACScale eq. 5, Molchanov et al. 2019) per channel and per channel group."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Union

import torch
import torch.fx as fx
import torch.nn.functional as F

from fxscale.analysis.graph import ChannelGraph, analyze
from fxscale.errors import FxscaleError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Importance:
    """Taylor scores: per channel of every group, and per group (mean over its channels = one kernel's)."""

    channels: dict[str, torch.Tensor]
    groups: dict[str, float] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)
    batches: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (per-channel scores as lists)."""
        return {"groups": self.groups, "widths": self.widths, "batches": self.batches,
                "channels": {k: v.tolist() for k, v in self.channels.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Importance":
        """Inverse of to_dict."""
        return cls({k: torch.tensor(v) for k, v in d["channels"].items()}, dict(d["groups"]),
                   {k: int(v) for k, v in d["widths"].items()}, int(d["batches"]))


def importance(gm: fx.GraphModule, data: Union[Batches, Any], loss: Optional[Callable] = None, *,
               batches: Optional[int] = None, batch_size: int = 64, resolution: Optional[tuple] = None,
               cg: Optional[ChannelGraph] = None) -> Importance:
    """Taylor importance of every scalable group's channels: sum over the kernel's parameters of (g*w)^2.

    A channel's kernel is every parameter slice that selects that channel (producer rows plus followers such
    as BN affine weights); per-batch scores are averaged over mini-batches. `data` is a DataBundle (its train
    split is used) or any iterable of (x, y) batches; `loss` defaults to cross-entropy.
    """
    cg = cg if cg is not None and cg.gm is gm else analyze(gm)
    batches_iter = _batches(data, batch_size, resolution)
    loss = loss or F.cross_entropy
    params = dict(gm.named_parameters())
    sums = {n: torch.zeros_like(p) for n, p in params.items()}
    was = gm.training
    gm.eval()  # running statistics stay untouched; gradients still flow
    n = 0
    try:
        for x, y in batches_iter:
            gm.zero_grad(set_to_none=True)
            loss(_logits(gm(x)), y).backward()
            for name, p in params.items():
                if p.grad is not None:
                    sums[name] += (p.grad.detach() * p.detach()) ** 2
            n += 1
            if batches is not None and n >= batches:
                break
    finally:
        gm.zero_grad(set_to_none=True)
        gm.train(was)
    if n == 0:
        raise FxscaleError("importance: the data yielded no batches (empty dataset or split?)")
    return _per_channel(cg, {k: v / n for k, v in sums.items()}, n)


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def _batches(data: Any, batch_size: int, resolution: Optional[tuple]) -> Batches:
    from fxscale.data import DataBundle, loader
    if isinstance(data, DataBundle):
        return loader(data, "train", batch_size, resolution, shuffle=False)
    return data


def _per_channel(cg: ChannelGraph, scores: dict[str, torch.Tensor], n: int) -> Importance:
    """Reduce per-element scores onto channel classes through the select dims of every parameter use."""
    at = cg.ctx.atoms
    per_class: dict[int, torch.Tensor] = {}
    for use in cg.ctx.uses.values():
        for pname, dims in use.params.items():
            s = scores.get(f"{use.name}.{pname}" if pname else use.name)
            if s is None:
                continue
            for d, (lab, mode) in dims.items():
                if mode != "select" or lab is None:
                    continue
                per = s.transpose(0, d).reshape(s.shape[d], -1).sum(1)
                _add(at, per_class, lab, per)
    channels, groups, widths = {}, {}, {}
    for g in cg.scalable:
        vec = _group_vector(cg, g, per_class)
        channels[g.name], groups[g.name], widths[g.name] = vec, float(vec.mean()), g.width
    return Importance(channels, groups, widths, n)


def _add(at: Any, acc: dict[int, torch.Tensor], lab: tuple, per_elem: torch.Tensor) -> None:
    off = 0
    for p in at.expand(lab):
        k = at.size[p.atom] * p.inner
        ch = per_elem[off:off + k].reshape(at.size[p.atom], p.inner).sum(1).double()
        r = at.ident.find(p.atom)
        acc[r] = acc[r] + ch if r in acc else ch
        off += k


def _group_vector(cg: ChannelGraph, g: Any, per_class: dict[int, torch.Tensor]) -> torch.Tensor:
    """Per-channel scores of a group in the order of its first producer's output channels."""
    at = cg.ctx.atoms
    use = cg.ctx.uses[g.producers[0]]
    parts = [per_class.get(at.ident.find(p.atom), torch.zeros(at.size[p.atom], dtype=torch.double))
             for p in at.expand(use.outputs[0]) if at.sized.find(p.atom) == g.root]
    return torch.cat(parts).float()


__all__ = ["Importance", "importance"]
