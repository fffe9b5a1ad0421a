"""Analysis context: per-node labels, module/parameter uses and baked literals recorded while walking a graph."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from fxscale.analysis.labels import Atoms, Incompatible, Label
from fxscale.tracing import META


@dataclass
class Use:
    """How one module or get_attr parameter's tensors are indexed by channel labels."""

    name: str
    kind: str  # "conv", "linear", "bn", "ln", "gn", "mha", "param", ...
    params: dict[str, dict[int, tuple[Label, str]]] = field(default_factory=dict)  # pname -> dim -> (label, mode)
    inputs: list = field(default_factory=list)   # labels read (consumer side)
    outputs: list = field(default_factory=list)  # labels written
    producer: bool = False  # its output label is a fresh space it defines
    extra: dict[str, Any] = field(default_factory=dict)


class Ctx:
    """Mutable state of one analysis run (one instance per analyze() call, never global)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.atoms = Atoms()
        self.uses: dict[str, Use] = {}
        self.literals: dict[str, list] = {}  # node name -> [(where, index, label)]
        # node name -> [(operand index, label)]: a contraction of two activations over `label` (q @ k^T); preserve
        # growth zeroes the replicated channels of that operand there, so each channel counts once
        self.contractions: dict[str, list] = {}
        self.notes: list[str] = []
        self.tag = ""  # "train:" while walking the train-mode graph (prefixes literal keys)

    # ---- node accessors -------------------------------------------------------------------
    @staticmethod
    def shape(node: Any) -> Any:
        """Shape(s) recorded by tracing for a node (None for non-tensors)."""
        return node.meta.get(META, {}).get("shape") if isinstance(node, fx.Node) else None

    @staticmethod
    def lab(node: Any) -> Any:
        """Channel labels of a node's value (list per dim, nested for tuples)."""
        return node.meta.get(META, {}).get("labels") if isinstance(node, fx.Node) else None

    def set_lab(self, node: fx.Node, labels: Any) -> None:
        """Store a node's labels."""
        node.meta.setdefault(META, {})["labels"] = labels

    # ---- helpers ------------------------------------------------------------------------------
    def need(self, label: Label, size: int, why: str) -> tuple:
        """A label for a dim that must be a channel space; a frozen fresh atom when unknown."""
        if label is not None:
            return label
        lab = self.atoms.label(size, why)
        self.atoms.freeze(lab, why)
        return lab

    def tie(self, a: Label, b: Label, where: str) -> None:
        """Identity-tie two labels; on mismatch freeze both with a reason naming `where`."""
        if a is None or b is None:
            if a is not None or b is not None:
                self.atoms.freeze(a or b, f"{where}: tied to a non-channel dimension")
            return
        try:
            self.atoms.tie(a, b)
        except Incompatible as e:
            self.atoms.freeze(a, f"{where}: {e}")
            self.atoms.freeze(b, f"{where}: {e}")

    def freeze_value(self, labels: Any, reason: str) -> None:
        """Freeze every channel label inside a node value (list = one tensor's dims, tuple = container)."""
        if isinstance(labels, list):
            for lab in labels:
                if lab is not None:
                    self.atoms.freeze(lab, reason)
        elif isinstance(labels, (tuple, dict)):
            for item in (labels.values() if isinstance(labels, dict) else labels):
                self.freeze_value(item, reason)

    def use(self, name: str, kind: str) -> tuple[Use, bool]:
        """The Use record of a module (created on first call; second value True if it existed)."""
        if name in self.uses:
            return self.uses[name], True
        u = Use(name, kind)
        self.uses[name] = u
        return u, False

    def contraction(self, node: fx.Node, operand: int, label: Label) -> None:
        """Record that `node` sums over `label` between two activations (operand `operand` gets the fix-up)."""
        if label is not None:
            self.contractions.setdefault(self.tag + node.name, []).append((operand, label))

    def literal(self, node: fx.Node, where: str, index: Any, label: Label) -> None:
        """Record that an int literal in `node`'s args equals the width of `label`."""
        self.literals.setdefault(self.tag + node.name, []).append((where, index, label))


def is_tensor_labels(x: Any) -> bool:
    """True if x is a per-dim label list of one tensor."""
    return isinstance(x, list)
