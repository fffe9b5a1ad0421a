"""Resolution of one depth key: which block (or conv run) it repeats, and whether its structure and shapes allow it."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Optional

import torch.fx as fx

from fxscale.errors import PlanError
from fxscale.passes.depth.facts import clamp, is_batchnorm, reads, row_of
from fxscale.passes.depth.index import _Index, _index, _is_seq, _num, stage_keys
from fxscale.tracing import META


@dataclass
class Insertion:
    """One resolved depth key: the block to repeat, where the copies go and how they are initialised."""

    key: str
    container: str  # module path of the Sequential that receives the copies
    units: list[str]  # child names of `container` that make up the repeated block, in order
    current: int
    count: int
    copies: int
    nodes: list[fx.Node]
    inp: fx.Node
    out: fx.Node
    form: str  # "stage" | "block" | "conv"
    recipe: list[tuple[str, str]] = field(default_factory=list)  # (target inside the block, action)
    identity: str = ""

    @property
    def block(self) -> str:
        return ", ".join(f"{self.container}.{u}" for u in self.units)


def _err(key: str, msg: str) -> PlanError:
    return PlanError(f"plan depth key {key!r}: {msg}")


def _unknown(gm: fx.GraphModule, key: str) -> PlanError:
    close = difflib.get_close_matches(key, stage_keys(gm), n=3)
    hint = f"; did you mean {close}?" if close else ""
    return _err(key, f"names no stage (an nn.Sequential of blocks, or a block/conv inside one){hint}")


def _container_name(container: str, typ: Any) -> str:
    return f"{container!r} ({getattr(typ, '__name__', typ)})"


def resolve(gm: fx.GraphModule, key: str, count: int, idx: Optional[_Index] = None) -> Insertion:
    """Find the block a depth key repeats and check its count, structure and shapes (no init check)."""
    idx = idx or _index(gm)
    if not idx.types:
        raise _err(key, "the graph has no nn_module_stack metadata; trace the model with fxscale.trace")
    if not isinstance(key, str) or key not in idx.types:
        raise _unknown(gm, key)
    typ = idx.types[key]
    kids = idx.children(key)
    if _is_seq(typ) and kids and not idx.is_leaf(f"{key}.{kids[-1]}"):
        container, unit, current, form = key, kids[-1], len(kids), "stage"
    else:
        container, _, unit = key.rpartition(".")
        ptype = idx.types.get(container)
        if not container or not _is_seq(ptype):
            if _is_seq(typ) and kids:
                if all(idx.is_leaf(f"{key}.{k}") for k in kids):
                    raise _err(key, f"{_container_name(key, typ)} is a flat Sequential of layers, not of blocks; "
                               f"name a conv in it ('{key}.K') to repeat its conv-bn-relu run")
                raise _err(key, f"the last child of {_container_name(key, typ)}, {key}.{kids[-1]}, is a single layer, "
                           f"not a block; name the block to repeat ('{key}.K')")
            parent = f"its parent {_container_name(container, ptype)} is not" if container else "it is not in"
            raise _err(key, f"{_container_name(key, typ)} is not a repeatable stage: it is not an nn.Sequential of "
                       f"blocks and {parent} an nn.Sequential. Depth keys name an nn.Sequential of blocks "
                       "('layer1') or a block / conv inside one ('layer1.0', 'features.3')")
        current, form = 1, "block"
        if idx.is_leaf(key):
            if not idx.is_plain_conv(key):
                raise _err(key, f"names a {typ.__name__} inside the flat Sequential {container!r}; name a Conv to "
                           "repeat its conv-bn-relu run, or a block")
            form = "conv"
    if isinstance(count, bool) or not isinstance(count, int):
        raise _err(key, f"block count must be an int, got {count!r}")
    if count < current:
        raise _err(key, f"count {count} is smaller than the current {current}; the depth pass only adds blocks")
    if form == "conv":
        units, nodes = _conv_run(gm, idx, key, container)
    else:
        units = [unit]
        path = f"{container}.{unit}"
        if path in idx.repeated:
            raise _err(key, f"block {path!r} is called more than once; a shared block cannot be repeated")
        nodes = _block_nodes(gm, idx, path)
    inp, out = _block_io(gm, key, container, units, nodes)
    ins = Insertion(key, container, units, current, count, count - current, nodes, inp, out, form)
    _check_shapes(ins)
    if not all(_num(c) for c in idx.children(container)) or len({_num(c)[0] for c in idx.children(container)}) > 1:
        raise _err(key, f"the children of {container!r} are not numbered ({idx.children(container)}); cannot "
                   "name new blocks")
    return ins


def _block_nodes(gm: fx.GraphModule, idx: _Index, path: str) -> list[fx.Node]:
    pre = path + "."
    members = set(idx.nodes.get(path, []))
    members |= {n for n in gm.graph.nodes if n.op in ("call_module", "get_attr") and
                (n.target == path or str(n.target).startswith(pre))}
    return [n for n in gm.graph.nodes if n in members]


def _conv_run(gm: fx.GraphModule, idx: _Index, key: str, container: str) -> tuple[list[str], list[fx.Node]]:
    """conv -> [BatchNorm] -> [clamping activation]: consecutive sibling modules of a flat Sequential."""
    calls = idx.leaves.get(key, [])
    if len(calls) != 1:
        raise _err(key, f"conv {key!r} is called {len(calls)} times; a shared layer cannot be repeated")
    run = [calls[0]]
    seen_bn = False
    while True:
        users = list(run[-1].users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].target.rpartition(".")[0] != container:
            break
        if is_batchnorm(row_of(gm, users[0])) and not seen_bn:
            seen_bn = True
            run.append(users[0])
            continue
        if clamp(gm, users[0]) is not None:
            run.append(users[0])
        break
    units = [n.target.rpartition(".")[2] for n in run]
    nums = [_num(u)[1] if _num(u) else -1 for u in units]
    if len({_num(u)[0] if _num(u) else None for u in units}) != 1 or nums != list(range(nums[0], nums[0] + len(nums))):
        raise _err(key, f"the conv run {[n.target for n in run]} is not a run of consecutively numbered children "
                   f"of {container!r}")
    return units, run


def _block_io(gm: fx.GraphModule, key: str, container: str, units: list[str],
              nodes: list[fx.Node]) -> tuple[fx.Node, fx.Node]:
    block = f"{container}.{units[0]}" if len(units) == 1 else f"{container}.{units[0]}..{units[-1]}"
    if not nodes:
        raise _err(key, f"block {block!r} has no nodes in the graph")
    members = set(nodes)
    prefixes = tuple(f"{container}.{u}" for u in units)
    for n in nodes:  # get_attr of a constant outside the block is shared by the copies; modules must be inside
        inside = n.target in prefixes or str(n.target).startswith(tuple(p + "." for p in prefixes))
        if n.op == "call_module" and not inside:
            raise _err(key, f"block {block!r} calls module {n.target!r}, which lives outside the block")
    ins = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in members))
    if len(ins) != 1:
        raise _err(key, f"block {block!r} reads {len(ins)} values from outside ({[a.name for a in ins]}); only "
                   "single-input blocks can be repeated")
    outs = [n for n in nodes if any(u not in members for u in n.users)]
    if len(outs) != 1:
        raise _err(key, f"block {block!r} has {len(outs)} outputs ({[o.name for o in outs]}); only single-output "
                   "blocks can be repeated")
    last = reads(gm, outs[0], None, members)  # an in-place op inside the block may still write the output
    early = [u.name for u in outs[0].users if u not in members and u < last]
    if early:
        raise _err(key, f"block {block!r}: {early} read its output {outs[0].name} before the in-place {last.name} "
                   "inside the block writes it")
    return ins[0], outs[0]


def _shape(n: fx.Node) -> Any:
    return n.meta.get(META, {}).get("shape")


def _check_shapes(ins: Insertion) -> None:
    si, so = _shape(ins.inp), _shape(ins.out)
    if si is None or so is None or si != so:
        raise _err(ins.key, f"block {ins.block} maps {si} -> {so}; only blocks whose input and output shapes "
                   "are equal (stride 1, same channels) can be repeated")


__all__ = ["Insertion", "resolve"]
