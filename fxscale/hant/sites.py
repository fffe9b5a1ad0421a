"""HANT sites: the replaceable units of a traced model, found from the structure of its FX graph.

A site is a single-entry single-exit region of the graph: one tensor enters (the `entry` node, outside the
region), one node of the region (`output`) is the only one used outside it. Three patterns are matched, in order:

1. residual blocks: an add whose two operands meet again at their nearest common ancestor `d`; the nodes between
   `d` and the add (plus a following activation) must form a closed region (BasicBlock, Bottleneck with its
   downsample, MobileNetV2 InvertedResidual, EfficientNet MBConv with SE, ViT attention and MLP sub-blocks);
2. module scopes (from ``node.meta["nn_module_stack"]``) whose nodes form a closed region with 1 to 5 convs: blocks
   without a skip connection (stride-2 inverted residuals) and torchvision's Conv2dNormActivation;
3. the remaining conv -> norm -> act chains.

Sites never overlap. Each records its input and output shapes, stride, conv groups, residual flag and activation;
its name is its module scope (stable across runs, like channel-group names).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.fx as fx
from torch import nn

from fxscale.errors import TraceError
from fxscale.tracing import META

_ADDS = {operator.add, operator.iadd, torch.add}
_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU)
_ACT_FUNCS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.nn.functional.silu,
              torch.nn.functional.gelu, torch.nn.functional.hardswish}
_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
MAX_SCOPE_CONVS = 5


@dataclass(frozen=True)
class Site:
    """One replaceable region: nodes (graph names, in order), entry node, output node, shapes and structure."""

    name: str
    kind: str  # conv_norm_act | basic | bottleneck | inverted_residual | block | attention | mlp
    nodes: tuple[str, ...]
    entry: str
    output: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    stride: int
    groups: tuple[int, ...]
    residual: bool
    act: str  # the activation class used inside the site ("ReLU" when it has none)
    act_out: bool  # the site's output is an activation
    se: bool = False

    @property
    def tokens(self) -> bool:
        """Whether the site works on (N, L, D) token tensors (ViT blocks) rather than (N, C, H, W) maps."""
        return len(self.in_shape) == 3

    @property
    def in_channels(self) -> int:
        return int(self.in_shape[-1] if self.tokens else self.in_shape[1])

    @property
    def out_channels(self) -> int:
        return int(self.out_shape[-1] if self.tokens else self.out_shape[1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no node list)."""
        return {"name": self.name, "kind": self.kind, "in_shape": list(self.in_shape),
                "out_shape": list(self.out_shape), "stride": self.stride, "groups": list(self.groups),
                "residual": self.residual, "se": self.se, "act": self.act, "act_out": self.act_out}


# ---------------------------------------------------------------------------------------------- graph helpers
def _shape(n: fx.Node) -> Optional[tuple[int, ...]]:
    s = n.meta.get(META, {}).get("shape")
    return tuple(s) if isinstance(s, tuple) and all(isinstance(v, int) for v in s) else None


def _module(gm: fx.GraphModule, n: fx.Node) -> Optional[nn.Module]:
    if n.op != "call_module":
        return None
    try:
        return gm.get_submodule(n.target)
    except AttributeError:
        return None


def _is_act(gm: fx.GraphModule, n: fx.Node) -> bool:
    mod = _module(gm, n)
    return isinstance(mod, _ACT_MODULES) or (n.op == "call_function" and n.target in _ACT_FUNCS) or \
        (n.op == "call_method" and n.target in ("relu", "relu_"))


def _tensor_inputs(n: fx.Node) -> list[fx.Node]:
    return [u for u in n.all_input_nodes if u.op != "get_attr"]


def _ancestors(nodes: list[fx.Node]) -> dict[fx.Node, int]:
    """Bitset of ancestor indices per node (graph order is topological)."""
    index = {n: i for i, n in enumerate(nodes)}
    anc: dict[fx.Node, int] = {}
    for n in nodes:
        bits = 0
        for u in n.all_input_nodes:
            bits |= anc[u] | (1 << index[u])
        anc[n] = bits
    return anc


def _closed(region: set[fx.Node], entry: fx.Node, output: fx.Node) -> bool:
    """Single entry (`entry`, outside), single exit (`output`): no other edge crosses the region's border."""
    for v in region:
        if any(u not in region and u is not entry and u.op != "get_attr" for u in v.all_input_nodes):
            return False
        if v is not output and any(w not in region for w in v.users):
            return False
    return True


def _common_prefix(paths: list[str]) -> str:
    parts = [p.split(".") for p in paths]
    out: list[str] = []
    for segs in zip(*parts):
        if len(set(segs)) != 1:
            break
        out.append(segs[0])
    return ".".join(out)


# ---------------------------------------------------------------------------------------------- matching
def _residual_regions(gm: fx.GraphModule, nodes: list[fx.Node]) -> list[tuple[set[fx.Node], fx.Node, fx.Node]]:
    """(region, entry, output) of every residual add whose operands close a single-entry region."""
    index = {n: i for i, n in enumerate(nodes)}
    anc = _ancestors(nodes)
    found = []
    for add in nodes:
        is_add = (add.op == "call_function" and add.target in _ADDS) or (add.op == "call_method" and
                                                                          add.target in ("add", "add_"))
        ops = _tensor_inputs(add) if is_add else []
        if len(ops) != 2 or _shape(add) is None or _shape(ops[0]) != _shape(ops[1]):
            continue
        common = (anc[ops[0]] | 1 << index[ops[0]]) & (anc[ops[1]] | 1 << index[ops[1]])
        output = add
        if len(add.users) == 1 and _is_act(gm, next(iter(add.users))):
            output = next(iter(add.users))
        for i in sorted((i for i in range(len(nodes)) if common >> i & 1), reverse=True)[:64]:
            d = nodes[i]
            region = {v for v in nodes[i + 1:index[output] + 1] if anc[v] >> i & 1 and
                      (v is output or v is add or anc[add] >> index[v] & 1)}
            region |= {v for v in nodes[i + 1:index[output]] if not v.users and v.op != "output" and
                       all(u in region or u is d for u in v.all_input_nodes) and set(v.all_input_nodes) & region}
            if _closed(region, d, output) and _shape(d) is not None:
                found.append((region, d, output))
                break
    return found


def _scope_regions(gm: fx.GraphModule, nodes: list[fx.Node], taken: set[fx.Node]
                   ) -> list[tuple[set[fx.Node], fx.Node, fx.Node, str]]:
    """Outermost module scopes with 1..MAX_SCOPE_CONVS convs whose nodes form a closed region."""
    members: dict[str, list[fx.Node]] = {}
    for n in nodes:
        for path in (n.meta.get("nn_module_stack") or {}):
            if isinstance(path, str) and path:
                members.setdefault(path, []).append(n)
    out = []
    for path in sorted(members, key=lambda p: (p.count("."), list(members).index(p))):
        region = set(members[path])
        if region & taken or (len(region) == 1 and next(iter(region)).op == "call_module"):  # a leaf: chains
            continue
        convs = [n for n in region if isinstance(_module(gm, n), nn.Conv2d)]
        if not 1 <= len(convs) <= MAX_SCOPE_CONVS:
            continue
        entries = {u for v in region for u in v.all_input_nodes if u not in region and u.op != "get_attr"}
        exits = [v for v in region if any(w not in region for w in v.users)]
        if len(entries) == 1 and len(exits) == 1 and _closed(region, next(iter(entries)), exits[0]):
            out.append((region, next(iter(entries)), exits[0], path))
            taken |= region
    return out


def _chain_regions(gm: fx.GraphModule, nodes: list[fx.Node], taken: set[fx.Node]
                   ) -> list[tuple[set[fx.Node], fx.Node, fx.Node]]:
    """conv -> (norm) -> (act) chains of single-user nodes outside every other site."""
    out = []
    for n in nodes:
        if n in taken or not isinstance(_module(gm, n), nn.Conv2d) or len(_tensor_inputs(n)) != 1:
            continue
        region, last = {n}, n
        for test in (lambda v: isinstance(_module(gm, v), _NORMS), lambda v: _is_act(gm, v)):
            nxt = next(iter(last.users)) if len(last.users) == 1 else None
            if nxt is not None and nxt not in taken and test(nxt):
                region.add(nxt)
                last = nxt
        out.append((region, _tensor_inputs(n)[0], last))
        taken |= region
    return out


# ---------------------------------------------------------------------------------------------- describe
def _describe(gm: fx.GraphModule, region: set[fx.Node], entry: fx.Node, output: fx.Node, name: str,
              residual: bool, order: dict[fx.Node, int]) -> Optional[Site]:
    in_shape, out_shape = _shape(entry), _shape(output)
    if in_shape is None or out_shape is None or len(in_shape) not in (3, 4) or len(out_shape) != len(in_shape):
        return None
    mods = [(_module(gm, n), n) for n in sorted(region, key=order.__getitem__)]
    convs = [m for m, _ in mods if isinstance(m, nn.Conv2d)]
    if not convs and not any(isinstance(m, (nn.Linear, nn.MultiheadAttention)) for m, _ in mods):
        return None
    acts = [type(m).__name__ for m, _ in mods if isinstance(m, _ACT_MODULES)]
    se = any(n.op == "call_module" and isinstance(m, (nn.Sigmoid, nn.Hardsigmoid)) or
             (n.op == "call_function" and n.target in (torch.sigmoid, torch.nn.functional.hardsigmoid))
             for m, n in mods)
    if len(in_shape) == 3:
        kind = "attention" if any(isinstance(m, nn.MultiheadAttention) for m, _ in mods) else "mlp"
        stride = 1
    else:
        stride = max(1, round(in_shape[-1] / out_shape[-1]))
        depthwise = any(c.groups > 1 and c.groups == c.in_channels for c in convs)
        spatial = sum(c.kernel_size != (1, 1) for c in convs)  # basic: two 3x3; bottleneck: 1x1-3x3-1x1
        kind = "inverted_residual" if depthwise else "conv_norm_act" if len(convs) == 1 else \
            "basic" if residual and spatial == 2 else "bottleneck" if residual and spatial == 1 and \
            len(convs) >= 3 else "block"
    return Site(name=name, kind=kind, nodes=tuple(n.name for n in sorted(region, key=order.__getitem__)),
                entry=entry.name, output=output.name, in_shape=in_shape, out_shape=out_shape, stride=stride,
                groups=tuple(c.groups for c in convs), residual=residual, act=acts[0] if acts else "ReLU",
                act_out=_is_act(gm, output), se=se)


def _name(region: set[fx.Node], output: fx.Node, order: dict[fx.Node, int]) -> str:
    """The output node's innermost module scope that holds every module of the region, else their common prefix,
    else the region's first module (as channel groups are named after a producer)."""
    mods = {str(n.target): n for n in region if n.op == "call_module"}
    paths = list(mods)
    for scope in reversed([p for p in (output.meta.get("nn_module_stack") or {}) if isinstance(p, str) and p]):
        if all(p == scope or p.startswith(scope + ".") for p in paths):
            return scope
    return (_common_prefix(paths) if paths else "") or (min(paths, key=lambda p: order[mods[p]]) if paths else output.name)


def find_sites(gm: fx.GraphModule) -> list[Site]:
    """The non-overlapping sites of a GraphModule from fxscale.trace, in graph order."""
    if META not in getattr(gm, "meta", {}):
        raise TraceError("find_sites needs a GraphModule from fxscale.trace (node shapes are read from it)")
    nodes = list(gm.graph.nodes)
    order = {n: i for i, n in enumerate(nodes)}
    raw: list[tuple[set[fx.Node], fx.Node, fx.Node, Optional[str], bool]] = []
    taken: set[fx.Node] = set()
    for region, d, out in sorted(_residual_regions(gm, nodes), key=lambda r: len(r[0])):
        if not region & taken:
            raw.append((region, d, out, None, True))
            taken |= region
    raw += [(r, d, o, p, False) for r, d, o, p in _scope_regions(gm, nodes, taken)]
    raw += [(r, d, o, str(min(r, key=order.__getitem__).target), False) for r, d, o in _chain_regions(gm, nodes, taken)]
    sites: list[Site] = []
    used: set[str] = set()
    for region, d, out, path, residual in sorted(raw, key=lambda r: order[r[2]]):
        name = path or _name(region, out, order)
        site = _describe(gm, region, d, out, name, residual, order)
        if site is None:
            continue
        if site.tokens or name in used:
            name = f"{name}:{site.kind}"
            k = 2
            while name in used:
                name, k = f"{site.name}:{site.kind}{k}", k + 1
            site = Site(**{**site.__dict__, "name": name})
        used.add(name)
        sites.append(site)
    return sites


PAIR_SEP = "+"  # a multi-site name joins its sites' names (module scopes never contain it)


def pair_parts(name: str) -> tuple[str, ...]:
    """The site names a (multi-)site name covers: ``"a+b"`` -> ("a", "b"), ``"a"`` -> ("a",)."""
    return tuple(name.split(PAIR_SEP))


def merge_sites(gm: fx.GraphModule, a: Site, b: Site) -> Optional[Site]:
    """Two consecutive sites as one region that a single candidate can replace (depth reduction), or None where
    they do not chain: `b` must start at `a`'s output, and nothing outside `b` may read that output (a skip
    connection around `b` would lose its source). The region is then single-entry (a's entry) and single-exit
    (b's output), like every site."""
    if b.entry != a.output or a.tokens != b.tokens:
        return None
    node = next((n for n in gm.graph.nodes if n.name == a.output), None)
    inside = set(b.nodes)
    if node is None or any(u.name not in inside for u in node.users):
        return None
    return Site(name=f"{a.name}{PAIR_SEP}{b.name}", kind="pair", nodes=a.nodes + b.nodes, entry=a.entry,
                output=b.output, in_shape=a.in_shape, out_shape=b.out_shape, stride=a.stride * b.stride,
                groups=a.groups + b.groups, residual=False, act=b.act, act_out=b.act_out, se=a.se or b.se)


def find_pairs(gm: fx.GraphModule, sites: list[Site]) -> list[tuple[int, Site]]:
    """(index of the first site, merged site) for every two consecutive sites that chain (merge_sites)."""
    out = []
    for i in range(len(sites) - 1):
        merged = merge_sites(gm, sites[i], sites[i + 1])
        if merged is not None:
            out.append((i, merged))
    return out


__all__ = ["PAIR_SEP", "Site", "find_pairs", "find_sites", "merge_sites", "pair_parts"]
