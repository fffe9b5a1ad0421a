"""Relative position biases gathered by an index buffer: ``table[:, idx]`` added to attention scores whose token
grid follows the input size (LeViT, EfficientFormer, EfficientFormerV2).

The table holds one value per head and per absolute offset ``(|dy|, |dx|)`` of a ``Rh x Rw`` grid, and ``idx``
(``Nq x Nk``, an integer buffer computed at construction) maps each query/key pair to its offset:
``idx[q, k] = |s*qy - ky| * Rw + |s*qx - kx|`` with ``s`` the query stride (1, or 2 in the downsampling
attentions). Like a position embedding, the table is a function of position sampled on the traced grid: at a new
grid the table is resampled bicubically as a ``Rh x Rw`` map per head and the index buffer is regenerated
(timm's approach to resizing relative position bias tables). The buffer is rebuilt only when its values equal the
generator at the traced grid exactly; any other index layout raises a PlanError naming the node.

Swin-style tables (CoAtNet, MaxViT, Swin) hold one value per *signed* offset of a ``Wh x Ww`` window:
``(2Wh - 1) x (2Ww - 1)`` entries, ``idx[q, k] = (qy - ky + Wh - 1) * (2Ww - 1) + (qx - kx + Ww - 1)``
(:func:`signed_offset_index`). Where such a window is the whole feature map (the bias is added to attention over
the full grid, here or as the ``attn_mask`` of ``scaled_dot_product_attention``), the table is resampled as a
``(2Wh - 1) x (2Ww - 1)`` map and the index regenerated the same way.
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
from fxscale.passes.spatial_constants.factors import _F, _T, _const, _Fail, _pvals, _Restart

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


def signed_offset_index(grid: Grid) -> torch.Tensor:
    """Swin's ``idx[q, k] = (qy - ky + h - 1) * (2w - 1) + (qx - kx + w - 1)`` over one row-major grid."""
    y, x = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    y, x = y.flatten(), x.flatten()
    return (y[:, None] - y[None] + grid[0] - 1) * (2 * grid[1] - 1) + (x[:, None] - x[None] + grid[1] - 1)


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
                 node: str, signed: bool = False, index_dims: int = 2) -> None:
        self.table, self.index, self.dim, self.q, self.k, self.stride, self.node = table, index, dim, q, k, stride, node
        self.signed = signed  # Swin-style: one entry per signed offset, (2h - 1) x (2w - 1)
        self.index_dims = index_dims  # 2: [Nq, Nk]; 1: flattened (Swin's index.view(-1) stored flat)

    def index_label(self, P: int) -> _T:
        """The index buffer's factors: query rows, columns, then key rows, columns (one dim when flat)."""
        q = (_F(tuple(g[0] for g in self.q)), _F(tuple(g[1] for g in self.q)))
        k = (_F(tuple(g[0] for g in self.k)), _F(tuple(g[1] for g in self.k)))
        return _T((q + k,)) if self.index_dims == 1 else _T((q, k))

    def offsets(self, p: int) -> Grid:
        return (2 * self.k[p][0] - 1, 2 * self.k[p][1] - 1) if self.signed else tuple(self.k[p])

    def shape_at(self, target: str, shape: tuple[int, ...], p: int) -> tuple[int, ...]:
        if target == self.index:
            nq, nk = self.q[p][0] * self.q[p][1], self.k[p][0] * self.k[p][1]
            return (nq * nk,) if self.index_dims == 1 else (nq, nk)
        s = list(shape)
        s[self.dim] = self.offsets(p)[0] * self.offsets(p)[1]
        return tuple(s)

    def new_index(self, p: int) -> torch.Tensor:
        idx = signed_offset_index(self.k[p]) if self.signed else offset_index(self.q[p], self.k[p], self.stride)
        return idx.reshape(-1) if self.index_dims == 1 else idx

    def new_table(self, table: torch.Tensor, p: int) -> torch.Tensor:
        return resample_offset_table(table, self.dim, self.offsets(0), self.offsets(p))


_LAYOUT = {"view_m", "reshape", "reshape_m", "permute", "permute_m", "unsqueeze", "unsqueeze_m", "flatten",
           "flatten_m"}


def index_gather(node: fx.Node, layout: bool = False) -> Optional[tuple[fx.Node, fx.Node, int]]:
    """(table get_attr, index get_attr, gathered table dim) when ``node`` is ``table[..., idx]`` (reached through
    same-shape copies, and with ``layout`` through views, permutes and unsqueezes too) with ``idx`` a buffer
    (read directly, or through views when ``layout``) and every other index a full slice; None otherwise."""
    from fxscale.passes.spatial_constants.embeddings import same_shape

    def back(cur: fx.Node) -> fx.Node:
        for _ in range(8):
            row = node_row(cur)
            if (same_shape(row) or layout and row is not None and row.name in _LAYOUT) and cur.args \
                    and isinstance(cur.args[0], fx.Node):
                cur = cur.args[0]
                continue
            break
        return cur
    cur = back(node)
    if not (cur.op == "call_function" and cur.target is operator.getitem and isinstance(cur.args[0], fx.Node)
            and cur.args[0].op == "get_attr"):
        return None
    idx = cur.args[1]
    items = idx if isinstance(idx, tuple) else (idx,)
    nodes = [(d, back(a) if layout else a) for d, a in enumerate(items) if isinstance(a, fx.Node)]
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


def check_sdpa_bias(s: "_Solver", n: fx.Node) -> None:
    """Entry rule of ``scaled_dot_product_attention``: its ``attn_mask`` is a bias on scores whose last two dims
    are the query and key token dims (see check_relative_bias)."""
    q, k = (n.args + (None, None))[:2]
    mask = n.kwargs.get("attn_mask", n.args[3] if len(n.args) > 3 else None)
    if not all(isinstance(a, fx.Node) for a in (q, k, mask)):
        return
    ql, kl = s.lab.get(q), s.lab.get(k)
    if isinstance(ql, _T) and isinstance(kl, _T) and len(ql) >= 2 and len(kl) >= 2:
        check_relative_bias(s, n, mask, _T((ql[-2], kl[-2])))


def check_relative_bias(s: "_Solver", n: fx.Node, o: fx.Node, x: Any) -> bool:
    """Entry rule (with the position embeddings): ``o`` is a gathered bias table combined at ``n`` with scores
    ``x`` (a node, or the label of the scores) whose last two dims follow the input grid. Records the table and
    index, and restarts; False when ``o`` is not such a gather or nothing conflicts. A table that cannot be
    rebuilt fails the current divisor decisions (the solver tries the others; the last failure names the node)."""
    try:
        return _check_relative_bias(s, n, o, x)
    except PlanError as e:
        raise _Fail(n, str(e).split(": ", 1)[-1] if str(e).startswith(f"node {n.name}") else str(e)) from None


def _check_relative_bias(s: "_Solver", n: fx.Node, o: fx.Node, x: Any) -> bool:
    found = index_gather(o) or index_gather(o, layout=True)
    xl = x if isinstance(x, _T) else s.lab.get(x)
    if found is None or not isinstance(xl, _T) or not isinstance(s.vals.get(o, [None])[0], torch.Tensor):
        return False
    table, index, dim = found
    direct = index_gather(o) is not None  # LeViT's absolute-offset tables are gathered and added as they are
    oshape = [tuple(v.shape) for v in s.vals[o]]
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
    signed = (2 * k[0][0] - 1) * (2 * k[0][1] - 1)
    if tab.shape[dim] == signed and tuple(q) == tuple(k) and tab.shape[dim] != k[0][0] * k[0][1]:
        if not torch.equal(buf.long().reshape(-1), signed_offset_index(k[0]).reshape(-1)):
            raise PlanError(f"{where}: the index buffer is not Swin's signed offset index over the {k[0]} grid; "
                            "cannot rebuild it for the new grid")
        s.relbias[str(index.target)] = _RelBias(str(table.target), str(index.target), dim, q, k, 1, n.name, True,
                                                buf.dim())
        for p in range(s.P):
            s.meta_attr.pop((str(index.target), p), None)
            s.meta_attr.pop((str(table.target), p), None)
        raise _Restart()
    if not direct:
        return False
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


__all__ = ["offset_index", "signed_offset_index", "resample_offset_table", "index_gather", "check_relative_bias",
           "check_sdpa_bias", "apply_relative_biases"]
