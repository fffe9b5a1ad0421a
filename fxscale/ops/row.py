"""One row per op: what every pass needs to know about a module type, function or tensor method."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Union

Form = Literal["module", "function", "method"]
Interval = tuple[float, float]
# How an op maps spatial sizes (resolution pass): "same" keeps them, "pool" derives them from its own
# arguments (kernel/stride/output size), "view" takes them from size literals, "none" has no spatial dims.
Spatial = Literal["same", "pool", "view", "none"]

_KIND = re.compile(r"^(?P<family>[A-Za-z_]+?)(?:_k(?P<k>\d+))?(?:_s(?P<s>\d+))?$")


@dataclass(frozen=True, order=True)
class KernelKind:
    """The kernel family a layer runs as on a device (latency predictor key), with a conv's kernel size.

    The latency predictor refines the cost model's kinds by stride (``conv_k3_s2``) and global pooling
    (``gpool``); ``base`` is the kind such a refined kind falls back to in a profile.
    """

    family: str  # conv, dwconv, gconv, convT, linear, matmul, attention, norm, elementwise, pool, gpool, ...
    k: int = 0   # kernel size of conv families (0 elsewhere)
    stride: int = 1  # the predictor's stride refinement of conv families (1 elsewhere)

    def __str__(self) -> str:
        return self.family + (f"_k{self.k}" if self.k else "") + (f"_s{self.stride}" if self.stride != 1 else "")

    @classmethod
    def parse(cls, text: str) -> "KernelKind":
        """Inverse of str(): 'conv_k3' -> KernelKind('conv', 3); 'conv_k3_s2' -> KernelKind('conv', 3, 2)."""
        m = _KIND.match(str(text))
        if m is None:
            raise ValueError(f"not a kernel kind: {text!r}")
        return cls(m.group("family"), int(m.group("k") or 0), int(m.group("s") or 1))

    @property
    def base(self) -> "KernelKind":
        """The unrefined kind: stride variants -> stride 1, gpool -> pool (a profile's fallback fit)."""
        return KernelKind("pool" if self.family == "gpool" else self.family, self.k)

    @property
    def known(self) -> bool:
        """Whether the family is one fxscale's cost model and latency predictor produce."""
        return self.family in FAMILIES

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
# every family: MAC families, the byte-moving ones (gpool is the predictor's global-pool refinement of pool)
FAMILIES = MAC_FAMILIES | {"norm", "elementwise", "pool", "gpool", "reduce", "concat", "resize", "view", "other"}


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
    identity_on: the values the op passes through unchanged and in order (depth pass): relu [0, inf),
            hardtanh [min, max] (a callable reads it from the module or call node); identities, dropout,
            contiguous and reshapes (row-major order kept) everywhere. An op that is the identity on a bounded
            interval clamps to it, so its outputs lie in it.
    bounds: an interval holding every output whatever the input (sigmoid: [0, 1]; depth pass value ranges).
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
    identity_on: Union[Interval, Callable[[Any], Interval], None] = None
    bounds: Optional[Interval] = None
    doc: str = ""

    @property
    def binary(self) -> bool:
        """Combines several tensor operands that broadcast against each other."""
        return self.arith is not None

    def cost_of(self, target: Any, ins: list, out: tuple) -> tuple[str, int]:
        """(kernel kind, MACs) of one call."""
        return self.cost(target, ins, out) if self.cost is not None else (self.kind, 0)


__all__ = ["OpRow", "KernelKind", "Form", "Interval", "Spatial", "CONV_FAMILIES", "FAMILIES", "MAC_FAMILIES"]
