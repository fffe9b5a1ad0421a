"""The candidate library, declared as data: spec strings in the style of timm's block strings.

A spec is ``<prefix>[_<opt>...]``; options are a letter and a number (``e6``: expansion, ``k5``: kernel, ``r2``:
MLP ratio, ``x0.5``: width factor) or a flag (``se``). Built in:

=============  ==============================================================================================
``teacher``    the site's own subgraph (a copy, its weights kept)
``skip``       identity; only where input and output shapes are equal
``cn_kK``      conv KxK (site stride) + BN + act
``ds_kK``      depthwise-separable: depthwise KxK (stride) + BN + act, pointwise 1x1 + BN
``ir_eE_kK``   inverted residual (MBConv): 1x1 expand xE, depthwise KxK, optional ``_se``, 1x1 project
``er_eE_kK``   fused MBConv (EdgeResidual): KxK expand xE (stride), 1x1 project
``mlp_rR``     token sites: LayerNorm, Linear D->R*D, GELU, Linear back
``prune_xF``   the teacher's subgraph with every inner channel group cut to F of its width by fxscale's width
               pass (init="prune", L1-norm channel selection): channel scaling in the same search space
=============  ==============================================================================================

ir/er/ds/mlp candidates add a skip connection when shapes allow (stride 1, same channels; always on token sites),
as timm's blocks do, and end with the site's activation when the site's output is an activation.
`register_candidate(prefix, factory)` adds a family: ``factory(opts, site, teacher_module) -> nn.Module``.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional

import torch
import torch.fx as fx
from torch import nn

from fxscale.errors import CandidateError, PlanError  # noqa: F401 - CandidateError re-exported here
from fxscale.hant.sites import Site

Factory = Callable[[Mapping[str, Any], Site, Optional[fx.GraphModule]], nn.Module]


_ACTS: dict[str, Callable[[], nn.Module]] = {"ReLU": nn.ReLU, "ReLU6": nn.ReLU6, "SiLU": nn.SiLU, "GELU": nn.GELU,
                                             "Hardswish": nn.Hardswish, "LeakyReLU": nn.LeakyReLU}


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """(prefix, options) of a spec: ``ir_e6_k5_se`` -> ("ir", {"e": 6.0, "k": 5, "se": True})."""
    parts = spec.strip().split("_")
    if not parts[0]:
        raise CandidateError(f"empty candidate spec {spec!r}")
    opts: dict[str, Any] = {}
    for p in parts[1:]:
        m = re.fullmatch(r"([a-z])(\d+(?:\.\d+)?)", p)
        if m:
            v = float(m.group(2))
            opts[m.group(1)] = int(v) if v.is_integer() and m.group(1) == "k" else v
        elif re.fullmatch(r"[a-z]+", p):
            opts[p] = True
        else:
            raise CandidateError(f"candidate spec {spec!r}: cannot read option {p!r} (expected e.g. e6, k3, se)")
    return parts[0], opts


# ---------------------------------------------------------------------------------------------- building blocks
class Residual(nn.Module):
    """body(x) (+ x when `skip`) then an optional activation."""

    def __init__(self, body: nn.Module, skip: bool, act: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.body, self.skip = body, skip
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return self.act(y + x if self.skip else y)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a 1/4 reduction."""

    def __init__(self, channels: int, act: Callable[[], nn.Module]) -> None:
        super().__init__()
        mid = max(1, channels // 4)
        self.fc1, self.act, self.fc2 = nn.Conv2d(channels, mid, 1), act(), nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(s))))


def _cba(cin: int, cout: int, k: int, stride: int, groups: int, act: Optional[Callable[[], nn.Module]]) -> list:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + ([act()] if act is not None else [])


def _act(site: Site) -> Callable[[], nn.Module]:
    return _ACTS.get(site.act, nn.ReLU)


def _skip_ok(site: Site) -> bool:
    return tuple(site.in_shape) == tuple(site.out_shape)


def _wrap(body: list, site: Site) -> nn.Module:
    return Residual(nn.Sequential(*body), _skip_ok(site), _act(site)() if site.act_out else None)


def _need_maps(site: Site, spec: str) -> None:
    if site.tokens:
        raise CandidateError(f"candidate {spec!r} needs a (N, C, H, W) site; site {site.name!r} works on tokens")
    if site.stride > 2:
        raise CandidateError(f"candidate {spec!r} at site {site.name!r}: stride {site.stride} is not 1 or 2")


def _hidden(site: Site, e: float) -> int:
    return max(1, int(round(site.in_channels * e)))


def make_teacher(opts: Mapping[str, Any], site: Site, teacher: Optional[fx.GraphModule]) -> nn.Module:
    if teacher is None:
        raise CandidateError(f"candidate 'teacher' at site {site.name!r} needs the teacher's site subgraph")
    import copy
    return copy.deepcopy(teacher)


def make_skip(opts: Mapping[str, Any], site: Site, teacher: Optional[fx.GraphModule]) -> nn.Module:
    if not _skip_ok(site):
        raise CandidateError(f"candidate 'skip' at site {site.name!r}: input {list(site.in_shape)} and output "
                             f"{list(site.out_shape)} differ")
    return nn.Identity()


def make_cn(opts: Mapping[str, Any], site: Site, teacher: Optional[fx.GraphModule]) -> nn.Module:
    _need_maps(site, "cn")
    k = int(opts.get("k", 3))
    return nn.Sequential(*_cba(site.in_channels, site.out_channels, k, site.stride, 1,
                               _act(site) if site.act_out else None))


def make_ds(opts: Mapping[str, Any], site: Site, teacher: Optional[fx.GraphModule]) -> nn.Module:
    _need_maps(site, "ds")
    k, c = int(opts.get("k", 3)), site.in_channels
    body = _cba(c, c, k, site.stride, c, _act(site)) + _cba(c, site.out_channels, 1, 1, 1, None)
    return _wrap(body, site)


def make_ir(opts: Mapping[str, Any], site: Site, teacher: Optional[fx.GraphModule]) -> nn.Module:
    _need_maps(site, "ir")
    k, mid, act = int(opts.get("k", 3)), _hidden(site, float(opts.get("e", 6))), _act(site)
    body = (_cba(site.in_channels, mid, 1, 1, 1, act) if mid != site.in_channels or opts.get("e", 6) != 1 else [])
    body += _cba(mid, mid, k, site.stride, mid, act)
    body += [SqueezeExcite(mid, act)] if opts.get("se") else []
    body += _cba(mid, site.out_channels, 1, 1, 1, None)
    return _wrap(body, site)


def make_er(opts: Mapping[str, Any], site: Site, teacher: Optional[fx.GraphModule]) -> nn.Module:
    _need_maps(site, "er")
    k, mid = int(opts.get("k", 3)), _hidden(site, float(opts.get("e", 4)))
    body = _cba(site.in_channels, mid, k, site.stride, 1, _act(site)) + _cba(mid, site.out_channels, 1, 1, 1, None)
    return _wrap(body, site)


def make_mlp(opts: Mapping[str, Any], site: Site, teacher: Optional[fx.GraphModule]) -> nn.Module:
    if not site.tokens or not _skip_ok(site):
        raise CandidateError(f"candidate 'mlp' at site {site.name!r}: needs a token site with equal in/out shapes")
    d = site.in_channels
    mid = max(1, int(round(d * float(opts.get("r", 2)))))
    return Residual(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, mid), nn.GELU(), nn.Linear(mid, d)), True)


def make_prune(opts: Mapping[str, Any], site: Site, teacher: Optional[fx.GraphModule]) -> nn.Module:
    """The teacher's subgraph with its scalable inner groups cut to x of their width (fxscale.transform, prune)."""
    import fxscale
    from fxscale.plan import ScalingPlan
    if teacher is None:
        raise CandidateError(f"candidate 'prune' at site {site.name!r} needs the teacher's site subgraph")
    x = float(opts.get("x", 0.5))
    if not 0 < x < 1:
        raise CandidateError(f"candidate 'prune_x{x:g}' at site {site.name!r}: the width factor must lie in (0, 1)")
    gm = fxscale.trace(teacher, torch.zeros(1, *site.in_shape[1:]))
    cg = fxscale.analyze(gm)
    widths = {}
    for g in cg.groups:
        if g.scalable:
            div = max(1, int(g.divisor or 1))
            widths[g.name] = max(div, int(round(g.width * x / div)) * div)
    widths = {k: v for k, v in widths.items() if v < next(g.width for g in cg.groups if g.name == k)}
    if not widths:
        raise CandidateError(f"candidate 'prune_x{x:g}' at site {site.name!r}: the site has no inner channel group "
                             "that can shrink")
    return fxscale.transform(gm, ScalingPlan(widths=widths), init="prune", cg=cg).eval()


_REGISTRY: dict[str, Factory] = {"teacher": make_teacher, "skip": make_skip, "cn": make_cn, "ds": make_ds,
                                 "ir": make_ir, "er": make_er, "mlp": make_mlp, "prune": make_prune}


def register_candidate(prefix: str, factory: Factory, registry: Optional[dict[str, Factory]] = None) -> None:
    """Add a candidate family `prefix` (``factory(opts, site, teacher_subgraph) -> nn.Module``)."""
    reg = _REGISTRY if registry is None else registry
    if not re.fullmatch(r"[a-z][a-z0-9]*", prefix):
        raise CandidateError(f"candidate prefix {prefix!r} must be lower-case letters and digits")
    reg[prefix] = factory


def candidate_prefixes() -> list[str]:
    """Every registered prefix."""
    return sorted(_REGISTRY)


def create_candidate(spec: str, site: Site, teacher: Optional[fx.GraphModule] = None) -> nn.Module:
    """Build candidate `spec` for `site` (eval mode) and check it maps the site's input shape to its output shape."""
    prefix, opts = parse_spec(spec)
    factory = _REGISTRY.get(prefix)
    if factory is None:
        import difflib
        near = difflib.get_close_matches(prefix, _REGISTRY, 1)
        raise CandidateError(f"unknown candidate {spec!r}" + (f"; did you mean {near[0]!r}?" if near else "") +
                             f" (registered: {', '.join(sorted(_REGISTRY))})")
    module = factory(opts, site, teacher).eval()
    with torch.no_grad():
        try:
            out = module(torch.zeros(1, *site.in_shape[1:]))
        except Exception as e:  # noqa: BLE001 - a factory that does not fit the site: name both
            raise CandidateError(f"candidate {spec!r} does not run at site {site.name!r} input "
                                 f"{list(site.in_shape)}: {type(e).__name__}: {e}") from e
    if tuple(out.shape[1:]) != tuple(site.out_shape[1:]):
        raise CandidateError(f"candidate {spec!r} at site {site.name!r} gives {list(out.shape[1:])}, the site gives "
                             f"{list(site.out_shape[1:])}")
    return module


def default_grid(site: Site, *, expansions: tuple[float, ...] = (1, 3, 6), kernels: tuple[int, ...] = (3, 5),
                 prune: tuple[float, ...] = (0.5, 0.75)) -> list[str]:
    """The default candidate specs of a site (teacher first); legality is decided by create_candidate."""
    specs = ["teacher"] + (["skip"] if _skip_ok(site) else [])
    if site.tokens:
        specs += [f"mlp_r{r:g}" for r in (0.5, 1, 2)]
    elif site.stride <= 2:
        specs += [f"cn_k{k}" for k in (1, *kernels)] + [f"ds_k{k}" for k in kernels]
        specs += [f"ir_e{e:g}_k{k}{se}" for e in expansions for k in kernels for se in ("", "_se")]
        specs += [f"er_e{e:g}_k3" for e in expansions if e > 1]
    return specs + [f"prune_x{x:g}" for x in prune]


def list_candidates(site: Site, teacher: Optional[fx.GraphModule] = None, specs: Optional[list[str]] = None
                    ) -> list[str]:
    """The specs (default_grid, or `specs`) that build legally at `site`."""
    ok = []
    for spec in (specs if specs is not None else default_grid(site)):
        try:
            create_candidate(spec, site, teacher)
        except CandidateError:
            continue
        ok.append(spec)
    return ok


__all__ = ["CandidateError", "Residual", "SqueezeExcite", "candidate_prefixes", "create_candidate", "default_grid",
           "list_candidates", "parse_spec", "register_candidate"]
