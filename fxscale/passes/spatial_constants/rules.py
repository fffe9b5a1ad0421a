"""How each op carries the symbolic spatial sizes: rule tables looked up through the op table.

Every call node is looked up with :func:`fxscale.ops.node_row`; its row selects at most one :class:`Rule`:

* :data:`BY_NAME`, by the row's name: how the output's factors follow from the inputs' (``label``) and which
  literal arguments follow the input size (``sites``);
* :data:`BY_ARITH`, by the row's ``arith`` (broadcasting arithmetic in every form: ``x + p``, ``torch.add``,
  ``x.add(p)``, ``x.add_(p)``, ``operator.iadd``): a parameter that enters there may be a position embedding;
* :data:`UNROWED`, ops without a row of their own that behave like one (``operator.ne`` compares like eq but
  has no row: its channel rule must stay ``unknown``, which freezes the sizes it reads).

An op without a rule gets a generic label: each output dim keeps the factors of an input dim of the same
size at every probe (matched from the right), or a fresh factor. Rules that do not apply return None.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch.fx as fx

from fxscale.analysis.reshape import _arg, _dim
from fxscale.ops.row import OpRow
from fxscale.ops.table import UNKNOWN, node_row
from fxscale.passes.spatial_constants.embeddings import check_position_embedding, same_shape
from fxscale.passes.spatial_constants.factors import _F, _I, _T, _const, _Fail, _is_int, _pvals
from fxscale.passes.spatial_constants.relbias import check_sdpa_bias
from fxscale.passes.spatial_constants.views import expand_sites, view_sites

if TYPE_CHECKING:
    from fxscale.passes.spatial_constants.solver import _Solver

# (solver, node, per-probe output values, what the site rule left for the label) -> label or None
LabelRule = Callable[["_Solver", fx.Node, list, dict], Any]
# (solver, node, pending) -> {argument path: per-probe value} for literals that follow the input size
SiteRule = Callable[["_Solver", fx.Node, dict], dict]
# (solver, node) -> None; may record a position embedding and restart the solver
EntryRule = Callable[["_Solver", fx.Node], None]


@dataclass(frozen=True)
class Rule:
    """What one kind of op does to spatial sizes (each part optional)."""

    label: Optional[LabelRule] = None
    sites: Optional[SiteRule] = None
    entry: Optional[EntryRule] = None


# ---- label rules ---------------------------------------------------------------------------------------
def _src(s: "_Solver", n: fx.Node) -> Any:
    """Label of the first argument (None if it is not a node)."""
    a = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
    return s.lab.get(a) if a is not None else None


def shape_attr(s: "_Solver", n: fx.Node, vals: list, pending: dict) -> Any:
    """``x.shape``: one int label per dim."""
    lab = _src(s, n)
    if len(n.args) == 2 and n.args[1] == "shape" and isinstance(lab, _T):
        return tuple(_I(d) for d in lab)
    return None


def size_method(s: "_Solver", n: fx.Node, vals: list, pending: dict) -> Any:
    """``x.size()`` / ``x.size(d)``."""
    lab = _src(s, n)
    if not isinstance(lab, _T):
        return None
    d = _arg(n, 1, "dim")
    return tuple(_I(f) for f in lab) if d is None else _I(lab[_dim(d, len(lab))])


def tuple_item(s: "_Solver", n: fx.Node, vals: list, pending: dict) -> Any:
    """``shape[i]`` / ``shape[i:j]`` of a tuple of ints; ``x[:, 1:]`` of a tensor (see :func:`token_slice`)."""
    lab = _src(s, n)
    if isinstance(lab, _T):
        return gather(s, lab, n.args[1]) or token_slice(s, lab, n.args[1])
    if isinstance(lab, tuple) and not isinstance(lab, (_I,)):
        return lab[n.args[1]]
    return None


def _cut(s: "_Solver", parts: list, start: Any, stop: Any) -> Any:
    """The factors of ``parts[i:j]`` when ``start``/``stop`` fall on part boundaries at every probe, else None."""
    bounds, acc = [(0,) * s.P], (0,) * s.P
    for part in parts:
        acc = tuple(a + v for a, v in zip(acc, _pvals(part, s.P)))
        bounds.append(acc)

    def at(v: Any, default: int) -> Any:
        if v is None:
            return default
        want = tuple(v if v >= 0 else t + v for t in bounds[-1])  # a negative index counts from the end
        return next((i for i, b in enumerate(bounds) if b == want), None)

    i, j = at(start, 0), at(stop, len(parts))
    if i is None or j is None or j <= i:
        return None
    chosen = parts[i:j]
    if len(chosen) == 1:
        return tuple(chosen[0])
    return (_F(tuple(sum(v) for v in zip(*[_pvals(p, s.P) for p in chosen])), parts=[tuple(p) for p in chosen]),)


def gather(s: "_Solver", lab: "_T", index: Any) -> Any:
    """``table[:, idx]`` with one index tensor (full slices elsewhere): the index's dims replace the indexed dim
    and keep their factors (a relative-position index over query and key grids gathers a grid-shaped bias)."""
    items = index if isinstance(index, tuple) else (index,)
    nodes = [d for d, it in enumerate(items) if isinstance(it, fx.Node)]
    if len(nodes) != 1 or len(items) > len(lab) or any(it != slice(None) for it in items if not isinstance(it, fx.Node)):
        return None
    d = nodes[0]
    ilab = s.lab.get(items[d])
    return _T(list(lab[:d]) + list(ilab) + list(lab[d + 1:])) if isinstance(ilab, _T) else None


def token_slice(s: "_Solver", lab: "_T", index: Any) -> Any:
    """``x[:, 1:]`` / ``x[:, :1]``: slicing a concatenated (class + grid tokens) dim on a boundary of its parts
    keeps the factors of the parts it selects (the grid tokens stay a rows x columns grid); full slices keep
    their dim's factors. None (the generic label) for any other index."""
    items = index if isinstance(index, tuple) else (index,)
    if len(items) > len(lab) or not all(isinstance(it, slice) for it in items):
        return None
    dims = []
    for d, it in enumerate(items):
        if it == slice(None):
            dims.append(lab[d])
            continue
        factors = lab[d]
        if it.step not in (None, 1) or len(factors) != 1 or not factors[0].parts:
            return None
        if not all(v is None or _is_int(v) for v in (it.start, it.stop)):
            return None
        cut = _cut(s, factors[0].parts, it.start, it.stop)
        if cut is None:
            return None
        dims.append(cut)
    return _T(dims + list(lab[len(items):]))


def int_product(s: "_Solver", n: fx.Node, vals: list, pending: dict) -> Any:
    """``h * w`` of ints: the product of both factor lists."""
    if len(n.args) == 2 and all(_is_int(v) for v in vals):
        return _I(s.int_factors(n.args[0]) + s.int_factors(n.args[1]))
    return None


def concatenate(s: "_Solver", n: fx.Node, vals: list, pending: dict) -> Any:
    """``cat``: the joined dim is one factor made of the parts (class tokens + grid tokens)."""
    labs = [s.lab.get(a) for a in _arg(n, 0, "tensors")]
    if not all(isinstance(x, _T) for x in labs):
        return None
    d = _dim(_arg(n, 1, "dim", 0), len(labs[0]))
    sizes = tuple(int(v.shape[d]) for v in vals)
    dims = list(s.generic(vals, labs))
    dims[d] = (_F(sizes, parts=[tuple(x[d]) for x in labs]),)
    return _T(dims)


class _FactorCtx:
    """Stands in for the channel-analysis context of the pure dim permutations (permute, transpose, movedim):
    their channel rules only read ``ctx.lab``, so on factor labels they permute the factors alike."""

    def __init__(self, s: "_Solver") -> None:
        self.s = s

    def lab(self, node: Any) -> Optional[list]:
        lab = self.s.lab.get(node) if isinstance(node, fx.Node) else None
        return list(lab) if isinstance(lab, _T) else None


def permutation(s: "_Solver", n: fx.Node, vals: list, pending: dict) -> Any:
    """permute / transpose / movedim: the row's own channel rule, run on factors."""
    if not isinstance(_src(s, n), _T):
        return None
    return _T(node_row(n).rule(_FactorCtx(s), n))


def flatten(s: "_Solver", n: fx.Node, vals: list, pending: dict) -> Any:
    """``flatten(x, start, end)``: the merged dim is the product of the merged factors."""
    lab = _src(s, n)
    if not isinstance(lab, _T):
        return None
    rank = len(lab)
    a, b = _dim(_arg(n, 1, "start_dim", 0), rank), _dim(_arg(n, 2, "end_dim", -1), rank)
    merged = tuple(f for d in lab[a:b + 1] for f in d)
    return _T(list(lab[:a]) + [merged] + list(lab[b + 1:]))


def unsqueeze(s: "_Solver", n: fx.Node, vals: list, pending: dict) -> Any:
    """``unsqueeze(x, d)``: a new dim without factors."""
    lab = _src(s, n)
    if not isinstance(lab, _T):
        return None
    d = _dim(_arg(n, 1, "dim"), len(lab) + 1)
    return _T(list(lab[:d]) + [()] + list(lab[d:]))


def view_label(s: "_Solver", n: fx.Node, vals: list, pending: dict) -> Any:
    """reshape / view: the output factors the site rule cut from the input's (see :mod:`.views`)."""
    return _T(pending["dims"]) if pending.get("dims") is not None else None


# ---- site rules of int arithmetic -----------------------------------------------------------------------
def divisor_site(s: "_Solver", n: fx.Node, pending: dict) -> dict:
    """``H // 8``: the literal stays (the quotient grows) or keeps the quotient (the divisor grows); which one
    is a decision the solver searches, keeping the literal first."""
    args = n.args
    if not (len(args) == 2 and isinstance(args[0], fx.Node) and _is_int(args[1]) and args[1] > 0):
        return {}
    a = s.ivals(args[0])
    if a is None or _const(a):
        return {}
    if s.decide((args[0], args[1]), n) == 0:
        return {}
    q = a[0] // args[1]
    if q <= 0:
        raise _Fail(n, "quotient is zero")
    div = tuple(v // q for v in a)
    if div[0] != args[1] or any(d <= 0 or v // d != q for v, d in zip(a, div)):
        raise _Fail(n, f"no divisor keeps {a[0]} // {args[1]} == {q}")
    return {(1,): div}


def compare_site(s: "_Solver", n: fx.Node, pending: dict) -> dict:
    """``h == 224``: a literal compared with a size that follows the input becomes that size."""
    args = n.args
    if len(args) != 2:
        return {}
    for i in (0, 1):
        a, lit = args[i], args[1 - i]
        if isinstance(a, fx.Node) and _is_int(lit):
            v = s.ivals(a)
            if v is not None and not _const(v) and v[0] == lit:
                return {(1 - i,): v}
    return {}


# ---- the tables ------------------------------------------------------------------------------------------
_PERMUTE = Rule(label=permutation)
_FLATTEN = Rule(label=flatten)
_UNSQUEEZE = Rule(label=unsqueeze)
_VIEW = Rule(label=view_label, sites=view_sites)

BY_NAME: dict[str, Rule] = {
    "size": Rule(label=shape_attr),
    "size_m": Rule(label=size_method),
    "getitem": Rule(label=tuple_item),
    "cat": Rule(label=concatenate),
    "permute": _PERMUTE, "permute_m": _PERMUTE,
    "transpose": _PERMUTE, "transpose_m": _PERMUTE,
    "movedim": _PERMUTE, "movedim_m": _PERMUTE,
    "flatten": _FLATTEN, "flatten_m": _FLATTEN,
    "unsqueeze": _UNSQUEEZE, "unsqueeze_m": _UNSQUEEZE,
    "reshape": _VIEW, "reshape_m": _VIEW,
    "expand": Rule(sites=expand_sites),
    "floordiv": Rule(sites=divisor_site),
    "compare": Rule(sites=compare_site),
    "sdpa": Rule(entry=check_sdpa_bias),
}

_ENTRY = Rule(entry=check_position_embedding)
BY_ARITH: dict[str, Rule] = {
    "add": _ENTRY, "sub": _ENTRY, "div": _ENTRY,
    "mul": Rule(label=int_product, entry=check_position_embedding),
}

UNROWED: dict[Any, str] = {operator.ne: "compare"}


def rule_for(n: fx.Node) -> Optional[Rule]:
    """The rule of a call_function / call_method node (modules keep their spatial sizes generically)."""
    row: Optional[OpRow] = node_row(n)
    if row is None:
        return None
    if row is UNKNOWN:
        name = UNROWED.get(n.target) if n.op == "call_function" else None
        return BY_NAME.get(name) if name is not None else None
    rule = BY_NAME.get(row.name)
    if rule is None and row.arith is not None:
        rule = BY_ARITH.get(row.arith)
    return rule


__all__ = ["Rule", "BY_NAME", "BY_ARITH", "UNROWED", "rule_for", "same_shape"]
