"""analyze(): walk a traced graph once, solve channel ties with union-find, and build the ChannelGraph."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch.fx as fx

from fxscale.analysis.context import Ctx, Use
from fxscale.analysis.labels import Label
from fxscale.errors import TraceError
from fxscale.ops.table import module_row, node_row
from fxscale.tracing import META


@dataclass
class ChannelGroup:
    """A set of channel spaces that must keep one width (ties through residuals, norms, concats...)."""

    name: str
    width: int
    scalable: bool
    divisor: int
    reason: str = ""
    producers: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (module, element offset of the group)
    followers: list[str] = field(default_factory=list)
    parts: int = 1  # atoms of this group in the defining label: width = parts * atom size
    root: int = -1  # size-class root (internal)

    def __repr__(self) -> str:
        why = "" if self.scalable else f", fixed: {self.reason}"
        return f"ChannelGroup({self.name!r}, width={self.width}, divisor={self.divisor}{why})"


@dataclass
class ChannelGraph:
    """The result of analyze(): groups by name plus the internal solution used by the passes."""

    gm: fx.GraphModule
    groups: list[ChannelGroup]
    ctx: Ctx = field(repr=False)

    def __getitem__(self, name: str) -> ChannelGroup:
        return self.by_name[name]

    @property
    def by_name(self) -> dict[str, ChannelGroup]:
        """Groups keyed by their stable name."""
        return {g.name: g for g in self.groups}

    @property
    def scalable(self) -> list[ChannelGroup]:
        """Groups whose width may change."""
        return [g for g in self.groups if g.scalable]

    def preserve_exact(self, plan: Any) -> tuple[bool, list[str]]:
        """Whether ``init="preserve"`` is proven to keep the outputs under ``plan`` (see fxscale.analysis.exact),
        with the reasons (naming groups and nodes) where it is not."""
        from fxscale.analysis.exact import preserve_exact
        return preserve_exact(self, plan)

    def table(self) -> str:
        """A plain-text table of the groups."""
        rows = [f"{'group':40s} {'width':>6s} {'div':>4s} {'prod':>4s} {'cons':>4s}  status"]
        for g in self.groups:
            status = "scalable" if g.scalable else f"fixed ({g.reason})"
            rows.append(f"{g.name[:40]:40s} {g.width:6d} {g.divisor:4d} {len(g.producers):4d} "
                        f"{len(g.consumers):4d}  {status}")
        return "\n".join(rows)


def _placeholder(ctx: Ctx, node: fx.Node) -> Any:
    shape = ctx.shape(node)
    if not isinstance(shape, tuple) or len(shape) < 2:
        return None
    lab = ctx.atoms.label(shape[1], "input")
    ctx.atoms.freeze(lab, "network input channels")
    return [None, lab] + [None] * (len(shape) - 2)


def _get_attr(ctx: Ctx, node: fx.Node) -> Any:
    """A parameter/buffer: each dim of size > 1 is its own space until tied to something. Every read of one
    tensor (fx makes a get_attr node per access) carries the same labels."""
    shape = ctx.shape(node)
    if not isinstance(shape, tuple):
        return None
    u, seen = ctx.use(node.target, "param")
    if seen and "labels" in u.extra:
        return list(u.extra["labels"])
    labels = [ctx.atoms.label(s, f"param {node.target}") if s > 1 else None for s in shape]
    u.params[""] = {d: (lab, "select") for d, lab in enumerate(labels) if lab is not None}
    u.extra["labels"] = tuple(labels)
    return labels


def _call_module(ctx: Ctx, node: fx.Node) -> Any:
    mod = ctx.modules[node.target]
    row = module_row(mod)
    if row is None:
        reason = f"module {node.target} ({type(mod).__name__}) has no channel rule"
        for a in node.args:
            ctx.freeze_value(ctx.lab(a), reason)
        if any(True for _ in mod.parameters(recurse=True)):
            ctx.notes.append(reason)
        from fxscale.analysis.ops import opaque_output
        return opaque_output(ctx, node)
    return row.rule(ctx, node, mod)


def _walk(ctx: Ctx, graph: fx.Graph) -> None:
    """Label every node in topological order."""
    for node in graph.nodes:
        if node.op == "placeholder":
            labels = _placeholder(ctx, node)
        elif node.op == "get_attr":
            labels = _get_attr(ctx, node)
        elif node.op == "call_module":
            labels = _call_module(ctx, node)
        elif node.op in ("call_function", "call_method"):
            labels = _apply_rule(ctx, node)
        else:  # output
            ctx.freeze_value(tuple(ctx.lab(a) for a in _flat(node.args[0])), "network output")
            labels = None
        ctx.set_lab(node, labels)


def _apply_rule(ctx: Ctx, node: fx.Node) -> Any:
    """Run a node's rule; a rule that cannot make sense of its inputs freezes them instead."""
    try:
        return node_row(node).rule(ctx, node)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError) as e:
        from fxscale.analysis.ops import unknown
        unknown(ctx, node)
        ctx.notes.append(f"node {node.name}: rule failed ({type(e).__name__}: {e}); inputs frozen")
        return None


def _flat(x: Any) -> list:
    if isinstance(x, (list, tuple)):
        return [y for item in x for y in _flat(item)]
    if isinstance(x, dict):
        return [y for item in x.values() for y in _flat(item)]
    return [x]


def analyze(gm: fx.GraphModule) -> ChannelGraph:
    """Compute the channel groups of a GraphModule produced by fxscale.trace."""
    if not isinstance(gm, fx.GraphModule) or META not in getattr(gm, "meta", {}):
        raise TraceError("fxscale.analyze needs a GraphModule from fxscale.trace(model, example_input)")
    ctx = Ctx(gm)
    _walk(ctx, gm.graph)
    train_gm = gm.meta[META].get("train_gm")
    if train_gm is not None:  # train-only branches share modules (and so channel spaces) with the eval graph
        ctx.tag = "train:"
        ctx.modules.update(dict(train_gm.named_modules()))
        _walk(ctx, train_gm.graph)
    return ChannelGraph(gm, _groups(ctx), ctx)


def _groups(ctx: Ctx) -> list[ChannelGroup]:
    """Build named groups from the solved size classes of leaf atoms."""
    at = ctx.atoms
    groups: dict[int, ChannelGroup] = {}
    for use in ctx.uses.values():
        if use.producer:
            _add_producer(ctx, groups, use)
    used = {at.sized.find(a) for u in ctx.uses.values() for lab in _use_labels(u) for a in at.leaves(lab)}
    for a in range(len(at.size)):
        if a in at.children or at.sized.find(a) not in used:
            continue
        r = at.sized.find(a)
        if r not in groups:
            groups[r] = ChannelGroup(at.origin[a], at.size[a], False, 1, "no layer produces this channel space",
                                     root=r)
    for use in ctx.uses.values():
        _add_roles(ctx, groups, use)
    for r, g in groups.items():
        _finish(ctx, g, r)
    return _unique_names(list(groups.values()))


def _use_labels(u: Use) -> list:
    """Every label a use references."""
    return list(u.inputs) + list(u.outputs) + [lab for d in u.params.values() for lab, _m in d.values()]


def _add_producer(ctx: Ctx, groups: dict[int, ChannelGroup], use: Use) -> None:
    at = ctx.atoms
    leaves = at.leaves(use.outputs[0])
    roots = list(dict.fromkeys(at.sized.find(a) for a in leaves))
    for k, r in enumerate(roots):
        if r in groups:
            continue
        n = sum(1 for a in leaves if at.sized.find(a) == r)
        size = at.size[next(a for a in leaves if at.sized.find(a) == r)]
        base = use.extra.get("group", use.name)
        name = base if len(roots) == 1 else f"{base}[{k}]"
        groups[r] = ChannelGroup(name, n * size, True, 1, parts=n, root=r)


def _add_roles(ctx: Ctx, groups: dict[int, ChannelGroup], use: Use) -> None:
    at = ctx.atoms
    for lab in use.outputs if use.producer else []:
        for r in {at.sized.find(a) for a in at.leaves(lab)}:
            groups[r].producers.append(use.name)
    for lab in use.inputs if use.kind != "mha" else []:
        off = 0
        seen: set[int] = set()
        for p in at.expand(lab):
            r = at.sized.find(p.atom)
            if r not in seen:
                groups[r].consumers.append((use.name, off))
                seen.add(r)
            off += at.size[p.atom] * p.inner
    if not use.producer:
        roots = {at.sized.find(a) for dims in use.params.values() for lab, _m in dims.values() for a in at.leaves(lab)}
        for r in roots:
            groups[r].followers.append(use.name or "?")


def _finish(ctx: Ctx, g: ChannelGroup, r: int) -> None:
    at = ctx.atoms
    reason = at.frozen.get(r)
    if reason:
        g.scalable, g.reason = False, reason
    elif not g.producers:
        g.scalable = False
        g.reason = g.reason or "no layer produces this channel space"
    g.divisor = g.parts * at.divisor.get(r, 1)


def _unique_names(groups: list[ChannelGroup]) -> list[ChannelGroup]:
    seen: dict[str, int] = {}
    for g in groups:
        n = seen.get(g.name, 0)
        seen[g.name] = n + 1
        if n:
            g.name = f"{g.name}#{n}"
    return groups


def label_width(ctx: Ctx, label: Label, sizes: Optional[dict[int, int]] = None) -> int:
    """Width of a label under new atom sizes (old sizes where not given)."""
    at = ctx.atoms
    return sum((sizes or {}).get(p.atom, at.size[p.atom]) * p.inner for p in at.expand(label))

