"""Cut a site out of the teacher as its own GraphModule, and swap chosen candidates back in as submodules.

`SwapSites` is a Pass (requires -> call -> ensures): it replaces each site's nodes by one call_module node on a
submodule ``hant_<i>`` taking the site's entry. `assemble` runs it under the PassManager, which lints, recompiles
and runs the forward and output-shape verification rules (fxscale/passes/verify.py) on the student.
"""
from __future__ import annotations

from typing import ClassVar, Mapping, Optional

import torch
import torch.fx as fx
from torch import nn

from fxscale.api import copy_graph_module
from fxscale.errors import VerificationError
from fxscale.hant.sites import Site
from fxscale.passes.base import Pass, PassManager, PassResult
from fxscale.tracing import META


def extract_site(gm: fx.GraphModule, site: Site) -> fx.GraphModule:
    """The site's nodes as a standalone GraphModule taking the entry tensor and returning the site's output."""
    nodes = {n.name: n for n in gm.graph.nodes}
    g = fx.Graph()
    env: dict[fx.Node, fx.Node] = {nodes[site.entry]: g.placeholder("x")}
    for name in site.nodes:
        n = nodes[name]
        for u in n.all_input_nodes:
            if u not in env and u.op == "get_attr":
                env[u] = g.node_copy(u, env.__getitem__)
        env[n] = g.node_copy(n, env.__getitem__)
    g.output(env[nodes[site.output]])
    sub = fx.GraphModule(gm, g, class_name="HantSite")
    sub.eval()
    return sub


class SwapSites(Pass):
    """Replace each named site's region by one submodule (the candidate) called on the site's entry."""

    name: ClassVar[str] = "hant_swap"

    def __init__(self, sites: Mapping[str, Site], modules: Mapping[str, nn.Module]) -> None:
        self.sites, self.modules = sites, modules

    def call(self, gm: fx.GraphModule) -> PassResult:
        nodes = {n.name: n for n in gm.graph.nodes}
        swapped = {}
        for i, (name, module) in enumerate(self.modules.items()):
            site = self.sites[name]
            missing = [v for v in (site.entry, site.output, *site.nodes) if v not in nodes]
            if missing:
                raise VerificationError(f"site {name!r}: node {missing[0]!r} is not in the graph (sites overlap, or "
                                        f"they were found on another model)")
            target = f"hant_{i}"
            gm.add_submodule(target, module)
            out = nodes[site.output]
            with gm.graph.inserting_after(out):
                new = gm.graph.call_module(target, (nodes[site.entry],))
            new.meta[META] = dict(out.meta.get(META, {}))
            out.replace_all_uses_with(new)
            for v in reversed(site.nodes):
                gm.graph.erase_node(nodes.pop(v))
            nodes[site.output] = new  # a later site whose entry was this output now starts at the submodule
            swapped[name] = target
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        return PassResult(gm, bool(swapped), {"swapped": swapped})


def _rules() -> list:
    from fxscale.passes.verify import RULES
    return [r for r in RULES if r.name in ("forward", "output_shapes")]


def assemble(teacher: fx.GraphModule, sites: Mapping[str, Site], modules: Mapping[str, nn.Module]) -> fx.GraphModule:
    """A verified copy of the teacher with `modules[site]` in place of each named site (teacher not mutated)."""
    unknown = sorted(set(modules) - set(sites))
    if unknown:
        raise VerificationError(f"unknown site {unknown[0]!r}; sites: {', '.join(sites)}")
    student = copy_graph_module(teacher)
    result = PassManager([SwapSites(sites, modules)], rules=_rules())(student)
    student = result.graph_module
    student.meta[META]["hant"] = dict(result.report.get("hant_swap", {}))
    return student.eval()


def swap_one(teacher: fx.GraphModule, site: Site, module: nn.Module,
             sites: Optional[Mapping[str, Site]] = None) -> fx.GraphModule:
    """The teacher with only `site` replaced by `module` (verified)."""
    return assemble(teacher, {site.name: site} if sites is None else sites, {site.name: module})


def fold_batchnorm(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy with every Conv -> BatchNorm pair folded into the conv (eval-mode numerics unchanged; torch.fx's fuse,
    which retraces the model, so the copy carries no fxscale metadata: use it for export)."""
    from torch.fx.experimental.optimization import fuse
    with torch.no_grad():
        return fuse(gm, inplace=False)


__all__ = ["SwapSites", "assemble", "extract_site", "fold_batchnorm", "swap_one"]
