"""Position embeddings: parameters broadcast against a token sequence or feature map that follows the input size.

Found while the solver runs (the entry rule of the binary arithmetic rows, see :mod:`.rules`) and resampled
bicubically when applied: prefix (class) tokens are kept, the grid part is interpolated (timm's
``resample_abs_pos_embed`` approach).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F

from fxscale.analysis import ops as O
from fxscale.errors import PlanError
from fxscale.ops.row import OpRow
from fxscale.ops.table import node_row
from fxscale.passes.spatial_constants.factors import _T, _const, _Fail, _pvals, _Restart

if TYPE_CHECKING:
    from fxscale.passes.spatial_constants.solver import _Solver


def resample_position_embedding(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                                prefix: int = 0, dim: int = -2) -> torch.Tensor:
    """Resample a learned position embedding to a new token grid (timm ``resample_abs_pos_embed`` approach).

    Along ``dim`` the embedding holds ``prefix`` tokens (class / distillation tokens, kept as they are)
    followed by ``old_grid[0] * old_grid[1]`` grid tokens in row-major order; the grid part is interpolated
    bicubically (``align_corners=False``, antialiased when a side shrinks) to ``new_grid``. The same grid
    returns ``pos`` itself, so resampling to the traced grid is an exact identity.
    """
    old_grid, new_grid = tuple(int(s) for s in old_grid), tuple(int(s) for s in new_grid)
    if old_grid == new_grid:
        return pos
    d = dim % pos.dim()
    t = pos.movedim(d, 0)
    if t.shape[0] != prefix + old_grid[0] * old_grid[1]:
        raise PlanError(f"position embedding has {t.shape[0]} tokens along dim {d}, not {prefix} prefix + "
                        f"{old_grid[0]}x{old_grid[1]} grid tokens")
    rest = tuple(t.shape[1:])
    head, grid = t[:prefix], t[prefix:]
    img = grid.reshape(old_grid[0], old_grid[1], -1).permute(2, 0, 1).unsqueeze(0)
    down = new_grid[0] < old_grid[0] or new_grid[1] < old_grid[1]
    img = F.interpolate(img.float(), size=new_grid, mode="bicubic", align_corners=False, antialias=down)
    grid = img.squeeze(0).permute(1, 2, 0).reshape((new_grid[0] * new_grid[1],) + rest).to(pos.dtype)
    return torch.cat([head, grid], 0).movedim(0, d)


def resample_spatial_map(t: torch.Tensor, new_size: tuple[int, int], dims: tuple[int, int]) -> torch.Tensor:
    """Bicubically resample the two spatial dims ``dims`` of a parameter (an additive NCHW-style embedding)."""
    dh, dw = (d % t.dim() for d in dims)
    x = t.movedim((dh, dw), (-2, -1))
    lead = tuple(x.shape[:-2])
    old = tuple(x.shape[-2:])
    if old == tuple(new_size):
        return t
    down = new_size[0] < old[0] or new_size[1] < old[1]
    img = F.interpolate(x.reshape((1, -1) + old).float(), size=tuple(new_size), mode="bicubic",
                        align_corners=False, antialias=down)
    return img.reshape(lead + tuple(new_size)).to(t.dtype).movedim((-2, -1), (dh, dw))


class _PosEmb:
    """A parameter found to be a position embedding: which dims follow the grid, and the grid per probe."""

    def __init__(self, target: str, kind: str, dims: tuple[int, ...], prefix: int, grids: list[tuple[int, int]],
                 node: str, mask: Optional[list] = None) -> None:
        self.target, self.kind, self.dims, self.prefix, self.grids, self.node = target, kind, dims, prefix, grids, node
        self.mask = mask  # (window, shift, fill) matches of a shifted-window attention mask (recomputed, see .masks)

    def shape_at(self, shape: tuple[int, ...], p: int) -> tuple[int, ...]:
        s = list(shape)
        gh, gw = self.grids[p]
        if self.kind == "tokens":
            s[self.dims[0]] = self.prefix + gh * gw
        else:
            s[self.dims[0]], s[self.dims[1]] = gh, gw
        return tuple(s)

    def resample(self, t: torch.Tensor, p: int) -> torch.Tensor:
        if self.mask is not None:
            from fxscale.passes.spatial_constants.masks import window_mask_at
            return window_mask_at(t, self.dims[0], self.mask, self.grids[p])
        if self.kind == "tokens":
            return resample_position_embedding(t, self.grids[0], self.grids[p], self.prefix, self.dims[0])
        return resample_spatial_map(t, self.grids[p], self.dims)


def same_shape(row: Optional[OpRow]) -> bool:
    """A pure data movement op that returns its first operand as it is shaped (copies, casts, dropout)."""
    return row is not None and row.layout and row.rule is O.passthrough


def param_root(node: fx.Node) -> Optional[fx.Node]:
    """The get_attr node ``node`` reads, through at most a few same-shape copies/casts; None otherwise."""
    cur = node
    for _ in range(8):
        if cur.op == "get_attr":
            return cur
        if same_shape(node_row(cur)) and cur.args and isinstance(cur.args[0], fx.Node):
            cur = cur.args[0]
            continue
        return None
    return None


def check_position_embedding(s: "_Solver", n: fx.Node) -> None:
    """Entry rule of broadcasting arithmetic: a parameter combined with a tensor whose sizes follow the input.

    A parameter dim equal at the traced size to an operand dim that follows the input size makes the parameter
    a position embedding: it is recorded and the solver restarts with it resampled at every probe.
    """
    if len(n.args) < 2:
        return
    a, b = n.args[0], n.args[1]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return
    for o, x in ((a, b), (b, a)):
        from fxscale.passes.spatial_constants.relbias import check_relative_bias
        check_relative_bias(s, n, o, x)  # a gathered relative-position bias table: records it and restarts
        root = param_root(o)
        if root is None or not isinstance(s.lab.get(x), _T) or not isinstance(s.vals.get(o, [None])[0],
                                                                              torch.Tensor):
            continue
        oshape = [tuple(v.shape) for v in s.vals[o]]
        xl = s.lab[x]
        conflicts = []
        for k in range(1, min(len(oshape[0]), len(xl)) + 1):
            xv = _pvals(xl[len(xl) - k], s.P)
            so = tuple(sh[len(sh) - k] for sh in oshape)
            if so[0] > 1 and xv[0] == so[0] and xv != so:
                conflicts.append(len(oshape[0]) - k)
        if not conflicts:
            continue
        if root.target in s.posemb:
            raise _Fail(n, f"position embedding {root.target} does not match the tokens")
        param = s.real_attr(root.target)
        if tuple(param.shape) != oshape[0]:
            raise PlanError(f"node {n.name}: {root.target} is added to a sequence whose length follows the "
                            "input size, but reaches it through a shape change; cannot resample it")
        spec = _posemb_spec(s.P, n, root.target, sorted(conflicts), xl, oshape[0])
        if not isinstance(param, torch.nn.Parameter):  # a constant or buffer: only a recognised mask is recomputed
            from fxscale.passes.spatial_constants.masks import match_window_mask
            spec.mask = match_window_mask(param, spec.dims[0], spec.grids[0]) \
                if spec.kind == "tokens" and spec.prefix == 0 else None
            if spec.mask is None:
                raise PlanError(f"node {n.name}: {root.target} (shape {tuple(param.shape)}) is a constant, not a "
                                "learned parameter, combined with tokens whose count follows the input size; no "
                                "rule recomputes it at a new resolution (only shifted-window attention masks are)")
        s.posemb[root.target] = spec
        for p in range(s.P):
            s.meta_attr.pop((root.target, p), None)
        raise _Restart()


def _posemb_spec(P: int, n: fx.Node, target: str, dims: list, xl: _T, shape: tuple) -> _PosEmb:
    off = len(xl) - len(shape)
    where = f"node {n.name}: {target} (shape {tuple(shape)})"
    if len(dims) == 1:
        d = dims[0]
        factors = xl[d + off]
        parts = factors[0].parts if len(factors) == 1 and factors[0].parts else [factors]
        spatial = [k for k, part in enumerate(parts) if not _const(_pvals(part, P))]
        if len(spatial) != 1 or spatial[0] != len(parts) - 1:
            raise PlanError(f"{where} is added to tokens whose length follows the input size, but the grid "
                            "tokens are not one block after fixed prefix tokens; cannot resample it")
        prefix = sum(_pvals(part, P)[0] for part in parts[:-1])
        grid = [f for f in parts[-1] if not _const(f.vals)]
        fixed = [f for f in parts[-1] if _const(f.vals) and f.vals[0] != 1]
        if len(grid) != 2 or fixed:
            raise PlanError(f"{where} is added to tokens whose length follows the input size, but they do not "
                            "come from one 2-D grid (rows x columns); cannot resample it")
        grids = [(grid[0].vals[p], grid[1].vals[p]) for p in range(P)]
        if prefix + grids[0][0] * grids[0][1] != shape[d]:
            raise PlanError(f"{where}: {shape[d]} tokens are not {prefix} + {grids[0][0]}x{grids[0][1]}")
        return _PosEmb(target, "tokens", (d,), prefix, grids, n.name)
    if len(dims) == 2:
        grids = [(_pvals(xl[dims[0] + off], P)[p], _pvals(xl[dims[1] + off], P)[p]) for p in range(P)]
        return _PosEmb(target, "grid", tuple(dims), 0, grids, n.name)
    raise PlanError(f"{where} is broadcast against {len(dims)} dimensions that follow the input size; "
                    "cannot resample it")


__all__ = ["resample_position_embedding", "resample_spatial_map", "_PosEmb", "same_shape", "param_root",
           "check_position_embedding"]
