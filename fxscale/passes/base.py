"""Pass infrastructure in the shape of torch.fx's PassBase / PassManager: GraphModule in, PassResult out.

A pass's ``__call__`` runs ``requires`` -> ``call`` -> ``ensures``. The PassManager runs passes in order; after
each pass that modified the graph it lints and recompiles (the graph and, when there is one, the train-mode
graph), and at the end it runs the verification rules (``fxscale.passes.verify.RULES``) once. Analysis passes
never mutate; transformation passes work in place on the GraphModule they are given (``transform`` hands them
a copy of the user's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional, Sequence

import torch.fx as fx

from fxscale.errors import VerificationError
from fxscale.tracing import META


@dataclass(frozen=True)
class PassResult:
    """What a pass (or the whole pipeline) returns."""

    graph_module: fx.GraphModule
    modified: bool
    report: Mapping[str, Any] = field(default_factory=dict)


class Pass:
    """Base class of fxscale passes: subclasses set ``name`` and implement ``call``."""

    name: ClassVar[str] = "pass"

    def requires(self, gm: fx.GraphModule) -> None:
        """Preconditions on the input graph; raise an fxscale error naming what is missing."""
        if META not in getattr(gm, "meta", {}):
            raise VerificationError(f"pass {self.name} needs a GraphModule from fxscale.trace")

    def call(self, gm: fx.GraphModule) -> PassResult:
        raise NotImplementedError

    def ensures(self, gm: fx.GraphModule) -> None:
        """Postconditions on the output graph (the manager's verification rules run at the end)."""

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        self.requires(gm)
        result = self.call(gm)
        self.ensures(result.graph_module)
        return result


def cleanup(gm: fx.GraphModule) -> None:
    """Lint and recompile a graph and its train-mode graph (what the manager does after every pass)."""
    graphs = [gm]
    tgm = gm.meta.get(META, {}).get("train_gm")
    if tgm is not None:
        graphs.append(tgm)
    for g in graphs:
        try:
            g.graph.lint()
            g.recompile()
        except Exception as e:  # noqa: BLE001 - any lint failure is a broken pass
            raise VerificationError(f"graph lint failed: {e}") from e


class PassManager:
    """Run passes in order, clean up after each, verify once at the end.

    ``context`` is handed to the verification rules (e.g. the ChannelGraph and channel maps for the static
    parameter-shape check); ``rules`` defaults to every rule in ``fxscale.passes.verify.RULES``.
    """

    def __init__(self, passes: Sequence[Pass], *, context: Optional[Mapping[str, Any]] = None,
                 rules: Optional[Sequence[Any]] = None) -> None:
        self.passes = list(passes)
        self.context = dict(context or {})
        self.rules = rules

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        from fxscale.passes.verify import RULES, run_rules
        report: dict[str, Any] = {}
        modified = False
        dirty = True  # the caller may hand over a graph it edited
        for p in self.passes:
            result = p(gm)
            gm = result.graph_module
            if result.modified:
                cleanup(gm)
                modified, dirty = True, False
                if result.report:
                    report[p.name] = dict(result.report)
        if dirty:
            cleanup(gm)
        run_rules(gm, self.rules if self.rules is not None else RULES, self.context)
        return PassResult(gm, modified, report)


__all__ = ["Pass", "PassResult", "PassManager", "cleanup"]
