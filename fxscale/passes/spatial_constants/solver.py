"""The solver: run a graph shape-only (meta tensors) at several input sizes in lockstep, following every size.

Each node is run at every probe with its literal sites substituted, then labelled; the rules of
:mod:`.rules` say which literals follow the input size and how factors flow. A probe failure backjumps to the
latest divisor decision among the failing node's ancestors.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.fx as fx
from torch.func import functional_call

from fxscale.errors import PlanError
from fxscale.passes.spatial_constants.embeddings import _PosEmb
from fxscale.passes.spatial_constants.factors import _I, _T, _Fail, _fresh, _is_int, _pvals, _Restart, _Unsupported
from fxscale.passes.spatial_constants.rules import rule_for

_MAX_BACKJUMPS = 400


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
        self.relbias: dict[str, Any] = {}  # index buffer target -> relbias._RelBias
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

    @staticmethod
    def _ancestors(start: list) -> set:
        seen, stack = set(), list(start)
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(n.all_input_nodes)
        return seen

    @staticmethod
    def _error(f: _Fail, extra: str = "") -> PlanError:
        n = f.node
        return PlanError(f"node {n.name} ({n.op} {getattr(n.target, '__name__', n.target)}): {f.why}"
                         + (f" ({extra})" if extra else ""))

    def decide(self, key: Any, n: fx.Node) -> int:
        """The current option (0: keep the literal, 1: the alternative) of a decision first taken at ``n``."""
        d = self.dec.get(key)
        if d is None:
            d = self.dec[key] = [0, self.pos[n], set()]
        d[2].add(n)
        return d[0]

    # -- one node at every probe ------------------------------------------------------------------------
    def _run(self, n: fx.Node) -> None:
        P = self.P
        if n.op == "output":
            return
        if n.op in ("placeholder", "get_attr") or n is self.resize:
            if n is self.resize:
                vals = [torch.empty(s, device="meta") for s in self.resize_shapes]
            elif n.op == "placeholder":
                idx = [m for m in self.nodes if m.op == "placeholder"].index(n)
                vals = [self.inputs[p][idx] for p in range(P)]
            else:
                vals = [self._attr(n.target, p) for p in range(P)]
            self.vals[n] = vals
            rel = self.relbias.get(str(n.target)) if n.op == "get_attr" else None
            self.lab[n] = rel.index_label(P) if rel is not None else self.generic(vals, [])
            return
        rule = rule_for(n)
        pending: dict = {}
        sites = rule.sites(self, n, pending) if rule is not None and rule.sites is not None else {}
        if rule is not None and rule.entry is not None:
            rule.entry(self, n)
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
                raise _Fail(n, f"{type(e).__name__}: {msg} (at input {self.probe_desc(p)})") from None
        self.sites[n] = sites
        self.vals[n] = vals
        self.lab[n] = self._label(n, vals, rule, pending)

    def probe_desc(self, p: int) -> str:
        shape = self.resize_shapes[p] if self.resize is not None else tuple(self.inputs[p][0].shape)
        return "x".join(str(s) for s in shape[2:]) if len(shape) > 2 else str(shape)

    def real_attr(self, target: str) -> Any:
        obj = self.gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _attr(self, target: str, p: int) -> Any:
        key = (target, p)
        if key in self.meta_attr:
            return self.meta_attr[key]
        obj = self.real_attr(target)
        if isinstance(obj, torch.Tensor):
            spec = self.posemb.get(target)
            shape = spec.shape_at(tuple(obj.shape), p) if spec is not None else tuple(obj.shape)
            rel = next((r for r in self.relbias.values() if target in (r.table, r.index)), None)
            if rel is not None:
                shape = rel.shape_at(target, shape, p)
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

    # -- ints --------------------------------------------------------------------------------------------------
    def ivals(self, a: Any) -> Optional[tuple]:
        """Per-probe values of an int argument (a node holding an int, or a literal)."""
        if isinstance(a, fx.Node):
            v = self.vals.get(a)
            if v is not None and all(_is_int(x) for x in v):
                return tuple(v)
            return None
        if _is_int(a):
            return (a,) * self.P
        return None

    def int_factors(self, a: Any) -> tuple:
        """The factors of an int argument (its label, or a fresh factor)."""
        if isinstance(a, fx.Node):
            lab = self.lab.get(a)
            if isinstance(lab, _I):
                return tuple(lab)
            return _fresh(self.ivals(a))
        return _fresh((a,) * self.P)

    # -- labels ----------------------------------------------------------------------------------------------
    def generic(self, vals: list, inputs: list) -> Any:
        """Label without a rule: each dim keeps the factors of an input dim of the same sizes (from the right)."""
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
            return tuple(self.generic([v[i] for v in vals], inputs) for i in range(len(v0)))
        return None

    def _tensor_inputs(self, n: fx.Node) -> list:
        return [lab for lab in (self.lab.get(a) for a in n.all_input_nodes) if isinstance(lab, _T)]

    def _label(self, n: fx.Node, vals: list, rule: Any, pending: dict) -> Any:
        v0 = vals[0]
        try:
            lab = rule.label(self, n, vals, pending) if rule is not None and rule.label is not None else None
        except Exception:  # noqa: BLE001 - a label rule that does not apply falls back to the generic one
            lab = None
        if lab is None:
            return self.generic(vals, self._tensor_inputs(n))
        if isinstance(v0, torch.Tensor):
            if not isinstance(lab, _T) or len(lab) != v0.dim():
                return self.generic(vals, self._tensor_inputs(n))
            dims = []
            for d, fs in enumerate(lab):
                sizes = tuple(int(v.shape[d]) for v in vals)
                dims.append(fs if _pvals(fs, self.P) == sizes else _fresh(sizes))
            return _T(dims)
        if isinstance(lab, _I):
            if not all(_is_int(v) and v > 0 for v in vals) or _pvals(lab, self.P) != tuple(vals):
                return self.generic(vals, [])
        return lab


__all__ = ["_Solver"]
