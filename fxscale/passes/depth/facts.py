"""What the depth pass asks the op table (fxscale.ops) about a node, and which node holds the value it reads.

Every op fact here comes from the node's OpRow: residual adds and gates are ``arith`` "add" / "mul",
zero-keeping ops have ``zero``, pure data movement has ``layout``, clamps and identities have ``identity_on``,
bounded activations have ``bounds``. Row names pick out the layers whose parameters can zero their output
(norms, convs, linear), the ones that can be set to the identity (batchnorm, conv) and the max/average pools.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch.fx as fx
from torch import nn

from fxscale.ops import OpRow, module_row, node_row
from fxscale.ops.row import Interval

INF = math.inf
ALL: Interval = (-INF, INF)
_NORMS = ("batchnorm", "groupnorm", "layernorm")  # output 0 once gamma and beta are 0
_CONVS = ("conv", "conv_transpose")
_WEIGHTED = _CONVS + ("linear",)  # output 0 once weight and bias are 0
_POOLS = ("pool_module", "pool")  # every output is a max or a mean of input values


def mod(gm: fx.GraphModule, n: fx.Node) -> Optional[nn.Module]:
    return gm.get_submodule(n.target) if n.op == "call_module" else None


def row_of(gm: fx.GraphModule, n: fx.Node) -> Optional[OpRow]:
    """The op-table row of a call node (UNKNOWN for unknown functions/methods); None otherwise."""
    if n.op == "call_module":
        return module_row(gm.get_submodule(n.target))
    return node_row(n)


def is_norm(row: Optional[OpRow]) -> bool:
    """A norm module (BatchNorm/InstanceNorm, GroupNorm, LayerNorm): zero gamma and beta give 0."""
    return row is not None and row.name in _NORMS


def is_weighted(row: Optional[OpRow]) -> bool:
    """A conv, transposed conv or linear module: zero weight and bias give 0."""
    return row is not None and row.name in _WEIGHTED


def is_conv(row: Optional[OpRow]) -> bool:
    return row is not None and row.name in _CONVS


def is_plain_conv(row: Optional[OpRow]) -> bool:
    """Conv1d/2d/3d (not transposed): a Dirac init makes it the identity when shapes allow."""
    return row is not None and row.name == "conv"


def is_batchnorm(row: Optional[OpRow]) -> bool:
    """BatchNorm/InstanceNorm: with running statistics, an eval-mode per-channel affine map."""
    return row is not None and row.name == "batchnorm"


def is_pool(row: Optional[OpRow]) -> bool:
    return row is not None and row.name in _POOLS


def identity_on(gm: fx.GraphModule, n: fx.Node, row: Optional[OpRow] = None) -> Optional[Interval]:
    """The interval on which node `n` passes values through unchanged (clamps, identities, reshapes); else None."""
    row = row if row is not None else row_of(gm, n)
    spec = row.identity_on if row is not None else None
    if spec is None or isinstance(spec, tuple):
        return spec
    return spec(mod(gm, n) if n.op == "call_module" else n)


def clamp(gm: fx.GraphModule, n: fx.Node) -> Optional[Interval]:
    """A bounded identity interval: the op clamps to it (ReLU, ReLU6, Hardtanh)."""
    r = identity_on(gm, n)
    return r if r is not None and r != ALL else None


def operand(n: fx.Node) -> Any:
    """The first operand of a call: args[0], or the first input node of a keyword-only call."""
    if n.args:
        return n.args[0]
    return n.all_input_nodes[0] if n.all_input_nodes else None


def writes(gm: fx.GraphModule, n: fx.Node) -> Optional[fx.Node]:
    """The node whose tensor `n` overwrites in place, or None.

    In-place ops follow PyTorch's convention: methods and functions named with a trailing underscore
    (``out.add_(x)``, ``torch.relu_``), ``inplace=True`` keywords and modules with ``inplace = True``.
    """
    first = n.args[0] if n.args else None
    if not isinstance(first, fx.Node):
        return None
    if n.op == "call_module":
        inplace = getattr(gm.get_submodule(n.target), "inplace", False) is True
    elif n.op in ("call_method", "call_function"):
        name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
        inplace = (isinstance(name, str) and name.endswith("_") and not name.startswith("_")) or (
            n.kwargs.get("inplace") is True)
    else:
        return None
    return first if inplace else None


def reads(gm: fx.GraphModule, v: Any, reader: Optional[fx.Node] = None, within: Optional[set] = None) -> Any:
    """The node holding `v`'s tensor when `reader` runs (after everything if None): `v`, or the last in-place op
    on that tensor (in-place ops on in-place ops included) that runs before `reader` and lies in `within`.

    ``out.add_(x); return relu(out)`` traces relu as reading ``out``: it reads the add_.
    """
    if not isinstance(v, fx.Node):
        return v
    best, todo = v, [v]
    while todo:
        a = todo.pop()
        for u in a.users:
            if (reader is None or u < reader) and (within is None or u in within) and writes(gm, u) is a:
                todo.append(u)
                best = max(best, u)
    return best


def same_tensor(gm: fx.GraphModule, a: Any, b: fx.Node) -> bool:
    """Whether node `a` is `b` or an in-place op (or a chain of them) that wrote `b`'s tensor."""
    while isinstance(a, fx.Node) and a is not b:
        a = writes(gm, a)
    return a is b


__all__ = ["ALL", "INF", "row_of", "identity_on", "clamp", "reads", "same_tensor", "writes", "operand", "is_norm",
           "is_weighted", "is_conv", "is_plain_conv", "is_batchnorm", "is_pool"]
