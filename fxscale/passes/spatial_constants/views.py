"""Site rules of reshapes and expands: which size literals re-split factors that follow the input size.

A reshape/view re-splits the factors of its input (``reshape(x, B, 8, 8, 7, 7, C)`` re-splits the
``(H // 7) * (W // 7)`` window count a MaxViT partition computed from ``x.shape``): its size arguments are cut
into groups whose traced products match runs of input factors (reshape's ``_blocks`` factorisation), and in
each group a literal becomes the size of the factor it stands for at every probe, or stays if that is fixed.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch.fx as fx

from fxscale.analysis.reshape import _blocks
from fxscale.passes.spatial_constants.factors import _T, _const, _Fail, _fresh, _is_int, _pvals

if TYPE_CHECKING:
    from fxscale.passes.spatial_constants.solver import _Solver


class _Item:
    """One size argument of a reshape/view: a dynamic int node, a literal (a site), or -1."""

    __slots__ = ("path", "kind", "factors", "vals", "traced")

    def __init__(self, path: Any, kind: str, factors: tuple, vals: tuple, traced: int) -> None:
        self.path, self.kind, self.factors, self.vals, self.traced = path, kind, factors, vals, traced


def _size_items(n: fx.Node) -> Optional[list]:
    """The size arguments of a reshape/view/expand as (path, value) pairs."""
    args = n.args
    if n.op == "call_function":
        if len(args) != 2 or not isinstance(args[1], (tuple, list)):
            return None
        return [((1, k), a) for k, a in enumerate(args[1])]
    if len(args) == 2 and isinstance(args[1], (tuple, list)):
        return [((1, k), a) for k, a in enumerate(args[1])]
    return [((k,), a) for k, a in enumerate(args) if k > 0]


def expand_sites(s: "_Solver", n: fx.Node, pending: dict) -> dict:
    """``x.expand(..., 7, ...)`` of a dim that follows the input size: the literal becomes that size."""
    if not (n.args and isinstance(n.args[0], fx.Node)):
        return {}
    lab = s.lab.get(n.args[0])
    items = _size_items(n)
    if not isinstance(lab, _T) or items is None:
        return {}
    sites = {}
    lead = len(items) - len(lab)
    for k, (path, a) in enumerate(items):
        d = k - lead
        if d < 0 or not _is_int(a) or a <= 1:
            continue
        dv = _pvals(lab[d], s.P)
        if dv[0] == a and not _const(dv):
            sites[path] = dv
    return sites


def view_sites(s: "_Solver", n: fx.Node, pending: dict) -> dict:
    """Literal sizes of a reshape/view that re-split input factors; the output factors go to ``pending``."""
    if not (n.args and isinstance(n.args[0], fx.Node)):
        return {}
    P = s.P
    lab = s.lab.get(n.args[0])
    items_raw = _size_items(n)
    if not isinstance(lab, _T) or items_raw is None:
        return {}
    numel0 = s.vals[n.args[0]][0].numel()
    items = []
    for path, a in items_raw:
        if isinstance(a, fx.Node):
            v = s.ivals(a)
            if v is None or any(x <= 0 for x in v):
                if v is not None and all(x == -1 for x in v):
                    items.append(_Item(path, "infer", (), (), 0))
                    continue
                return {}
            items.append(_Item(path, "dyn", s.int_factors(a), v, v[0]))
        elif _is_int(a) and a > 0:
            items.append(_Item(path, "lit", (), (a,) * P, a))
        elif _is_int(a) and a == -1:
            items.append(_Item(path, "infer", (), (), 0))
        else:
            return {}
    infer = [it for it in items if it.kind == "infer"]
    if len(infer) > 1:
        return {}
    known = math.prod(it.traced for it in items if it.kind != "infer")
    if infer:
        if known == 0 or numel0 % known:
            return {}
        infer[0].traced = numel0 // known
    fac = [f for d in lab for f in d if not all(v == 1 for v in f.vals)]
    live = [it for it in items if not (it.kind == "dyn" and all(v == 1 for v in it.vals))]
    right = [it.kind == "dyn" and not _const(it.vals) for it in live]
    groups = _group([f.vals[0] for f in fac], [it.traced for it in live], right, [not _const(f.vals) for f in fac])
    if groups is None:
        return {}
    try:
        solved = [(g, _solve_group(s, n, fac[g[0]:g[1]], live[g[2]:g[3]])) for g in groups]
    except _Fail:
        solved = _finest_groups(s, n, fac, live)
    sites: dict = {}
    out_factors: dict = {id(it): () for it in items}
    for (i0, i1, j0, j1), assign in solved:
        for it, (vals, factors) in zip(live[j0:j1], assign):
            if it.kind == "lit" and vals != it.vals:
                sites[it.path] = vals
            out_factors[id(it)] = factors
    pending["dims"] = [out_factors[id(it)] for it in items]
    return sites


def _finest_groups(s: "_Solver", n: fx.Node, fac: list, live: list) -> list:
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
                assign = _solve_group(s, n, fac[i:k], live[j:l])
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


def _solve_group(s: "_Solver", n: fx.Node, fg: list, ag: list) -> list:
    """Values and factors of the size arguments ``ag`` that re-split the input factors ``fg``."""
    P = s.P
    total = _pvals(fg, P)
    if len(ag) == 1 and ag[0].kind == "infer":  # reshape(x, B, -1, C): the -1 is the product of its factors
        return [(total, tuple(fg))]
    infer = [it for it in ag if it.kind == "infer"]
    if infer and len(ag) > 1 and infer[0].traced == 1 and any(not _const(f.vals) for f in fg):
        # view(x, -1, 16, ...): a -1 of traced size 1 is the batch; the literals re-split the varying factors
        rest = _solve_group(s, n, fg, [it for it in ag if it.kind != "infer"])
        it_rest = iter(rest)
        return [(((1,) * P), ()) if it.kind == "infer" else next(it_rest) for it in ag]
    if infer:
        return [(it.vals, it.factors if it.kind == "dyn" else ()) for it in ag]

    def fits(vals_list: list) -> bool:
        return all(math.prod(v[p] for v in vals_list) == total[p] for p in range(P))

    keep = [it.vals for it in ag]
    one_to_one = len(fg) == len(ag) and all(f.vals[0] == it.traced for f, it in zip(fg, ag))
    if one_to_one and all(it.kind == "lit" or it.vals == f.vals for f, it in zip(fg, ag)):
        return [(f.vals, (f,)) for f in fg]
    segs = _segmentations(fg, ag, P)

    def factors_for(vals_list: list) -> list:
        """Output factors: the unique cut of ``fg`` giving these values, else each size on its own."""
        if len(ag) == 1:
            return [tuple(fg)]
        match = [seg for seg in segs if all(_pvals(sg, P) == v for sg, v in zip(seg, vals_list))]
        if len(match) == 1:
            return [tuple(sg) for sg in match[0]]
        return [it.factors if it.kind == "dyn" else _fresh(v) for it, v in zip(ag, vals_list)]

    if fits(keep):
        return list(zip(keep, factors_for(keep)))
    unknown = [k for k, it in enumerate(ag) if it.kind == "lit"]

    def only(k: int) -> list:
        """Literal ``k`` takes what the others leave of the total; every other size keeps its value."""
        vals = []
        for p in range(P):
            rest = math.prod(it.vals[p] for j, it in enumerate(ag) if j != k)
            if rest <= 0 or total[p] % rest:
                raise _Fail(n, f"size {total[p]} is not a multiple of {rest} (at input {s.probe_desc(p)})")
            vals.append(total[p] // rest)
        if vals[0] != ag[k].traced:
            raise _Fail(n, "inconsistent sizes")
        solved = [tuple(vals) if j == k else it.vals for j, it in enumerate(ag)]
        return list(zip(solved, factors_for(solved)))
    if len(unknown) == 1:
        return only(unknown[0])
    if not unknown:
        raise _Fail(n, "sizes do not match the input at the new resolution")
    distinct = {tuple(_pvals(sg, P) for sg in seg): seg for seg in segs}
    if len(distinct) > 1:
        full = {k: sg for k, sg in distinct.items() if all(sg[j] for j, it in enumerate(ag) if it.kind == "lit")}
        distinct = full if full else distinct
    if len(distinct) != 1 and len(unknown) == 2 and len(fg) == 1:
        # one spatial factor cut in two (Hiera's unroll view(B, H // 2, 2, ...)): one piece follows the input,
        # the outer one first, then the inner one (a decision the solver backjumps over)
        return only(unknown[s.decide(("split", n.name, ag[unknown[0]].path), n)])
    if len(distinct) != 1:
        why = "no way" if not distinct else "more than one way"
        raise _Fail(n, f"{why} to re-split sizes {[f.vals[0] for f in fg]} into {[it.traced for it in ag]} "
                       "at the new resolution")
    seg = next(iter(distinct.values()))
    return [(_pvals(sg, P), tuple(sg)) for sg in seg]


def _common_products(fv: list, av: list) -> Optional[list]:
    """The traced sizes both sides reach as running products, with the index ranges ``(k0, k1), (l0, l1)``
    over which each holds (stretches of size 1), in increasing order; None if the totals differ.

    The cut points are those of reshape's ``_blocks`` factorisation, which pairs runs of input and output
    sizes whose products match.
    """
    blocks = _blocks(tuple(fv), tuple(av))
    if blocks is None:
        return None
    out: dict = {1: [[0, 0], [0, 0]]}
    i = j = 0
    prod = 1
    for bi, bj in blocks:
        i, j = i + len(bi), j + len(bj)
        prod *= math.prod(fv[k] for k in bi)
        ends = out.setdefault(prod, [[i, i], [j, j]])
        ends[0][1], ends[1][1] = i, j
    return [(c, tuple(r[0]), tuple(r[1])) for c, r in sorted(out.items())]


def _group(fv: list, av: list, right: list, fright: list) -> Optional[list]:
    """Minimal groups ``[i0, i1, j0, j1]`` of input factors and output sizes whose traced products match.

    Stretches of traced size 1 between groups form their own group when both sides have one; a stretch of
    sizes (or of factors) alone joins the group on its left, unless it holds one that grows with the input
    (``right`` / ``fright``), which then opens the group on its right (``reshape(x, B, C, H // 7, 7, ...)``
    with ``H // 7 == 1`` at the traced size).
    """
    common = _common_products(fv, av)
    if common is None:
        return None
    groups: list = []
    ci = cj = 0
    for _c, (k0, k1), (l0, l1) in common:
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
        ks = [len(fg) - i] if j == len(ag) - 1 else range(len(fg) - i + 1)
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


__all__ = ["expand_sites", "view_sites"]
