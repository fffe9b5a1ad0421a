"""Spatial constants baked in by a trace at the traced resolution, re-derived for a new one (used by the
resolution pass).

A torch.fx trace evaluates Python-level size arithmetic once, so some models carry constants that are tied to
the traced input size: torchvision's ViT checks ``h == 224`` (``operator.eq(getitem, 224)`` in the graph) and
adds a learned position embedding of ``1 + 14 * 14`` tokens; MaxViT's window/grid partitions reshape with
literal partition counts (``reshape(x, B, 8, 8, 7, 7, C)``). When the rescaled graph does not run as it is,
:func:`solve_spatial_constants` works out which of these constants follow the spatial size and what they
become, by running the graph shape-only (meta tensors) at three sizes in lockstep -- the traced one, the
target and twice the target -- and following the data flow of every size:

* every tensor dimension is tracked as an ordered product of *factors* (a feature-map height, a window count,
  a partition size, ...); factors flow through reshapes, permutes, flattens and elementwise ops, so a literal
  in a later reshape that re-splits a dimension is matched to the factor it came from (a MaxViT departition
  ``reshape(x, B, 8, 8, 7, 7, C)`` re-splits the ``(H // 7) * (W // 7)`` window count that the partition
  computed from ``x.shape``): it becomes that factor's size at the new resolution, or stays if it is fixed;
* a literal compared with a size read from ``.shape`` (``h == 224``) becomes that size;
* a literal divisor of a spatial size (``H // 8``) either stays (the quotient grows) or keeps the quotient
  (the divisor grows, MaxViT's grid partition); the choice is searched with backjumping, keeping the literal
  first, and the shape checks downstream (a relative-position bias of 49 tokens) decide;
* a parameter broadcast against a token sequence whose length follows the spatial grid is a position
  embedding: prefix (class) tokens are kept and the grid part is resampled bicubically
  (:func:`resample_position_embedding`, timm's ``resample_abs_pos_embed`` approach).

Only constants reached this way are rewritten; anything else that breaks at the new size raises a
:class:`~fxscale.errors.PlanError` naming the node, with nearby sizes that do work where some can be found.
"""
from __future__ import annotations

import builtins
import operator
from fractions import Fraction
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch.func import functional_call
from torch.fx.passes.shape_prop import _extract_tensor_metadata

from fxscale.errors import PlanError, TraceError
from fxscale.tracing import META, _shapes



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
                 node: str) -> None:
        self.target, self.kind, self.dims, self.prefix, self.grids, self.node = target, kind, dims, prefix, grids, node

    def shape_at(self, shape: tuple[int, ...], p: int) -> tuple[int, ...]:
        s = list(shape)
        gh, gw = self.grids[p]
        if self.kind == "tokens":
            s[self.dims[0]] = self.prefix + gh * gw
        else:
            s[self.dims[0]], s[self.dims[1]] = gh, gw
        return tuple(s)

    def resample(self, t: torch.Tensor, p: int) -> torch.Tensor:
        if self.kind == "tokens":
            return resample_position_embedding(t, self.grids[0], self.grids[p], self.prefix, self.dims[0])
        return resample_spatial_map(t, self.grids[p], self.dims)


# ----------------------------------------------------------------------------------------------------------
# Spatial constants: shape-only lockstep runs with factor tracking
# ----------------------------------------------------------------------------------------------------------

class _F:
    """One factor of a size: its value at every probe; ``parts`` for a concatenated (token) dimension."""

    __slots__ = ("vals", "parts")

    def __init__(self, vals: Any, parts: Optional[list] = None) -> None:
        self.vals = tuple(vals)
        self.parts = parts


class _T(tuple):
    """Label of a tensor: per dimension, the tuple of factors whose product is its size."""


class _I(tuple):
    """Label of a positive int: the factors whose product is its value."""


class _Fail(Exception):
    def __init__(self, node: fx.Node, why: str) -> None:
        super().__init__(why)
        self.node, self.why = node, why


class _Restart(Exception):
    pass


class _Unsupported(Exception):
    """The graph does not even run shape-only at its traced size (an op without a meta kernel, say)."""


def _const(vals: tuple) -> bool:
    return all(v == vals[0] for v in vals)


def _pvals(factors: Any, nprobes: int) -> tuple:
    out = [1] * nprobes
    for f in factors:
        for p in range(nprobes):
            out[p] *= f.vals[p]
    return tuple(out)


def _fresh(sizes: tuple) -> tuple:
    return () if all(s == 1 for s in sizes) else (_F(sizes),)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_VIEWS = {"reshape", "view", torch.reshape}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, torch.add, torch.sub,
           torch.mul, "add", "sub", "mul", "add_", "__add__", "__radd__"}
_SAME_SHAPE = {"to", "type_as", "contiguous", "clone", "float", "half", "bfloat16", "detach", "type"}
_MAX_BACKJUMPS = 400


class _Item:
    """One size argument of a reshape/view: a dynamic int node, a literal (a site), or -1."""

    __slots__ = ("path", "kind", "factors", "vals", "traced")

    def __init__(self, path: Any, kind: str, factors: tuple, vals: tuple, traced: int) -> None:
        self.path, self.kind, self.factors, self.vals, self.traced = path, kind, factors, vals, traced


class _Solver:
    """Run ``gm`` on meta tensors at several input sizes at once and derive the spatial constants."""

    def __init__(self, gm: fx.GraphModule, probe_inputs: list[tuple], resize: Optional[fx.Node],
                 resize_shapes: list[tuple]) -> None:
        self.gm = gm
        self.nodes = [n for n in gm.graph.nodes]
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.P = len(probe_inputs)
        self.inputs = probe_inputs
        self.resize, self.resize_shapes = resize, resize_shapes
        self.posemb: dict[str, _PosEmb] = {}
        self.meta_state: dict[str, dict] = {}
        self.meta_attr: dict[tuple, torch.Tensor] = {}
        self._reset()

    def _reset(self) -> None:
        self.vals: dict[fx.Node, list] = {}
        self.lab: dict[fx.Node, Any] = {}
        self.sites: dict[fx.Node, dict] = {}
        self.dec: dict[Any, list] = {}  # key -> [option, first node index, {nodes}]
        self.deepest: Optional[_Fail] = None
        self.backjumps = 0

    # -- driver ---------------------------------------------------------------------------------------
    def solve(self) -> None:
        i = 0
        while i < len(self.nodes):
            n = self.nodes[i]
            try:
                self._run(n)
                i += 1
            except _Restart:
                self._reset()
                i = 0
            except _Fail as f:
                if self.deepest is None or self.pos[f.node] >= self.pos[self.deepest.node]:
                    self.deepest = f
                i = self._backjump(f)
                for m in self.nodes[i:]:
                    self.vals.pop(m, None)
                    self.lab.pop(m, None)
                    self.sites.pop(m, None)

    def _backjump(self, f: _Fail) -> int:
        self.backjumps += 1
        if self.backjumps > _MAX_BACKJUMPS:
            raise self._error(f, "gave up after too many alternatives")
        conflict = self._ancestors([f.node])
        while True:
            cands = [k for k, d in self.dec.items() if d[2] & conflict]
            if not cands:
                raise self._error(self.deepest or f)
            key = max(cands, key=lambda k: self.dec[k][1])
            d = self.dec[key]
            for k2 in [k2 for k2, d2 in self.dec.items() if d2[1] > d[1]]:
                del self.dec[k2]
            if d[0] + 1 < 2:
                d[0] += 1
                d[2] = set()
                return d[1]
            conflict |= self._ancestors(list(d[2]))
            del self.dec[key]

    def _ancestors(self, start: list) -> set:
        seen, stack = set(), list(start)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(n.all_input_nodes)
        return seen

    def _error(self, f: _Fail, extra: str = "") -> PlanError:
        n = f.node
        return PlanError(f"node {n.name} ({n.op} {getattr(n.target, '__name__', n.target)}): {f.why}"
                         + (f" ({extra})" if extra else ""))

    # -- one node at every probe ------------------------------------------------------------------------
    def _run(self, n: fx.Node) -> None:
        P = self.P
        if n.op == "output":
            return
        if n.op == "placeholder":
            idx = [m for m in self.nodes if m.op == "placeholder"].index(n)
            vals = [self.inputs[p][idx] for p in range(P)]
            self.vals[n] = vals
            self.lab[n] = self._generic(vals, [])
            return
        if n.op == "get_attr":
            vals = [self._attr(n.target, p) for p in range(P)]
            self.vals[n] = vals
            self.lab[n] = self._generic(vals, [])
            return
        if n is self.resize:
            vals = [torch.empty(s, device="meta") for s in self.resize_shapes]
            self.vals[n] = vals
            self.lab[n] = self._generic(vals, [])
            return
        pending: dict = {}
        sites = self._sites(n, pending)
        self._check_posemb(n)
        vals = []
        for p in range(P):
            args, kwargs = self._args_at(n, p, sites)
            try:
                with torch.no_grad():
                    vals.append(self._call(n, args, kwargs))
            except (PlanError, _Restart, _Fail):
                raise
            except Exception as e:  # noqa: BLE001 - any failure of the op at a probe size
                msg = " ".join(str(e).split("While executing")[0].split())[:300]
                if p == 0:  # every constant keeps its traced value at probe 0: the op itself has no meta kernel
                    raise _Unsupported(f"node {n.name}: {type(e).__name__}: {msg}") from None
                raise _Fail(n, f"{type(e).__name__}: {msg} (at input {self._probe_desc(p)})") from None
        self.sites[n] = sites
        self.vals[n] = vals
        self.lab[n] = self._label(n, vals, pending.get("dims"))

    def _probe_desc(self, p: int) -> str:
        shape = self.resize_shapes[p] if self.resize is not None else tuple(self.inputs[p][0].shape)
        return "x".join(str(s) for s in shape[2:]) if len(shape) > 2 else str(shape)

    def _attr(self, target: str, p: int) -> Any:
        key = (target, p)
        if key in self.meta_attr:
            return self.meta_attr[key]
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, torch.Tensor):
            spec = self.posemb.get(target)
            shape = spec.shape_at(tuple(obj.shape), p) if spec is not None else tuple(obj.shape)
            obj = torch.empty(shape, dtype=obj.dtype, device="meta")
        self.meta_attr[key] = obj
        return obj

    def _call(self, n: fx.Node, args: tuple, kwargs: dict) -> Any:
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        mod = self.gm.get_submodule(n.target)
        state = self.meta_state.get(n.target)
        if state is None:
            state = {k: torch.empty_like(v, device="meta")
                     for k, v in list(mod.named_parameters()) + list(mod.named_buffers())}
            self.meta_state[n.target] = state
        return functional_call(mod, state, args, kwargs)

    def _args_at(self, n: fx.Node, p: int, sites: dict) -> tuple[tuple, dict]:
        def conv(a: Any, path: tuple) -> Any:
            if isinstance(a, fx.Node):
                return self.vals[a][p]
            if path in sites:
                return sites[path][p]
            if isinstance(a, (tuple, list)):
                return type(a)(conv(x, path + (i,)) for i, x in enumerate(a))
            if isinstance(a, dict):
                return {k: conv(v, path + (k,)) for k, v in a.items()}
            if isinstance(a, slice):
                return slice(conv(a.start, path + ("start",)), conv(a.stop, path + ("stop",)),
                             conv(a.step, path + ("step",)))
            return a
        args = tuple(conv(a, (i,)) for i, a in enumerate(n.args))
        kwargs = {k: conv(v, (k,)) for k, v in n.kwargs.items()}
        return args, kwargs

    # -- literal sites ------------------------------------------------------------------------------------
    def _ivals(self, a: Any) -> Optional[tuple]:
        """Per-probe values of an int argument (a node holding an int, or a literal)."""
        if isinstance(a, fx.Node):
            v = self.vals.get(a)
            if v is not None and all(_is_int(x) for x in v):
                return tuple(v)
            return None
        if _is_int(a):
            return (a,) * self.P
        return None

    def _int_factors(self, a: Any) -> tuple:
        if isinstance(a, fx.Node):
            lab = self.lab.get(a)
            if isinstance(lab, _I):
                return tuple(lab)
            return _fresh(self._ivals(a))
        return _fresh((a,) * self.P)

    def _decide(self, key: Any, n: fx.Node) -> int:
        d = self.dec.get(key)
        if d is None:
            d = self.dec[key] = [0, self.pos[n], set()]
        d[2].add(n)
        return d[0]

    def _sites(self, n: fx.Node, pending: dict) -> dict:
        if n.op not in ("call_function", "call_method"):
            return {}
        t, args = n.target, n.args
        if t is operator.floordiv and len(args) == 2 and isinstance(args[0], fx.Node) and _is_int(args[1]) \
                and args[1] > 0:
            a = self._ivals(args[0])
            if a is None or _const(a):
                return {}
            if self._decide((args[0], args[1]), n) == 0:
                return {}
            q = a[0] // args[1]
            if q <= 0:
                raise _Fail(n, "quotient is zero")
            div = tuple(v // q for v in a)
            if div[0] != args[1] or any(d <= 0 or v // d != q for v, d in zip(a, div)):
                raise _Fail(n, f"no divisor keeps {a[0]} // {args[1]} == {q}")
            return {(1,): div}
        if t in (operator.eq, operator.ne) and len(args) == 2:
            for i in (0, 1):
                a, lit = args[i], args[1 - i]
                if isinstance(a, fx.Node) and _is_int(lit):
                    v = self._ivals(a)
                    if v is not None and not _const(v) and v[0] == lit:
                        return {(1 - i,): v}
            return {}
        if t in _VIEWS and args and isinstance(args[0], fx.Node):
            return self._view_sites(n, pending)
        if t == "expand" and args and isinstance(args[0], fx.Node):
            return self._expand_sites(n)
        return {}

    def _size_items(self, n: fx.Node) -> Optional[list]:
        """The size arguments of a reshape/view as (path, value) pairs."""
        args = n.args
        if n.op == "call_function":
            if len(args) != 2 or not isinstance(args[1], (tuple, list)):
                return None
            return [((1, k), a) for k, a in enumerate(args[1])]
        if len(args) == 2 and isinstance(args[1], (tuple, list)):
            return [((1, k), a) for k, a in enumerate(args[1])]
        return [((k,), a) for k, a in enumerate(args) if k > 0]

    def _expand_sites(self, n: fx.Node) -> dict:
        lab = self.lab.get(n.args[0])
        items = self._size_items(n)
        if not isinstance(lab, _T) or items is None:
            return {}
        sites = {}
        lead = len(items) - len(lab)
        for k, (path, a) in enumerate(items):
            d = k - lead
            if d < 0 or not _is_int(a) or a <= 1:
                continue
            dv = _pvals(lab[d], self.P)
            if dv[0] == a and not _const(dv):
                sites[path] = dv
        return sites

    def _view_sites(self, n: fx.Node, pending: dict) -> dict:
        P = self.P
        lab = self.lab.get(n.args[0])
        items_raw = self._size_items(n)
        if not isinstance(lab, _T) or items_raw is None:
            return {}
        x0 = self.vals[n.args[0]][0]
        numel0 = x0.numel()
        items = []
        for path, a in items_raw:
            if isinstance(a, fx.Node):
                v = self._ivals(a)
                if v is None or any(x <= 0 for x in v):
                    if v is not None and all(x == -1 for x in v):
                        items.append(_Item(path, "infer", (), (), 0))
                        continue
                    return {}
                items.append(_Item(path, "dyn", self._int_factors(a), v, v[0]))
            elif _is_int(a) and a > 0:
                items.append(_Item(path, "lit", (), (a,) * P, a))
            elif _is_int(a) and a == -1:
                items.append(_Item(path, "infer", (), (), 0))
            else:
                return {}
        infer = [it for it in items if it.kind == "infer"]
        if len(infer) > 1:
            return {}
        known = 1
        for it in items:
            if it.kind != "infer":
                known *= it.traced
        if infer:
            if known == 0 or numel0 % known:
                return {}
            infer[0].traced = numel0 // known
        fac = [f for d in lab for f in d if not all(v == 1 for v in f.vals)]
        live = [it for it in items if not (it.kind == "dyn" and all(v == 1 for v in it.vals))]
        right = [it.kind == "dyn" and not _const(it.vals) for it in live]
        groups = _group([f.vals[0] for f in fac], [it.traced for it in live], right,
                        [not _const(f.vals) for f in fac])
        if groups is None:
            return {}
        try:
            solved = [(g, self._solve_group(n, fac[g[0]:g[1]], live[g[2]:g[3]])) for g in groups]
        except _Fail:
            solved = self._finest_groups(n, fac, live)
        sites: dict = {}
        out_factors: dict = {id(it): () for it in items}
        for (i0, i1, j0, j1), assign in solved:
            ag = live[j0:j1]
            for it, (vals, factors) in zip(ag, assign):
                if it.kind == "lit" and vals != it.vals:
                    sites[it.path] = vals
                out_factors[id(it)] = factors
        pending["dims"] = [out_factors[id(it)] for it in items]
        return sites

    def _finest_groups(self, n: fx.Node, fac: list, live: list) -> list:
        """The finest, most even cut of factors and sizes into groups that all re-split at every probe.

        Used when the cut by traced sizes alone does not work: stretches of traced size 1 (``H // p == 1``
        at the traced size) then belong to whichever neighbour makes every group consistent.
        """
        pf, pa = [1], [1]
        for f in fac:
            pf.append(pf[-1] * f.vals[0])
        for it in live:
            pa.append(pa[-1] * it.traced)
        points = [(k, l) for k in range(len(pf)) for l in range(len(pa)) if pf[k] == pa[l]]
        best: dict = {(0, 0): ((0, 0), None, None)}
        for k, l in points:
            for (i, j) in [pt for pt in points if pt in best and pt[0] < k and pt[1] < l]:
                try:
                    assign = self._solve_group(n, fac[i:k], live[j:l])
                except _Fail:
                    continue
                count, spread = best[(i, j)][0]
                score = (count + 1, spread - (k - i + l - j) ** 2)
                if (k, l) not in best or score > best[(k, l)][0]:
                    best[(k, l)] = (score, (i, j), assign)
        end = (len(fac), len(live))
        if end not in best:
            raise _Fail(n, f"cannot re-split sizes {[f.vals[0] for f in fac]} into {[it.traced for it in live]} "
                           "consistently at the new resolution")
        out, pt = [], end
        while best[pt][1] is not None:
            _, prev, assign = best[pt]
            out.append(([prev[0], pt[0], prev[1], pt[1]], assign))
            pt = prev
        return out[::-1]

    def _solve_group(self, n: fx.Node, fg: list, ag: list) -> list:
        """Values and factors of the size arguments ``ag`` that re-split the input factors ``fg``."""
        P = self.P
        total = _pvals(fg, P)
        if any(it.kind == "infer" for it in ag):
            return [(it.vals, it.factors if it.kind == "dyn" else ()) for it in ag]

        def fits(vals_list: list) -> bool:
            for p in range(P):
                prod = 1
                for v in vals_list:
                    prod *= v[p]
                if prod != total[p]:
                    return False
            return True

        keep = [it.vals for it in ag]
        one_to_one = len(fg) == len(ag) and all(f.vals[0] == it.traced for f, it in zip(fg, ag))
        if one_to_one and all(it.kind == "lit" or it.vals == f.vals for f, it in zip(fg, ag)):
            return [(f.vals, (f,)) for f in fg]
        segs = _segmentations(fg, ag, P)

        def factors_for(vals_list: list) -> list:
            """Output factors: the unique cut of ``fg`` giving these values, else each size on its own."""
            if len(ag) == 1:
                return [tuple(fg)]
            match = [seg for seg in segs if all(_pvals(s, P) == v for s, v in zip(seg, vals_list))]
            if len(match) == 1:
                return [tuple(s) for s in match[0]]
            return [it.factors if it.kind == "dyn" else _fresh(v) for it, v in zip(ag, vals_list)]

        if fits(keep):
            return list(zip(keep, factors_for(keep)))
        unknown = [k for k, it in enumerate(ag) if it.kind == "lit"]
        if len(unknown) == 1:
            k = unknown[0]
            vals = []
            for p in range(P):
                rest = 1
                for j, it in enumerate(ag):
                    if j != k:
                        rest *= it.vals[p]
                if rest <= 0 or total[p] % rest:
                    raise _Fail(n, f"size {total[p]} is not a multiple of {rest} (at input {self._probe_desc(p)})")
                vals.append(total[p] // rest)
            if vals[0] != ag[k].traced:
                raise _Fail(n, "inconsistent sizes")
            solved = [tuple(vals) if j == k else it.vals for j, it in enumerate(ag)]
            return list(zip(solved, factors_for(solved)))
        if not unknown:
            raise _Fail(n, "sizes do not match the input at the new resolution")
        distinct = {tuple(_pvals(s, P) for s in seg): seg for seg in segs}
        if len(distinct) > 1:
            full = {k: s for k, s in distinct.items()
                    if all(s[j] for j, it in enumerate(ag) if it.kind == "lit")}
            distinct = full if full else distinct
        if len(distinct) != 1:
            why = "no way" if not distinct else "more than one way"
            raise _Fail(n, f"{why} to re-split sizes {[f.vals[0] for f in fg]} into {[it.traced for it in ag]} "
                           "at the new resolution")
        seg = next(iter(distinct.values()))
        return [(_pvals(s, P), tuple(s)) for s in seg]

    # -- position embeddings --------------------------------------------------------------------------------
    def _param_root(self, node: fx.Node) -> Optional[fx.Node]:
        cur = node
        for _ in range(8):
            if cur.op == "get_attr":
                return cur
            if cur.op == "call_method" and cur.target in _SAME_SHAPE and cur.args and isinstance(cur.args[0], fx.Node):
                cur = cur.args[0]
                continue
            return None
        return None

    def _check_posemb(self, n: fx.Node) -> None:
        if n.op not in ("call_function", "call_method") or n.target not in _BINARY or len(n.args) < 2:
            return
        a, b = n.args[0], n.args[1]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
            return
        for o, x in ((a, b), (b, a)):
            root = self._param_root(o)
            if root is None or not isinstance(self.lab.get(x), _T) or not isinstance(self.vals.get(o, [None])[0],
                                                                                  torch.Tensor):
                continue
            oshape = [tuple(v.shape) for v in self.vals[o]]
            xl = self.lab[x]
            conflicts = []
            for k in range(1, min(len(oshape[0]), len(xl)) + 1):
                xv = _pvals(xl[len(xl) - k], self.P)
                so = tuple(s[len(s) - k] for s in oshape)
                if so[0] > 1 and xv[0] == so[0] and xv != so:
                    conflicts.append(len(oshape[0]) - k)
            if not conflicts:
                continue
            if root.target in self.posemb:
                raise _Fail(n, f"position embedding {root.target} does not match the tokens")
            param = self._real_attr(root.target)
            if tuple(param.shape) != oshape[0]:
                raise PlanError(f"node {n.name}: {root.target} is added to a sequence whose length follows the "
                                "input size, but reaches it through a shape change; cannot resample it")
            self.posemb[root.target] = self._posemb_spec(n, root.target, sorted(conflicts), xl, oshape[0])
            for p in range(self.P):
                self.meta_attr.pop((root.target, p), None)
            raise _Restart()

    def _real_attr(self, target: str) -> torch.Tensor:
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _posemb_spec(self, n: fx.Node, target: str, dims: list, xl: _T, shape: tuple) -> _PosEmb:
        P = self.P
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

    # -- labels ----------------------------------------------------------------------------------------------
    def _generic(self, vals: list, inputs: list) -> Any:
        v0 = vals[0]
        if isinstance(v0, torch.Tensor):
            rank = v0.dim()
            dims = []
            for d in range(rank):
                sizes = tuple(int(v.shape[d]) for v in vals)
                k = rank - d
                got = None
                for lab in inputs:
                    if isinstance(lab, _T) and len(lab) >= k and _pvals(lab[len(lab) - k], self.P) == sizes:
                        got = lab[len(lab) - k]
                        break
                dims.append(got if got is not None else _fresh(sizes))
            return _T(dims)
        if _is_int(v0) and all(_is_int(v) and v > 0 for v in vals):
            return _I(_fresh(tuple(vals)))
        if isinstance(v0, (tuple, list)) and all(isinstance(v, (tuple, list)) and len(v) == len(v0) for v in vals):
            return tuple(self._generic([v[i] for v in vals], inputs) for i in range(len(v0)))
        return None

    def _tensor_inputs(self, n: fx.Node) -> list:
        labs = []
        for a in n.all_input_nodes:
            lab = self.lab.get(a)
            if isinstance(lab, _T):
                labs.append(lab)
        return labs

    def _label(self, n: fx.Node, vals: list, view_dims: Optional[list]) -> Any:
        v0 = vals[0]
        try:
            lab = self._rule(n, vals, view_dims)
        except Exception:  # noqa: BLE001 - a label rule that does not apply falls back to the generic one
            lab = None
        if lab is None:
            return self._generic(vals, self._tensor_inputs(n))
        if isinstance(v0, torch.Tensor):
            if not isinstance(lab, _T) or len(lab) != v0.dim():
                return self._generic(vals, self._tensor_inputs(n))
            dims = []
            for d, fs in enumerate(lab):
                sizes = tuple(int(v.shape[d]) for v in vals)
                dims.append(fs if _pvals(fs, self.P) == sizes else _fresh(sizes))
            return _T(dims)
        if isinstance(lab, _I):
            if not all(_is_int(v) and v > 0 for v in vals) or _pvals(lab, self.P) != tuple(vals):
                return self._generic(vals, [])
        return lab

    def _rule(self, n: fx.Node, vals: list, view_dims: Optional[list]) -> Any:
        t, args = n.target, n.args
        src = args[0] if args and isinstance(args[0], fx.Node) else None
        lab = self.lab.get(src) if src is not None else None
        if n.op == "call_module":
            return None
        if view_dims is not None:
            return _T(view_dims)
        if t is builtins.getattr and len(args) == 2 and args[1] == "shape" and isinstance(lab, _T):
            return tuple(_I(d) for d in lab)
        if t == "size" and isinstance(lab, _T):
            if len(args) == 1 and not n.kwargs:
                return tuple(_I(d) for d in lab)
            d = args[1] if len(args) > 1 else n.kwargs.get("dim")
            return _I(lab[d])
        if t is operator.getitem and src is not None and isinstance(lab, tuple) and not isinstance(lab, (_T, _I)):
            return lab[args[1]]
        if t is operator.mul and len(args) == 2 and all(_is_int(v) for v in vals):
            return _I(self._int_factors(args[0]) + self._int_factors(args[1]))
        if t in (torch.cat, torch.concat):
            seq = args[0]
            dim = args[1] if len(args) > 1 else n.kwargs.get("dim", 0)
            labs = [self.lab.get(a) for a in seq]
            if not all(isinstance(x, _T) for x in labs):
                return None
            d = dim % len(labs[0])
            sizes = tuple(int(v.shape[d]) for v in vals)
            base = self._generic(vals, labs)
            dims = list(base)
            dims[d] = (_F(sizes, parts=[tuple(x[d]) for x in labs]),)
            return _T(dims)
        if not isinstance(lab, _T):
            return None
        rank = len(lab)
        if t in ("permute", torch.permute):
            order = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
            return _T([lab[d % rank] for d in order])
        if t in ("transpose", "swapaxes", torch.transpose, torch.swapaxes):
            d0, d1 = args[1] % rank, args[2] % rank
            dims = list(lab)
            dims[d0], dims[d1] = dims[d1], dims[d0]
            return _T(dims)
        if t in ("flatten", torch.flatten):
            s = args[1] if len(args) > 1 else n.kwargs.get("start_dim", 0)
            e = args[2] if len(args) > 2 else n.kwargs.get("end_dim", -1)
            s, e = s % rank, e % rank
            merged = tuple(f for d in lab[s:e + 1] for f in d)
            return _T(list(lab[:s]) + [merged] + list(lab[e + 1:]))
        if t in ("unsqueeze", torch.unsqueeze):
            d = args[1] % (rank + 1)
            return _T(list(lab[:d]) + [()] + list(lab[d:]))
        return None


def _group(fv: list, av: list, right: list, fright: list) -> Optional[list]:
    """Minimal groups ``[i0, i1, j0, j1]`` of input factors and output sizes whose traced products match.

    Stretches of traced size 1 between groups form their own group when both sides have one; a stretch of
    sizes (or of factors) alone joins the group on its left, unless it holds one that grows with the input
    (``right`` / ``fright``), which then opens the group on its right (``reshape(x, B, C, H // 7, 7, ...)``
    with ``H // 7 == 1`` at the traced size).
    """
    pf, pa = [1], [1]
    for v in fv:
        pf.append(pf[-1] * v)
    for v in av:
        pa.append(pa[-1] * v)
    if pf[-1] != pa[-1]:
        return None
    rf: dict = {}
    ra: dict = {}
    for k, v in enumerate(pf):
        rf.setdefault(v, [k, k])[1] = k
    for k, v in enumerate(pa):
        ra.setdefault(v, [k, k])[1] = k
    groups: list = []
    ci = cj = 0
    for c in sorted(set(rf) & set(ra)):
        (k0, k1), (l0, l1) = rf[c], ra[c]
        if k0 < ci or l0 < cj:
            return None
        if (k0, l0) != (ci, cj) and k0 > ci and l0 > cj:
            groups.append([ci, k0, cj, l0])
            ci, cj = k0, l0
        elif (k0, l0) != (ci, cj):
            continue  # one side is still empty: keep accumulating
        ends_here = bool(groups) and groups[-1][1] == k0 and groups[-1][3] == l0
        if k1 > k0 and l1 > l0:
            groups.append([k0, k1, l0, l1])
            ci, cj = k1, l1
        elif l1 > l0 and ends_here and not any(right[l0:l1]):
            groups[-1][3] = l1
            cj = l1
        elif k1 > k0 and ends_here and not any(fright[k0:k1]):
            groups[-1][1] = k1
            ci = k1
    if (ci, cj) != (len(fv), len(av)):
        groups.append([ci, len(fv), cj, len(av)])
    return groups


def _segmentations(fg: list, ag: list, P: int, limit: int = 64) -> list:
    """Ways to cut the factor list ``fg`` into consecutive pieces, one per size argument of ``ag``."""
    out: list = []

    def rec(i: int, j: int, acc: list) -> None:
        if len(out) >= limit:
            return
        if j == len(ag):
            if i == len(fg):
                out.append(list(acc))
            return
        it = ag[j]
        ks = [len(fg) - i] if j == len(ag) - 1 else range(0, len(fg) - i + 1)
        for k in ks:
            seg = fg[i:i + k]
            v = _pvals(seg, P)
            if v[0] != it.traced or (it.kind == "dyn" and v != it.vals):
                continue
            acc.append(seg)
            rec(i + k, j + 1, acc)
            acc.pop()
    rec(0, 0, [])
    return out


# ----------------------------------------------------------------------------------------------------------
# Solving and applying
# ----------------------------------------------------------------------------------------------------------

def _probe_sizes(original: tuple[int, int], size: tuple[int, int]) -> list[tuple[int, int]]:
    """Traced size, target size and a check size (twice the target)."""
    return [tuple(original), tuple(size), (2 * size[0], 2 * size[1])]


def _make_solver(gm: fx.GraphModule, sizes: list[tuple[int, int]], mode: str) -> _Solver:
    info = gm.meta[META]
    resize = next((n for n in gm.graph.nodes if n.meta.get(META, {}).get("inserted") == "resolution"), None)
    shapes0 = [tuple(s) for s in info["input_shapes"]]
    probe_inputs, resize_shapes = [], []
    for hw in sizes:
        shapes = list(shapes0)
        if resize is None and mode == "input":
            shapes[0] = tuple(shapes0[0][:2]) + tuple(hw)
        probe_inputs.append(tuple(torch.empty(s, dtype=dt, device="meta")
                                  for s, dt in zip(shapes, info["input_dtypes"])))
        resize_shapes.append(tuple(shapes0[0][:2]) + tuple(hw))
    return _Solver(gm, probe_inputs, resize, resize_shapes)


def solve_spatial_constants(gm: fx.GraphModule, size: tuple[int, int], mode: str = "resize") -> dict[str, Any]:
    """Find the graph constants and position embeddings that must follow the new input size.

    ``gm`` is the graph about to run at ``size`` (with the inserted resize node in resize mode). Returns
    ``{"constants": [(node, path, old, new)], "position_embeddings": [_PosEmb]}``; raises PlanError naming the
    node when no consistent set of constants exists, with nearby sizes that work where some are found.
    """
    original = tuple(gm.meta[META]["input_shapes"][0][2:])
    try:
        return _solve(gm, original, tuple(size), mode)
    except _Unsupported as e:
        raise PlanError(f"resolution {size[0]}x{size[1]}: cannot analyse the graph shape-only ({e})") from None
    except PlanError as e:
        raise _with_nearby(gm, original, tuple(size), mode, e) from None


def _with_nearby(gm: fx.GraphModule, original: tuple, size: tuple, mode: str, e: PlanError) -> PlanError:
    near = _nearby_sizes(gm, original, size, mode)
    hint = f"; sizes that work nearby: {', '.join(f'{h}x{w}' for h, w in near)}" if near else ""
    return PlanError(f"resolution {size[0]}x{size[1]}: the graph does not run at this size: {e}{hint}")


def _solve(gm: fx.GraphModule, original: tuple, size: tuple, mode: str) -> dict[str, Any]:
    solver = _make_solver(gm, _probe_sizes(original, size), mode)
    solver.solve()
    constants = []
    for n, sites in solver.sites.items():
        for path, vals in sites.items():
            if vals[1] != vals[0]:
                constants.append((n, path, vals[0], vals[1]))
    return {"constants": constants, "position_embeddings": list(solver.posemb.values()), "solver": solver}


def _shapes_from_solver(gm: fx.GraphModule, solver: _Solver, probe: int = 1) -> None:
    """Record the shapes the solver found at the target size, as propagate_shapes would (no real forward)."""
    def meta(obj: Any) -> Any:
        return _extract_tensor_metadata(obj) if isinstance(obj, torch.Tensor) else obj

    for n in gm.graph.nodes:
        if n.op == "output":
            result = fx.node.map_arg(n.args[0], lambda a: solver.vals[a][probe])
        elif n in solver.vals:
            result = solver.vals[n][probe]
        else:
            continue
        tm = fx.node.map_aggregate(result, meta)
        if any(isinstance(t, torch.Tensor) for t in _flat(result)):
            n.meta["tensor_meta"] = tm
        n.meta["type"] = type(result)
        n.meta.setdefault(META, {})["shape"] = _shapes(n.meta.get("tensor_meta"))


def _flat(obj: Any) -> list:
    out: list = []
    fx.node.map_aggregate(obj, out.append)
    return out


_NEARBY = (Fraction(1, 4), Fraction(1, 3), Fraction(1, 2), Fraction(2, 3), Fraction(3, 4), Fraction(1),
           Fraction(5, 4), Fraction(4, 3), Fraction(3, 2), Fraction(5, 3), Fraction(2), Fraction(5, 2),
           Fraction(3), Fraction(4))


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


def _replace_at(args: Any, path: tuple, value: int) -> Any:
    head, rest = path[0], path[1:]
    if isinstance(args, dict):
        new = dict(args)
        new[head] = value if not rest else _replace_at(args[head], rest, value)
        return new
    seq = list(args)
    seq[head] = value if not rest else _replace_at(args[head], rest, value)
    return type(args)(seq) if not isinstance(args, list) else seq


def apply_spatial_constants(gm: fx.GraphModule, solution: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the constants and resample the position embeddings found by :func:`solve_spatial_constants`."""
    report: dict[str, Any] = {"constants": [], "position_embeddings": []}
    for n, path, old, new in solution["constants"]:
        if path[0] in n.kwargs:
            n.kwargs = _replace_at(n.kwargs, path, new)
        else:
            n.args = _replace_at(n.args, path, new)
        report["constants"].append({"node": n.name, "arg": list(path), "old": old, "new": new})
    for spec in solution["position_embeddings"]:
        parent_name, _, leaf = spec.target.rpartition(".")
        parent = gm.get_submodule(parent_name) if parent_name else gm
        old = getattr(parent, leaf)
        if tuple(spec.grids[1]) != tuple(spec.grids[0]):
            with torch.no_grad():
                new = spec.resample(old.detach(), 1).contiguous()
            if isinstance(old, torch.nn.Parameter):
                setattr(parent, leaf, torch.nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                parent.register_buffer(leaf, new) if leaf in dict(parent.named_buffers(recurse=False)) \
                    else setattr(parent, leaf, new)
        report["position_embeddings"].append({"name": spec.target, "node": spec.node, "prefix": spec.prefix,
                                              "old_grid": list(spec.grids[0]), "new_grid": list(spec.grids[1])})
    return report
