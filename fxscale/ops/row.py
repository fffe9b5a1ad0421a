"""One row per op: what every pass needs to know about a module type, function or tensor method."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

Form = Literal["module", "function", "method"]
# How an op maps spatial sizes (resolution pass): "same" keeps them, "pool" derives them from its own
# arguments (kernel/stride/output size), "view" takes them from size literals, "none" has no spatial dims.
Spatial = Literal["same", "pool", "view", "none"]

_KIND = re.compile(r"^(?P<family>[a-z_]+?)(?:_k(?P<k>\d+))?$")


@dataclass(frozen=True, order=True)
class KernelKind:
    """The kernel family a layer runs as on a device (latency predictor key), with a conv's kernel size."""

    family: str  # conv, dwconv, gconv, convT, linear, matmul, attention, norm, elementwise, pool, gpool, ...
    k: int = 0   # kernel size of conv families (0 elsewhere)

    def __str__(self) -> str:
        return f"{self.family}_k{self.k}" if self.k else self.family

    @classmethod
    def parse(cls, text: str) -> "KernelKind":
        """Inverse of str(): 'conv_k3' -> KernelKind('conv', 3); 'norm' -> KernelKind('norm')."""
        m = _KIND.match(str(text))
        if m is None:
            raise ValueError(f"not a kernel kind: {text!r}")
        return cls(m.group("family"), int(m.group("k") or 0))

    @property
    def is_conv(self) -> bool:
        return self.family in CONV_FAMILIES

    @property
    def has_macs(self) -> bool:
        """Whether layers of this kind do multiply-accumulates (the rest only move bytes)."""
        return self.family in MAC_FAMILIES

    @property
    def moves_nothing(self) -> bool:
        """Views and metadata ops: no kernel runs."""
        return self.family == "view"


CONV_FAMILIES = frozenset({"conv", "dwconv", "gconv", "convT"})
MAC_FAMILIES = CONV_FAMILIES | {"linear", "matmul", "attention"}


@dataclass(frozen=True)
class OpRow:
    """Everything fxscale knows about one op (a set of keys of one form that behave alike).

    rule:   channel rule, ``rule(ctx, node, mod)`` for modules and ``rule(ctx, node)`` otherwise.
    cost:   cost formula ``(mod_or_node, input shapes, output shape) -> (kind, MACs)``; None means
            ``kind`` with no MACs (bytes moved only).
    arith:  the arithmetic of a broadcasting binary op ("add", "sub", "mul", "div", "max", "min", "where").
    zero:   f(0) == 0 elementwise, so an identity-initialised block stays zero through it (depth pass).
    layout: moves or relabels data only (views, copies, dtype casts): an identity for values.
    spatial: how spatial sizes map (resolution pass).
    patch:  for modules, sets size attributes (in_channels, num_features, ...) from the resized tensors.
    """

    name: str
    form: Form
    keys: tuple[Any, ...]
    rule: Callable[..., Any]
    kind: str = "other"
    cost: Optional[Callable[..., tuple[str, int]]] = None
    arith: Optional[str] = None
    zero: bool = False
    layout: bool = False
    spatial: Spatial = "same"
    patch: Optional[Callable[..., None]] = None
    doc: str = ""

    @property
    def binary(self) -> bool:
        """Combines several tensor operands that broadcast against each other."""
        return self.arith is not None

    def cost_of(self, target: Any, ins: list, out: tuple) -> tuple[str, int]:
        """(kernel kind, MACs) of one call."""
        return self.cost(target, ins, out) if self.cost is not None else (self.kind, 0)


__all__ = ["OpRow", "KernelKind", "Form", "Spatial", "CONV_FAMILIES", "MAC_FAMILIES"]
