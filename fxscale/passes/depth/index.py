"""The module index of a traced graph (paths, types, nodes, leaf rows) and the depth keys it can name."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

import torch.fx as fx
from torch import nn

from fxscale.ops import OpRow, module_row
from fxscale.passes.depth.facts import is_plain_conv

STACK = "nn_module_stack"
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _clean(path: str) -> str:
    """'layer1.0.relu@1' -> 'layer1.0.relu' (fx suffixes repeated calls of one module with @N)."""
    return ".".join(p.split("@")[0] for p in path.split("."))


def _is_seq(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, nn.Sequential)


def _num(name: str) -> Optional[tuple[str, int]]:
    m = _NUMBERED.match(name)
    return (m.group(1), int(m.group(2))) if m else None


@dataclass
class _Index:
    """Module paths seen in node.meta['nn_module_stack']: their types, nodes, calls and children."""

    types: dict[str, type] = field(default_factory=dict)
    nodes: dict[str, list[fx.Node]] = field(default_factory=dict)
    repeated: set[str] = field(default_factory=set)  # paths called more than once (keys with @N)
    leaves: dict[str, list[fx.Node]] = field(default_factory=dict)  # call_module targets
    rows: dict[str, Optional[OpRow]] = field(default_factory=dict)  # op-table row of each call_module target

    def children(self, path: str) -> list[str]:
        """Child names of `path`, in model order when numbered."""
        pre = path + "."
        names = {p[len(pre):].split(".")[0] for p in self.types if p.startswith(pre)}
        return sorted(names, key=lambda c: (_num(c)[1] if _num(c) else -1, c))

    def is_leaf(self, path: str) -> bool:
        return path in self.leaves and not any(p.startswith(path + ".") for p in self.types)

    def is_plain_conv(self, path: str) -> bool:
        """A called leaf module in the table's plain conv row (Conv1d/2d/3d, not transposed)."""
        return is_plain_conv(self.rows.get(path))


def _index(gm: fx.GraphModule) -> _Index:
    idx = _Index()
    for n in gm.graph.nodes:
        stack = n.meta.get(STACK) or {}
        for key, val in stack.items():
            path = _clean(key)
            if "@" in key:
                idx.repeated.add(path)
            typ = val[1] if isinstance(val, tuple) and len(val) > 1 else None
            if isinstance(typ, type):
                idx.types.setdefault(path, typ)
            idx.nodes.setdefault(path, []).append(n)
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            idx.leaves.setdefault(n.target, []).append(n)
            idx.types.setdefault(n.target, type(mod))
            idx.rows.setdefault(n.target, module_row(mod))
    return idx


def stage_keys(gm: fx.GraphModule) -> list[str]:
    """Depth keys the graph can name: Sequentials of blocks ("S"), blocks and convs inside Sequentials ("S.K").

    Whether a key's block can be repeated also depends on its shapes and structure (see resolve()).
    """
    idx = _index(gm)
    keys = []
    for path, typ in idx.types.items():
        if not _is_seq(typ):
            continue
        kids = idx.children(path)
        if kids and not idx.is_leaf(f"{path}.{kids[-1]}"):
            keys.append(path)
        for k in kids:
            child = f"{path}.{k}"
            if child not in keys and (not idx.is_leaf(child) or idx.is_plain_conv(child)):
                keys.append(child)
    return sorted(set(keys), key=lambda k: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in k.split(".")])


__all__ = ["STACK", "stage_keys"]
