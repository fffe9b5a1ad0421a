"""Shifted-window attention masks: constants a trace computed from the window geometry, recomputed at a new one.

Swin-style blocks add a mask to the attention logits of shifted windows: ``(num_windows, N, N)`` (broadcast as
``(1, num_windows, 1, N, N)``), 0 where two tokens of a window come from the same region of the cyclically
shifted map and ``fill`` (-100, or -inf) elsewhere. A trace bakes it in as a constant for the traced number of
windows. It is not a learned embedding: resampling it would be wrong. It is recomputed only when the traced
constant equals, exactly, the mask that the window size and shift give at the traced grid (Swin's region rule,
timm's ``SwinTransformerBlock.get_attn_mask``); any other constant that spans the token grid is refused.
"""
from __future__ import annotations

from typing import Optional

import torch

from fxscale.errors import PlanError


def shifted_window_mask(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int],
                        fill: float) -> torch.Tensor:
    """The ``(nh * nw, wh * ww, wh * ww)`` mask of a ``grid`` of windows: Swin's 3 x 3 regions of the shifted
    map (Python slices ``(0, -w), (-w, -s), (-s, None)`` per side, as Swin writes them), ``fill`` across regions."""
    (nh, nw), (wh, ww), (sh, sw) = grid, window, shift
    img = torch.zeros(nh * wh, nw * ww)
    cnt = 0
    for hs in (slice(0, -wh), slice(-wh, -sh), slice(-sh, None)):
        for ws in (slice(0, -ww), slice(-ww, -sw), slice(-sw, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = img.view(nh, wh, nw, ww).permute(0, 2, 1, 3).reshape(nh * nw, wh * ww)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, torch.tensor(fill), torch.tensor(0.0))


def match_window_mask(t: torch.Tensor, dim: int, grid: tuple[int, int]) -> Optional[list[tuple]]:
    """Every (window, shift, fill) whose mask at ``grid`` equals ``t`` exactly (windows along ``dim``, the
    token matrix in the last two dims, every other dim 1); None when ``t`` is not such a mask."""
    d = dim % t.dim()
    n = t.shape[-1]
    if t.dim() < 3 or d >= t.dim() - 2 or t.shape[-2] != n or t.shape[d] != grid[0] * grid[1] \
            or any(s != 1 for k, s in enumerate(t.shape[:-2]) if k != d) or not t.is_floating_point():
        return None
    m = t.detach().reshape(t.shape[d], n, n).float()
    vals = torch.unique(m)
    if len(vals) != 2 or float(vals.max()) != 0.0 or not float(vals.min()) < 0:
        return None
    fill = float(vals.min())
    out = []
    for wh in (k for k in range(1, n + 1) if n % k == 0):
        ww = n // wh
        for sh in range(wh):
            for sw in range(ww):
                if (sh, sw) != (0, 0) and torch.equal(shifted_window_mask(grid, (wh, ww), (sh, sw), fill), m):
                    out.append(((wh, ww), (sh, sw), fill))
    return out or None


def window_mask_at(t: torch.Tensor, dim: int, matches: list[tuple], grid: tuple[int, int]) -> torch.Tensor:
    """The mask at a new ``grid`` of windows, shaped like ``t`` (PlanError if the matches disagree there)."""
    masks = [shifted_window_mask(grid, w, s, f) for w, s, f in matches]
    if any(not torch.equal(masks[0], m) for m in masks[1:]):
        raise PlanError(f"a shifted-window attention mask of shape {tuple(t.shape)} fits several window "
                        "geometries that differ at the new resolution; cannot recompute it")
    shape = list(t.shape)
    shape[dim % t.dim()] = grid[0] * grid[1]
    return masks[0].reshape(shape).to(t.dtype)


__all__ = ["shifted_window_mask", "match_window_mask", "window_mask_at"]
