"""Identity initialisation of a block copy: zero a residual branch, or make a conv-bn-relu chain the identity."""
from __future__ import annotations

from typing import Any, Optional

import torch.fx as fx
from torch import nn

from fxscale.ops import OpRow
from fxscale.passes.depth.facts import (
    ALL,
    identity_on,
    is_batchnorm,
    is_conv,
    is_norm,
    is_plain_conv,
    is_weighted,
    mod,
    operand,
    reads,
    row_of,
    same_tensor,
)
from fxscale.passes.depth.ranges import value_range, within
from fxscale.passes.depth.resolve import Insertion, _err


def _fn_name(n: fx.Node) -> str:
    return getattr(n.target, "__name__", str(n.target))


def _zeroable(gm: fx.GraphModule, n: Any, members: set, inp: fx.Node, prefixes: tuple, depth: int = 0
              ) -> Optional[tuple[str, str, str]]:
    """(target, action, what) that makes the value of branch node `n` zero, walking back through ops f(0)=0."""
    if not isinstance(n, fx.Node) or n not in members or n is inp or depth > 64:
        return None

    def back(a: Any) -> Optional[tuple[str, str, str]]:
        return _zeroable(gm, reads(gm, a, n), members, inp, prefixes, depth + 1)

    if n.op == "get_attr":  # only the block's own parameters (a shared constant would change other blocks)
        if not n.target.startswith(prefixes):
            return None
        return (n.target, "zero_param", f"zeroed the layer-scale parameter {n.target}")
    row = row_of(gm, n)
    if row is None:
        return None
    m = mod(gm, n)
    if is_norm(row):
        if getattr(m, "weight", None) is None:
            return None
        return (n.target, "zero", f"zeroed the last norm {n.target} ({type(m).__name__} gamma and beta)")
    if is_weighted(row):
        return (n.target, "zero", f"zeroed the last {type(m).__name__} {n.target} (weight and bias)")
    if row.arith == "mul":  # a gate or layer scale: zero either factor
        args = [a for a in n.args if isinstance(a, fx.Node)]
        for a in sorted(args, key=lambda a: a.op != "get_attr"):  # layer-scale gamma first
            if a.op == "get_attr" and a not in members:
                continue
            r = back(a)
            if r is not None:
                return r
        return None
    if row.zero and isinstance(operand(n), fx.Node):  # f(0) == 0 in its (single) tensor operand
        r = identity_on(gm, n, row)
        return back(operand(n)) if r is None or r[0] <= 0.0 <= r[1] else None  # a clamp off 0 maps 0 elsewhere
    return None


def _is_add(gm: fx.GraphModule, n: fx.Node) -> bool:
    tensors = [a for a in n.args if isinstance(a, fx.Node)]
    if len(n.args) != 2 or len(tensors) != 2 or n.kwargs:
        return False
    row = row_of(gm, n)
    return row is not None and row.arith == "add"


def _residual_recipe(gm: fx.GraphModule, ins: Insertion) -> tuple[Optional[tuple], str]:
    members = set(ins.nodes)
    req = ALL
    out = n = reads(gm, ins.out, None, members)
    while n in members and not _is_add(gm, n):
        r = identity_on(gm, n)
        if r is None or len(n.all_input_nodes) != 1:
            return None, f"its output {n.name} is not an add of the block input and a branch"
        req = (max(req[0], r[0]), min(req[1], r[1]))
        n = reads(gm, n.all_input_nodes[0], n)
    if n not in members:
        return None, "its output is not an add of the block input and a branch"
    for skip, branch in (n.args, tuple(reversed(n.args))):
        skip, branch = reads(gm, skip, n), reads(gm, branch, n)
        while skip in members and identity_on(gm, skip) == ALL and len(skip.all_input_nodes) == 1:
            skip = reads(gm, skip.all_input_nodes[0], skip)
        if skip in members or not same_tensor(gm, skip, ins.inp):  # the input, or the input after in-place ops
            continue
        z = _zeroable(gm, branch, members, ins.inp, tuple(f"{ins.container}.{u}." for u in ins.units))
        if z is None:
            return None, (f"the residual branch into {n.name} does not end in a norm, layer-scale, conv or linear "
                          "that can be zeroed")
        rng = value_range(out, gm)
        if not within(rng, req):
            return None, (f"the activation after the residual add is the identity only on {req}, but the block "
                          f"output ranges over {rng}")
        return (z[0], z[1]), f"residual: {z[2]}"
    return None, f"neither input of the add {n.name} is the block input"


def _dirac_problem(m: nn.Module, row: Optional[OpRow]) -> str:
    if not is_plain_conv(row):
        return f"{type(m).__name__} is not a plain conv"
    if m.in_channels != m.out_channels:
        return f"in_channels {m.in_channels} != out_channels {m.out_channels}"
    if any(s != 1 for s in m.stride):
        return f"stride {m.stride}"
    if any(k % 2 == 0 for k in m.kernel_size):
        return f"even kernel {m.kernel_size}"
    if isinstance(m.padding, str):
        ok = m.padding == "same" or all(k == 1 for k in m.kernel_size)
    else:
        ok = all(p == d * (k // 2) for p, d, k in zip(m.padding, m.dilation, m.kernel_size))
    return "" if ok else f"padding {m.padding} does not centre kernel {m.kernel_size}"


def _chain_recipe(gm: fx.GraphModule, ins: Insertion) -> tuple[Optional[list], str]:
    members = set(ins.nodes)
    out = n = reads(gm, ins.out, None, members)
    chain: list[fx.Node] = []
    while n in members:
        if len(n.all_input_nodes) != 1:
            return None, f"it is not a single chain of layers (at {n.name})"
        chain.append(n)
        n = reads(gm, n.all_input_nodes[0], n)
    if not same_tensor(gm, n, ins.inp):
        return None, f"it is not a single chain of layers (at {n.name})"
    if set(chain) != members:
        return None, "it is not a single chain of layers (side branches)"
    recipe, req, what = [], ALL, []
    for n in reversed(chain):
        row, m = row_of(gm, n), mod(gm, n)
        if is_conv(row):
            problem = _dirac_problem(m, row)
            if problem:
                return None, f"conv {n.target} cannot be a Dirac identity ({problem})"
            recipe.append((n.target, "dirac"))
            what.append(f"Dirac {n.target}")
        elif is_batchnorm(row):
            if m.running_mean is None:
                return None, f"{type(m).__name__} {n.target} has no running statistics"
            recipe.append((n.target, "bn_identity"))
            what.append(f"identity {n.target}")
        else:
            r = identity_on(gm, n, row)
            if r is None:
                kind = type(m).__name__ if m is not None else f"{n.op} {_fn_name(n)}"
                return None, f"{n.name} ({kind}) cannot be set to the identity"
            req = (max(req[0], r[0]), min(req[1], r[1]))
    rng = value_range(out, gm)
    if not within(rng, req):
        return None, f"its activations are the identity only on {req}, but the block output ranges over {rng}"
    return recipe, "plain: " + ", ".join(what or ["pass-through"])


def identity_recipe(gm: fx.GraphModule, ins: Insertion) -> None:
    """Fill ins.recipe with the init that makes a copy of the block the identity, or raise PlanError."""
    res, why_res = _residual_recipe(gm, ins)
    if res is not None:
        ins.recipe, ins.identity = [res], why_res
        return
    chain, why_chain = _chain_recipe(gm, ins)
    if chain is not None:
        ins.recipe, ins.identity = chain, why_chain
        return
    raise _err(ins.key, f"block {ins.block} cannot be made an identity, so a copy would change the function: "
               f"not a residual block ({why_res}); not a plain conv-bn-relu chain ({why_chain}). "
               "Pass init='reinit' to add freshly initialised blocks instead")


__all__ = ["identity_recipe"]
