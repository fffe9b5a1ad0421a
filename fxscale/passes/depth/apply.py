"""The rewrite: chain identity-initialised copies of each resolved block into the graph, renumber, verify."""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from typing import Any, Callable, Mapping

import torch
import torch.fx as fx
from torch import nn

from fxscale.errors import PlanError
from fxscale.passes.depth.facts import INF, reads
from fxscale.passes.depth.index import STACK, _num
from fxscale.passes.depth.plan import plan_depths
from fxscale.passes.depth.resolve import Insertion
from fxscale.tracing import META, propagate_shapes

_TEMP = "_fxscale_depth_copy"
_REL_TOL = 1e-4  # safety net: relative output change tolerated after an identity-initialised depth change


def _apply(gm: fx.GraphModule, target: str, action: str) -> None:
    with torch.no_grad():
        if action == "zero_param":
            _get_attr(gm, target).zero_()
            return
        m = gm.get_submodule(target)
        if action == "zero":
            m.weight.zero_()
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        elif action == "dirac":
            nn.init.dirac_(m.weight, groups=m.groups)
            if m.bias is not None:
                m.bias.zero_()
        elif action == "bn_identity":
            m.running_mean.zero_()
            if m.weight is not None:
                m.running_var.fill_(1.0)
                m.weight.fill_(math.sqrt(1.0 + m.eps))
                m.bias.zero_()
            else:
                m.running_var.fill_(1.0 - m.eps)
        else:  # pragma: no cover - internal
            raise ValueError(action)


def _get_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for p in target.split("."):
        obj = getattr(obj, p)
    return obj


def _reinit(m: nn.Module) -> None:
    for sub in m.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
        if hasattr(sub, "reset_running_stats"):
            sub.reset_running_stats()


def _rewrite(path: str, container: str, mapping: Mapping[str, str]) -> str:
    """Rename child `c` of `container` in a module path (keeps a trailing '@N' call suffix)."""
    pre = container + "." if container else ""
    if not path.startswith(pre):
        return path
    rest = path[len(pre):]
    head, dot, tail = rest.partition(".")
    name, at, call = head.partition("@")
    if name not in mapping:
        return path
    return pre + mapping[name] + at + call + dot + tail


def _rewrite_node(n: fx.Node, container: str, mapping: Mapping[str, str]) -> None:
    if n.op in ("call_module", "get_attr"):
        n.target = _rewrite(n.target, container, mapping)
    stack = n.meta.get(STACK)
    if stack:  # replaced, never mutated: fx shares node.meta dicts between deep copies of a GraphModule
        n.meta[STACK] = OrderedDict(
            (_rewrite(k, container, mapping),
             (_rewrite(v[0], container, mapping),) + tuple(v[1:]) if isinstance(v, tuple) and v else v)
            for k, v in stack.items())


def _single_input(nodes: list[fx.Node]) -> fx.Node:
    members = set(nodes)
    return next(a for n in nodes for a in n.all_input_nodes if a not in members)


def _insert_copies(gm: fx.GraphModule, ins: Insertion, init: str, serial: list[int]) -> list[str]:
    """Register deep copies of the block's units under temporary names and chain their nodes after the block."""
    graph = gm.graph
    parent = gm.get_submodule(ins.container)
    inp = _single_input(ins.nodes)  # re-read: an earlier insertion may have rewired this block's input
    members = set(ins.nodes)
    prev, cursor, temps = ins.out, reads(gm, ins.out, None, members), []  # after in-place ops writing the output
    ext_users = [u for u in ins.out.users if u not in members]
    for _ in range(ins.copies):
        mapping = {}
        for u in ins.units:
            serial[0] += 1
            temp = f"{_TEMP}{serial[0]}"
            parent.add_module(temp, copy.deepcopy(parent._modules[u]))
            mapping[u] = temp
            temps.append(temp)
        for target, action in ins.recipe:
            _apply(gm, _rewrite(target, ins.container, mapping), action)
        if init == "reinit":
            for u in ins.units:
                _reinit(parent._modules[mapping[u]])
        env = {inp: prev}
        for n in ins.nodes:
            with graph.inserting_after(cursor):
                new = graph.node_copy(n, lambda a: env[a])
            new.meta = dict(n.meta)
            if META in n.meta:
                new.meta[META] = dict(n.meta[META])
            _rewrite_node(new, ins.container, mapping)
            env[n] = cursor = new
        prev = env[ins.out]
    for u in ext_users:
        u.replace_input_with(ins.out, prev)
    return temps


def _renumber(gm: fx.GraphModule, container: str, inserted: Mapping[str, list[str]]) -> dict[str, str]:
    """Give the original children and the copies after each anchor consecutive numbers, in model order."""
    parent = gm.get_submodule(container)
    temps = {t for ts in inserted.values() for t in ts}
    originals = [c for c in parent._modules if c not in temps]
    numbered = sorted(((_num(c), c) for c in originals), key=lambda x: x[0][1])
    prefix = numbered[0][0][0] if numbered else ""
    mapping, od, offset = {}, OrderedDict(), 0
    for (_p, i), name in numbered:
        mapping[name] = f"{prefix}{i + offset}"
        od[mapping[name]] = parent._modules[name]
        for t in inserted.get(name, []):
            offset += 1
            mapping[t] = f"{prefix}{i + offset}"
            od[mapping[t]] = parent._modules[t]
    parent._modules.clear()
    parent._modules.update(od)
    for n in gm.graph.nodes:
        _rewrite_node(n, container, mapping)
    return mapping


def _rename_nodes(gm: fx.GraphModule) -> None:
    """Rebuild the graph so module-calling nodes are named after their (renumbered) targets, as fx does."""
    old = gm.graph
    new = fx.Graph(tracer_cls=old._tracer_cls, tracer_extras=old._tracer_extras)
    new._codegen = copy.deepcopy(old._codegen)
    env: dict[fx.Node, fx.Node] = {}
    for n in old.nodes:
        name = n.target.replace(".", "_") if n.op in ("call_module", "get_attr") else n.name
        m = new.create_node(n.op, n.target, fx.map_arg(n.args, env.__getitem__),
                            fx.map_arg(n.kwargs, env.__getitem__), name=name, type_expr=n.type)
        m.meta = n.meta
        env[n] = m
    gm.graph = new


def _flat_tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat_tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat_tensors(v)]
    return []


def _eval_forward(gm: fx.GraphModule, inputs: tuple, fn: Callable) -> Any:
    was = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            return fn(gm, *inputs)
    finally:
        gm.train(was)


def depth_pass(gm: fx.GraphModule, depths: Mapping[str, int], init: str = "preserve", seed: int = 0
               ) -> dict[str, Any]:
    """Repeat blocks of `gm` in place as `depths` asks (see the module docstring); returns a report.

    Everything is resolved and checked before the graph changes. Afterwards the graph is linted and
    recompiled, shapes are propagated again (so fxscale.analyze works on the result) and, unless
    init == "reinit", the outputs are checked against the shallower model (eval mode). The report has
    one entry per changed key under "blocks" (stage, form, from, to, repeated block, added module paths,
    identity init, added parameters) and "max_rel_err".
    """
    from fxscale.tracing import example_inputs
    if not depths:
        return {}
    inputs = example_inputs(gm)
    before = _eval_forward(gm, inputs, propagate_shapes)  # fresh shapes after the width/resolution passes
    plan = plan_depths(gm, depths, init)
    if not plan:
        return {}
    blocks: dict[str, Any] = {}
    temps: dict[str, list[str]] = {}
    serial = [0]
    per_container: dict[str, dict[str, list[str]]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)  # only used by init="reinit"
        for ins in plan:
            params = ins.copies * sum(p.numel() for u in ins.units
                                      for p in gm.get_submodule(f"{ins.container}.{u}").parameters())
            temps[ins.key] = _insert_copies(gm, ins, init, serial)
            per_container.setdefault(ins.container, {})[ins.units[-1]] = temps[ins.key]
            blocks[ins.key] = {"stage": ins.container, "form": ins.form, "from": ins.current, "to": ins.count,
                               "block": [f"{ins.container}.{u}" for u in ins.units],
                               "identity": ins.identity if init != "reinit" else "reinit", "params": params,
                               "added": [f"{ins.container}.{t}" for t in temps[ins.key]]}
    for container in sorted(per_container, key=lambda c: -c.count(".")):  # inner stages first
        mapping = _renumber(gm, container, per_container[container])
        for rep in blocks.values():
            rep["added"] = [_rewrite(a, container, mapping) for a in rep["added"]]
    _rename_nodes(gm)
    gm.graph.lint()
    gm.recompile()
    after = _eval_forward(gm, inputs, propagate_shapes)
    report: dict[str, Any] = {"blocks": blocks}
    if init != "reinit":
        err = _rel_err(before, after)
        if err > _REL_TOL:
            raise PlanError(f"plan key 'depths': the deeper model does not compute the same function (relative "
                            f"error {err:.2e}); the identity init of {sorted(blocks)} failed")
        report["max_rel_err"] = err
    return report


def _rel_err(a: Any, b: Any) -> float:
    ta, tb = _flat_tensors(a), _flat_tensors(b)
    if len(ta) != len(tb):
        return INF
    worst = 0.0
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            return INF
        if not x.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(x, y) else INF)
            continue
        scale = float(x.abs().max()) if x.numel() else 0.0
        diff = float((x - y).abs().max()) if x.numel() else 0.0
        worst = max(worst, diff / max(scale, 1e-12))
    return worst


__all__ = ["depth_pass"]
