"""The spatial rule tables of the resolution pass (fxscale.passes.spatial_constants.rules).

Every table entry is exercised by a micro-net whose spatial constants it has to carry to a new resolution, or
listed in a named exclusion with the reason; every op row that moves or combines sizes is covered by a rule or
excluded by name. In-place arithmetic (``x.add_(p)``, ``x.mul_(p)``) resolves exactly like its out-of-place twin.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import fxscale
from fxscale.ops import ROWS, node_row
from fxscale.passes.spatial_constants import _Restart, _solve
from fxscale.passes.spatial_constants import rules as R
from fxscale.passes.spatial_constants.relbias import signed_offset_index
from fxscale.tracing import META

torch.set_num_threads(1)

OLD, NEW = 16, 24  # input sides: a 4x4 patch grid becomes 6x6


class Net(nn.Module):
    """A 4x4 patch grid of 8 channels with the parameters the micro-nets combine it with."""

    def __init__(self, body: Callable[["Net", torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.body = body
        self.proj = nn.Conv2d(3, 8, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.tok = nn.Parameter(torch.randn(1, 1 + 16, 8))   # class token + 4x4 grid tokens
        self.pmap = nn.Parameter(torch.rand(1, 8, 4, 4) + 0.5)  # an NCHW map on the grid (away from 0: div)
        self.lin = nn.Linear(4, 4)
        self.rel = nn.Parameter(torch.randn(2, 7 * 7))  # 2 heads x Swin's signed offsets of a 4x4 window
        self.register_buffer("rel_idx", signed_offset_index((4, 4)).reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self, x).sum()  # an output of one size at every resolution


def _sizes(m: Net, x: torch.Tensor) -> torch.Tensor:
    y = m.proj(x)
    s = y.shape
    return y.reshape(s[0], s[1], s[2] * s[3]).mean(-1)


def _size_method(m: Net, x: torch.Tensor) -> torch.Tensor:
    y = m.proj(x)
    return y.reshape(y.size(0), y.size(1), -1)


def _tokens(m: Net, x: torch.Tensor) -> torch.Tensor:
    t = m.proj(x).flatten(2).transpose(1, 2)
    t = torch.cat([m.cls.expand(t.shape[0], -1, -1), t], dim=1)
    return (t + m.tok).mean(1)


def _grid_partition(m: Net, x: torch.Tensor) -> torch.Tensor:
    """MaxViT-style grid partition: 2x2 cells of p x p, p = H // 2 (a Linear over the p*p cell tokens)."""
    y = m.proj(x)
    s = y.shape
    p = s[2] // 2
    g = y.reshape(s[0], s[1], 2, p, 2, p).permute(0, 2, 4, 1, 3, 5).reshape(s[0], 4, s[1], p * p)
    return m.lin(g)


def _check_eq(m: Net, x: torch.Tensor) -> torch.Tensor:
    y = m.proj(x)
    torch._assert(y.shape[2] == 4, "grid")
    return y


def _check_ne(m: Net, x: torch.Tensor) -> torch.Tensor:
    y = m.proj(x)
    return y * (1 + (y.shape[2] != 4))


def _mul(m: Net, x: torch.Tensor) -> torch.Tensor:
    y = m.proj(x)
    s = y.shape
    return (y * m.pmap).reshape(s[0], s[1], s[2] * s[3])


def _sdpa(m: Net, x: torch.Tensor) -> torch.Tensor:
    """Attention over the whole grid with a Swin-style relative bias as SDPA's ``attn_mask``."""
    t = m.proj(x).flatten(2).transpose(1, 2)
    q = t.reshape(t.shape[0], t.shape[1], 2, 4).transpose(1, 2)
    bias = m.rel[:, m.rel_idx].view(2, 16, 16).unsqueeze(0)
    return F.scaled_dot_product_attention(q, q, q, attn_mask=bias)


# Per table entry: the micro-net body that exercises it.
NETS: dict[str, Callable[[Net, torch.Tensor], torch.Tensor]] = {
    "name:size": _sizes,
    "name:size_m": _size_method,
    "name:getitem": _sizes,
    "name:cat": _tokens,
    "name:permute": lambda m, x: torch.permute(m.proj(x), (0, 2, 3, 1)),
    "name:permute_m": lambda m, x: m.proj(x).permute(0, 2, 3, 1),
    "name:transpose": lambda m, x: torch.transpose(m.proj(x), 1, 3),
    "name:transpose_m": lambda m, x: m.proj(x).transpose(1, 3),
    "name:movedim": lambda m, x: torch.movedim(m.proj(x), 1, 3),
    "name:movedim_m": lambda m, x: m.proj(x).movedim(1, 3),
    "name:flatten": lambda m, x: torch.flatten(m.proj(x), 2),
    "name:flatten_m": _tokens,
    "name:unsqueeze": lambda m, x: torch.unsqueeze(m.proj(x), 1),
    "name:unsqueeze_m": lambda m, x: m.proj(x).unsqueeze(1),
    "name:reshape": lambda m, x: torch.reshape(torch.flatten(m.proj(x), 2), (1, 8, 4, 4)),
    "name:reshape_m": lambda m, x: m.proj(x).flatten(2).view(1, 8, 4, 4),
    "name:expand": lambda m, x: m.proj(x).expand(-1, -1, 4, 4),
    "name:floordiv": _grid_partition,
    "name:compare": _check_eq,
    "arith:add": lambda m, x: m.proj(x) + m.pmap,
    "arith:sub": lambda m, x: m.proj(x) - m.pmap,
    "arith:div": lambda m, x: m.proj(x) / m.pmap,
    "arith:mul": _mul,
    "unrowed:ne": _check_ne,
    "name:sdpa": _sdpa,
}
# Table entries no micro-net exercises, with the reason (none at present).
EXCLUDED: dict[str, str] = {}

ENTRIES = ([f"name:{k}" for k in R.BY_NAME] + [f"arith:{k}" for k in R.BY_ARITH]
           + [f"unrowed:{getattr(k, '__name__', k)}" for k in R.UNROWED])

# Rows that move or combine sizes (spatial "view", binary, or layout) without a rule, with the reason.
ROW_EXCLUSIONS: dict[str, str] = {
    "flatten_module": "call_module: modules get the generic label (nn.Flatten after a pool sees no spatial dims)",
    "identity_module": "call_module: an identity keeps its input's sizes (generic label)",
    "squeeze": "drops size-1 dims: the generic label, matched from the right, keeps the other dims' factors",
    "squeeze_m": "drops size-1 dims: the generic label, matched from the right, keeps the other dims' factors",
    "repeat": "its arguments are repeat counts, not sizes: nothing to re-derive",
    "split": "pieces keep the input's rank; the generic label keeps the factors of same-sized dims",
    "split_m": "pieces keep the input's rank; the generic label keeps the factors of same-sized dims",
    "pow": "a parameter exponent is not an embedding: no position-embedding entry",
    "pow_m": "a parameter exponent is not an embedding: no position-embedding entry",
    "minmax": "a parameter bound is not an embedding: no position-embedding entry",
    "minmax_m": "a parameter bound is not an embedding: no position-embedding entry",
    "clamp": "a parameter bound is not an embedding: no position-embedding entry",
    "clamp_m": "a parameter bound is not an embedding: no position-embedding entry",
    "where": "the operand after the condition may be a mask; bicubic resampling of a mask is meaningless",
    "where_m": "masked_fill's operand is a mask; bicubic resampling of a mask is meaningless",
    "expand_as": "broadcasts to another tensor's shape: sizes come from that tensor (generic label)",
    "reshape_as": "reshapes to another tensor's shape: sizes come from that tensor, none from its own arguments",
}


def _trace(body: Callable) -> tuple[Net, Any]:
    torch.manual_seed(0)
    model = Net(body).eval()
    return model, fxscale.trace(model, torch.randn(1, 3, OLD, OLD))


def _spied(rule: R.Rule, hits: list, match: Callable[[Any], bool]) -> R.Rule:
    """The rule with every part recording (part, node, result) for the nodes ``match`` accepts."""
    def wrap(part: str, fn: Any) -> Any:
        if fn is None:
            return None

        def call(s: Any, n: Any, *rest: Any) -> Any:
            try:
                out = fn(s, n, *rest)
            except _Restart:
                if match(n):
                    hits.append((part, n, "restart"))
                raise
            if match(n):
                hits.append((part, n, out))
            return out
        return call
    return R.Rule(label=wrap("label", rule.label), sites=wrap("sites", rule.sites), entry=wrap("entry", rule.entry))


def _meaningful(part: str, out: Any) -> bool:
    if part == "label":
        return out is not None
    if part == "sites":
        return bool(out)
    return out == "restart"  # entry: a position embedding found, the solver restarts with it resampled


def test_every_entry_has_a_net_or_an_exclusion():
    assert set(ENTRIES) == set(NETS) | set(EXCLUDED), set(ENTRIES) ^ (set(NETS) | set(EXCLUDED))
    assert all(reason for reason in EXCLUDED.values())


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e not in EXCLUDED])  # exclusions: reasons checked above
def test_rule_table_entry_is_exercised(entry, monkeypatch):
    table, key = entry.split(":")
    hits: list = []
    if table == "name":
        rule = R.BY_NAME[key]
        monkeypatch.setitem(R.BY_NAME, key, _spied(rule, hits, lambda n: node_row(n).name == key))
    elif table == "arith":
        rule = R.BY_ARITH[key]
        monkeypatch.setitem(R.BY_ARITH, key, _spied(rule, hits, lambda n: node_row(n).arith == key))
    else:  # an op without a row that shares a named rule
        target = getattr(operator, key)
        name = R.UNROWED[target]
        rule = R.BY_NAME[name]
        monkeypatch.setitem(R.BY_NAME, name, _spied(rule, hits, lambda n: n.target is target))
    _model, gm = _trace(NETS[entry])
    solution = _solve(gm, (OLD, OLD), (NEW, NEW), "input")
    for part in ("label", "sites", "entry"):
        if getattr(rule, part) is not None:
            assert any(p == part and _meaningful(p, out) for p, _n, out in hits), (part, hits)
    if table == "arith":
        (pe,) = solution["position_embeddings"]
        assert pe.kind == "grid" and pe.grids[:2] == [(4, 4), (6, 6)]
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(NEW, NEW)), resolution_mode="input")
    with torch.no_grad():
        out = new(torch.randn(1, 3, NEW, NEW))
    assert torch.isfinite(out).all()


def test_grid_partition_keeps_the_cell_and_grows_the_grid():
    """The divisor decision: ``H // 2`` keeps the 2x2 cell the Linear needs and the grid count grows."""
    _model, gm = _trace(_grid_partition)
    changed = {(c[0].target, c[2], c[3]) for c in _solve(gm, (OLD, OLD), (NEW, NEW), "input")["constants"]}
    assert (operator.floordiv, 2, 3) in changed and ("reshape", 4, 9) in changed
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(NEW, NEW)), resolution_mode="input")
    with torch.no_grad():
        assert torch.isfinite(new(torch.randn(1, 3, NEW, NEW)))


@pytest.mark.parametrize("row", [r for r in ROWS if r.spatial == "view" or r.binary or r.layout],
                         ids=lambda r: r.name)
def test_rows_that_move_or_combine_sizes_have_a_rule_or_a_reason(row):
    ruled = row.name in R.BY_NAME or row.arith in R.BY_ARITH or R.same_shape(row)
    assert ruled != (row.name in ROW_EXCLUSIONS), f"{row.name}: give it a rule or a reason, not both"


# ---------------------------------------------------------------------------------------------------------
# in-place arithmetic resolves like its out-of-place twin
# ---------------------------------------------------------------------------------------------------------

class TinyViT(nn.Module):
    """Patch grid gated by a learned map, class token, learned token position embedding: both enter either
    in place (``y.mul_(map)``, ``t.add_(pos)``) or out of place."""

    def __init__(self, op: str, inplace: bool, dim: int = 8) -> None:
        super().__init__()
        self.op, self.inplace = op, inplace
        self.proj = nn.Conv2d(3, dim, 4, 4)
        self.gate = nn.Parameter(torch.rand(1, dim, 4, 4) + 0.5)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.rand(1, 1 + 16, dim) + 0.5)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def _apply_op(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return getattr(a, self.op + "_")(b)
        return getattr(operator, {"div": "truediv"}.get(self.op, self.op))(a, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._apply_op(self.proj(x), self.gate)
        torch._assert(y.shape[2] == 4, "patch grid")
        t = y.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.norm(self._apply_op(t, self.pos))
        return self.head(t[:, 0] + t[:, 1:].mean(1))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
@pytest.mark.parametrize("mode", ["input", "resize"])
def test_inplace_op_resolves_like_its_out_of_place_twin(op, mode):
    torch.manual_seed(0)
    twin = TinyViT(op, inplace=False).eval()
    model = TinyViT(op, inplace=True).eval()
    model.load_state_dict(twin.state_dict())
    x = torch.randn(1, 3, OLD, OLD)
    gms = [fxscale.trace(m, x) for m in (model, twin)]
    assert any(n.op == "call_method" and n.target == op + "_" for n in gms[0].graph.nodes)
    assert not any(n.op == "call_method" for n in gms[1].graph.nodes if str(n.target).endswith("_"))
    plan = fxscale.ScalingPlan(resolution=(NEW, 20))
    new, ref = (fxscale.transform(gm, plan, resolution_mode=mode) for gm in gms)
    rep, rep_ref = (m.meta[META]["transform"]["resolution"] for m in (new, ref))
    assert [(c["old"], c["new"]) for c in rep["constants"]] == [(c["old"], c["new"]) for c in rep_ref["constants"]]
    assert [(c["old"], c["new"]) for c in rep["constants"]] == [(4, 6)]
    strip = [{k: v for k, v in pe.items() if k != "node"} for pe in rep["position_embeddings"]]
    assert strip == [{k: v for k, v in pe.items() if k != "node"} for pe in rep_ref["position_embeddings"]]
    assert {pe["name"]: pe["new_grid"] for pe in strip} == {"gate": [6, 5], "pos": [6, 5]}
    for name in ("gate", "pos"):
        assert torch.equal(getattr(new, name), getattr(ref, name))
    xs = torch.randn(1, 3, NEW, 20) if mode == "input" else x
    with torch.no_grad():
        assert torch.equal(new(xs.clone()), ref(xs.clone()))
    assert model.pos.shape == (1, 17, 8) and model.gate.shape == (1, 8, 4, 4)  # the originals are untouched


def test_sdpa_bias_table_is_resampled_and_its_index_regenerated():
    """The SDPA entry: at a 6x6 grid the signed-offset table holds 11x11 offsets and the index is Swin's."""
    _model, gm = _trace(_sdpa)
    new = fxscale.transform(gm, fxscale.ScalingPlan(resolution=(NEW, NEW)), resolution_mode="input")
    assert tuple(new.rel.shape) == (2, 11 * 11)
    assert torch.equal(new.rel_idx, signed_offset_index((6, 6)).reshape(-1))
    with torch.no_grad():
        assert torch.isfinite(new(torch.randn(1, 3, NEW, NEW)))
