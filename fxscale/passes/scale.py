"""The scaling passes as Pass objects: width, resolution and depth (their rules live in width.py,
resolution.py and the depth package). ``fxscale.transform`` runs them under one PassManager."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Optional

import torch.fx as fx

from fxscale.analysis.graph import ChannelGraph
from fxscale.passes.base import Pass, PassResult
from fxscale.passes.channel_map import ChannelMaps
from fxscale.tracing import META


@dataclass
class WidthPass(Pass):
    """Rebuild every module and parameter a changed channel group touches (weights carried by the maps)."""

    cg: ChannelGraph
    maps: ChannelMaps
    init: str = "preserve"
    noise: float = 0.0
    seed: int = 0
    name: ClassVar[str] = "width"

    def call(self, gm: fx.GraphModule) -> PassResult:
        from fxscale.passes.width import width_pass
        report = width_pass(self.cg, self.maps, gm, self.init, noise=self.noise, seed=self.seed)
        return PassResult(gm, any(report.values()), report)

    def ensures(self, gm: fx.GraphModule) -> None:
        """The static parameter-shape rule, right after the rebuild (a later depth pass renames block paths)."""
        from fxscale.passes.verify import RULES, run_rules
        run_rules(gm, [r for r in RULES if r.name == "param_shapes"], {"cg": self.cg, "maps": self.maps})


@dataclass
class ResolutionPass(Pass):
    """Change the input resolution ('resize': the model keeps its input size; 'input': it takes the new one)."""

    size: tuple[int, int]
    mode: str = "resize"
    name: ClassVar[str] = "resolution"

    def call(self, gm: fx.GraphModule) -> PassResult:
        from fxscale.passes.resolution import resolution_pass
        if tuple(self.size) == tuple(gm.meta[META].get("resolution") or ()):
            return PassResult(gm, False)
        return PassResult(gm, True, resolution_pass(gm, tuple(self.size), self.mode))


@dataclass
class DepthPass(Pass):
    """Repeat blocks (identity-initialised under 'preserve'/'prune', fresh under 'reinit')."""

    depths: Mapping[str, int] = field(default_factory=dict)
    init: str = "preserve"
    seed: int = 0
    name: ClassVar[str] = "depth"

    def call(self, gm: fx.GraphModule) -> PassResult:
        from fxscale.passes.depth import depth_pass
        report = depth_pass(gm, dict(self.depths), self.init, seed=self.seed) if self.depths else None
        return PassResult(gm, bool(report), report or {})


def scaling_passes(cg: ChannelGraph, maps: Optional[ChannelMaps], resolution: Optional[tuple[int, int]],
                   depths: Mapping[str, int], *, init: str, noise: float = 0.0, seed: int = 0,
                   resolution_mode: str = "resize") -> list[Pass]:
    """The passes of one plan, in order: widths, then resolution, then depths (copies inherit both)."""
    passes: list[Pass] = []
    if maps is not None:
        passes.append(WidthPass(cg, maps, init, noise, seed))
    if resolution is not None:
        passes.append(ResolutionPass(tuple(resolution), resolution_mode))
    if depths:
        passes.append(DepthPass(dict(depths), init, seed))
    return passes


__all__ = ["WidthPass", "ResolutionPass", "DepthPass", "scaling_passes"]
