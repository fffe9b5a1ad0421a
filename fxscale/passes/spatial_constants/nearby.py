"""Nearby sizes that do work, for the error raised at a size that does not."""
from __future__ import annotations

from fractions import Fraction

import torch.fx as fx

from fxscale.errors import PlanError, TraceError
from fxscale.passes.spatial_constants.factors import _Unsupported
from fxscale.passes.spatial_constants.solve import _solve

_NEARBY = (Fraction(1, 4), Fraction(1, 3), Fraction(1, 2), Fraction(2, 3), Fraction(3, 4), Fraction(1),
           Fraction(5, 4), Fraction(4, 3), Fraction(3, 2), Fraction(5, 3), Fraction(2), Fraction(5, 2),
           Fraction(3), Fraction(4))


def _with_nearby(gm: fx.GraphModule, original: tuple, size: tuple, mode: str, e: PlanError) -> PlanError:
    """``e`` for ``size``, naming the nearest sizes below and above that solve."""
    near = _nearby_sizes(gm, original, size, mode)
    hint = f"; sizes that work nearby: {', '.join(f'{h}x{w}' for h, w in near)}" if near else ""
    return PlanError(f"resolution {size[0]}x{size[1]}: the graph does not run at this size: {e}{hint}")


def _nearby_sizes(gm: fx.GraphModule, original: tuple, size: tuple, mode: str, tries: int = 6) -> list:
    """The nearest sizes below and above ``size`` (simple multiples of the traced size) that solve."""
    cands = sorted({(round(original[0] * f), round(original[1] * f)) for f in _NEARBY} - {tuple(size)},
                   key=lambda s: abs(s[0] * s[1] - size[0] * size[1]))
    below = above = None
    for c in cands[:tries * 2]:
        if tries <= 0 or (below and above):
            break
        is_below = c[0] * c[1] < size[0] * size[1]
        if (is_below and below) or (not is_below and above) or min(c) < 1:
            continue
        tries -= 1
        try:
            _solve(gm, original, c, mode)
        except (PlanError, TraceError, _Unsupported):
            continue
        if is_below:
            below = c
        else:
            above = c
    return [s for s in (below, above) if s]


__all__ = ["_with_nearby", "_nearby_sizes"]
