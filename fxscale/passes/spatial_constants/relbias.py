"""Relative position biases gathered by an index buffer: ``table[:, idx]`` added to attention scores whose token
grid follows the input size (LeViT, EfficientFormer, EfficientFormerV2).

The table holds one value per head and per absolute offset ``(|dy|, |dx|)`` of a ``Rh x Rw`` grid, and ``idx``
(``Nq x Nk``, an integer buffer computed at construction) maps each query/key pair to its offset:
``idx[q, k] = |s*qy - ky| * Rw + |s*qx - kx|`` with ``s`` the query stride (1, or 2 in the downsampling
attentions). Like a position embedding, the table is a function of position sampled on the traced grid: at a new
grid the table is resampled bicubically as a ``Rh x Rw`` map per head and the index buffer is regenerated
(timm's approach to resizing relative position bias tables). The buffer is rebuilt only when its values equal the
generator at the traced grid exactly; any other index layout raises a PlanError naming the node.
"""
from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F

from fxscale.errors import PlanError
from fxscale.ops.table import node_row
from fxscale.passes.spatial_constants.factors import _T, _const, _Fail, _pvals, _Restart

if TYPE_CHECKING:
    from fxscale.passes.spatial_constants.solver import _Solver

Grid = tuple[int, int]


def offset_index(q_grid: Grid, k_grid: Grid, stride: int = 1) -> torch.Tensor:
    """``idx[q, k] = |s*qy - ky| * kw + |s*qx - kx|`` over row-major query and key grids (LongTensor [Nq, Nk])."""
    def coords(grid: Grid, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        y, x = torch.meshgrid(torch.arange(grid[0]) * s, torch.arange(grid[1]) * s, indexing="ij")
        return y.flatten(), x.flatten()
    qy, qx = coords(q_grid, stride)
    ky, kx = coords(k_grid, 1)
    return (qy[:, None] - ky[None]).abs() * k_grid[1] + (qx[:, None] - kx[None]).abs()


def resample_offset_table(table: torch.Tensor, dim: int, old: Grid, new: Grid) -> torch.Tensor:
    """Resample the offset axis ``dim`` of a bias table (``old[0] * old[1]`` entries, row-major ``|dy|, |dx|``)
    to ``new[0] * new[1]`` entries, bicubically per head; the same grid returns ``table`` itself."""
    if tuple(old) == tuple(new):
        return table
    t = table.movedim(dim, -1)
    lead = tuple(t.shape[:-1])
    img = t.reshape((1, -1) + tuple(old)).float()
    down = new[0] < old[0] or new[1] < old[1]
    img = F.interpolate(img, size=tuple(new), mode="bicubic", align_corners=False, antialias=down)
    return img.reshape(lead + (new[0] * new[1],)).to(table.dtype).movedim(-1, dim)


class _RelBias:
    """A bias table gathered by an index buffer, and the query/key grids at every probe."""

    def __init__(self, table: str, index: str, dim: int, q: list[Grid], k: list[Grid], stride: int,
                 node: str) -> None:
        self.table, self.index, self.dim, self.q, self.k, self.stride, self.node = table, index, dim, q, k, stride, node

    def shape_at(self, target: str, shape: tuple[int, ...], p: int) -> tuple[int, ...]:
        if target == self.index:
            return (self.q[p][0] * self.q[p][1], self.k[p][0] * self.k[p][1])
        s = list(shape)
        s[self.dim] = self.k[p][0] * self.k[p][1]
        return tuple(s)

    def new_index(self, p: int) -> torch.Tensor:
        return offset_index(self.q[p], self.k[p], self.stride)

    def new_table(self, table: torch.Tensor, p: int) -> torch.Tensor:
        return resample_offset_table(table, self.dim, self.k[0], self.k[p])


def index_gather(node: fx.Node) -> Optional[tuple[fx.Node, fx.Node, int]]:
    """(table get_attr, index get_attr, gathered table dim) when ``node`` is ``table[..., idx]`` (reached through
    same-shape copies) with ``idx`` a 2-D buffer and every other index a full slice; None otherwise."""
    from fxscale.passes.spatial_constants.embeddings import same_shape
    cur = node
    for _ in range(8):
        if same_shape(node_row(cur)) and cur.args and isinstance(cur.args[0], fx.Node):
            cur = cur.args[0]
            continue
        break
    if not (cur.op == "call_function" and cur.target is operator.getitem and isinstance(cur.args[0], fx.Node)
            and cur.args[0].op == "get_attr"):
        return None
    idx = cur.args[1]
    items = idx if isinstance(idx, tuple) else (idx,)
    nodes = [(d, a) for d, a in enumerate(items) if isinstance(a, fx.Node)]
    if len(nodes) != 1 or nodes[0][1].op != "get_attr":
        return None
    if any(a != slice(None) for a in items if not isinstance(a, fx.Node)):
        return None
    return cur.args[0], nodes[0][1], nodes[0][0]


def _grid(P: int, factors: Any, where: str) -> list[Grid]:
    """The row x column grid (per probe) of one token dim whose length follows the input size."""
    parts = factors[0].parts if len(factors) == 1 and factors[0].parts else [factors]
    if len(parts) != 1:
        raise PlanError(f"{where}: the tokens are not one grid (prefix tokens); cannot rebuild the bias index")
    grid = [f for f in parts[0] if not _const(f.vals)]
    fixed = [f for f in parts[0] if _const(f.vals) and f.vals[0] != 1]
    if len(grid) != 2 or fixed:
        raise PlanError(f"{where}: the tokens do not come from one 2-D grid; cannot rebuild the bias index")
    return [(grid[0].vals[p], grid[1].vals[p]) for p in range(P)]


def _count_grid(nk: tuple, offsets: int) -> Optional[list[Grid]]:
    """Per probe the rows x columns of ``nk`` tokens with the aspect of the traced grid (``offsets`` = its token
    count: the table has one entry per key position); None when a count has no such factorisation."""
    def pairs(n: int) -> list[Grid]:
        return [(a, n // a) for a in range(1, n + 1) if n % a == 0]
    if nk[0] != offsets:
        return None
    old = min(pairs(nk[0]), key=lambda g: abs(math.log(g[0] / g[1])))
    out = [min(pairs(n), key=lambda g: abs(math.log(g[0] / g[1]) - math.log(old[0] / old[1]))) for n in nk]
    return out


def _strided_grid(nq: tuple, k: list[Grid]) -> Optional[list[Grid]]:
    """The query grid ceil(key grid / s) whose token count is ``nq`` at every probe, for the smallest such s."""
    for st in (1, 2, 3, 4):
        q = [(math.ceil(kh / st), math.ceil(kw / st)) for kh, kw in k]
        if all(a * b == v for (a, b), v in zip(q, nq)):
            return q
    return None


def _stride(index: torch.Tensor, q: Grid, k: Grid) -> Optional[int]:
    for s in (1, 2, 3, 4):
        if (math.ceil(k[0] / s), math.ceil(k[1] / s)) == tuple(q) and tuple(index.shape) == (q[0] * q[1], k[0] * k[1]) \
                and torch.equal(index.long(), offset_index(q, k, s)):
            return s
    return None


def check_relative_bias(s: "_Solver", n: fx.Node, o: fx.Node, x: fx.Node) -> bool:
    """Entry rule (with the position embeddings): ``o`` is a gathered bias table combined at ``n`` with scores
    ``x`` whose last two dims follow the input grid. Records the table and index, and restarts; False when ``o``
    is not such a gather or nothing conflicts."""
    found = index_gather(o)
    if found is None or not isinstance(s.lab.get(x), _T) or not isinstance(s.vals.get(o, [None])[0], torch.Tensor):
        return False
    table, index, dim = found
    oshape = [tuple(v.shape) for v in s.vals[o]]
    xl = s.lab[x]
    if len(xl) < 2 or len(oshape[0]) < 2:
        return False
    follows = [_pvals(xl[len(xl) - k], s.P) for k in (2, 1)]
    if all(_const(v) for v in follows):
        return False
    if all(tuple(f) == tuple(sh[len(sh) - k] for sh in oshape) for f, k in zip(follows, (2, 1))):
        return False  # the bias follows the grid already (rebuilt, or computed from the input)
    where = f"node {n.name}: bias {table.target}[{index.target}]"
    if str(index.target) in s.relbias:
        raise _Fail(n, f"{where} does not match the attention scores")
    try:
        k = _grid(s.P, xl[len(xl) - 1], where)
    except PlanError:  # keys from a strided slice carry one fresh factor: the grid of each token count
        k = _count_grid(follows[1], s.real_attr(str(table.target)).shape[dim])
        if k is None:
            raise
    try:
        q = _grid(s.P, xl[len(xl) - 2], where)
    except PlanError:  # strided queries (a downsampling attention): the key grid at the stride that fits
        q = _strided_grid(follows[0], k)
        if q is None:
            raise
    buf, tab = s.real_attr(str(index.target)), s.real_attr(str(table.target))
    if tab.shape[dim] != k[0][0] * k[0][1]:
        raise PlanError(f"{where}: the table has {tab.shape[dim]} offsets, not one per {k[0][0]}x{k[0][1]} key "
                        "grid position; cannot resample it")
    stride = _stride(buf, q[0], k[0])
    if stride is None:
        raise PlanError(f"{where}: the index buffer is not |s*dy|*W + |s*dx| over the {q[0]} query and {k[0]} key "
                        "grids; cannot rebuild it for the new grid")
    if any((math.ceil(kk[0] / stride), math.ceil(kk[1] / stride)) != tuple(qq) for qq, kk in zip(q, k)):
        raise PlanError(f"{where}: query grid does not stay the key grid at stride {stride}")
    s.relbias[str(index.target)] = _RelBias(str(table.target), str(index.target), dim, q, k, stride, n.name)
    for p in range(s.P):
        s.meta_attr.pop((str(index.target), p), None)
        s.meta_attr.pop((str(table.target), p), None)
    raise _Restart()


def apply_relative_biases(gm: fx.GraphModule, specs: list[_RelBias]) -> list[dict[str, Any]]:
    """Resample every recorded table and regenerate its index buffer at the target grid (probe 1)."""
    report = []
    for spec in specs:
        for target, make in ((spec.table, lambda old: spec.new_table(old, 1)),
                             (spec.index, lambda old: spec.new_index(1).to(old.device, old.dtype))):
            parent_name, _, leaf = target.rpartition(".")
            parent = gm.get_submodule(parent_name) if parent_name else gm
            old = getattr(parent, leaf)
            with torch.no_grad():
                new = make(old.detach()).contiguous()
            if isinstance(old, torch.nn.Parameter):
                setattr(parent, leaf, torch.nn.Parameter(new, requires_grad=old.requires_grad))
            elif leaf in dict(parent.named_buffers(recurse=False)):
                parent.register_buffer(leaf, new, persistent=leaf not in parent._non_persistent_buffers_set)
            else:
                setattr(parent, leaf, new)
        report.append({"table": spec.table, "index": spec.index, "node": spec.node, "stride": spec.stride,
                       "old_grid": list(spec.k[0]), "new_grid": list(spec.k[1])})
    return report


__all__ = ["offset_index", "resample_offset_table", "index_gather", "check_relative_bias", "apply_relative_biases"]
