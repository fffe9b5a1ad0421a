"""Inference graph-optimisation passes (Woodpecker-DL's graph optimisation) as fxscale Passes.

Every pass works in place on an eval-mode GraphModule from ``fxscale.trace`` and reports what it changed. Which
numerical check each pass must pass (exact, or ``assert_close`` with a tolerance) is declared beside it in
``fxscale.optimize.verify.PASS_RULES``; ``optimize_graph`` runs them all under that check.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from fxscale.errors import VerificationError
from fxscale.passes.base import Pass, PassResult
from fxscale.tracing import META, example_inputs

# ---- op groups, defined once ---------------------------------------------------------------------------------
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
DROPOUT_FNS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
               torch.dropout)
RANDOM_FNS = (torch.rand, torch.randn, torch.randint, torch.rand_like, torch.randn_like, torch.randint_like,
              torch.bernoulli, torch.normal, torch.multinomial, torch.randperm) + DROPOUT_FNS
ACTIVATIONS: dict[Any, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "silu", nn.GELU: "gelu", nn.Hardswish: "hardswish",
    nn.Sigmoid: "sigmoid", nn.Hardsigmoid: "hardsigmoid", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh",
    nn.Mish: "mish", F.relu: "relu", F.relu6: "relu6", F.silu: "silu", F.gelu: "gelu", F.hardswish: "hardswish",
    torch.sigmoid: "sigmoid", F.hardsigmoid: "hardsigmoid", F.leaky_relu: "leaky_relu", torch.tanh: "tanh",
    torch.relu: "relu", F.mish: "mish", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh",
}
SHAPE_METHODS = {"reshape", "view", "flatten", "squeeze", "contiguous", "permute", "transpose", "expand",
                 "expand_as", "view_as", "reshape_as"}
SHAPE_FNS = {torch.reshape: "reshape", torch.flatten: "flatten", torch.squeeze: "squeeze",
             torch.permute: "permute", torch.transpose: "transpose"}


def module_of(gm: fx.GraphModule, node: fx.Node) -> Optional[nn.Module]:
    """The submodule a call_module node calls (None for other nodes)."""
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def activation_of(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    """The activation's name when `node` is one (module, function or tensor method), else None."""
    if node.op == "call_module":
        return ACTIVATIONS.get(type(module_of(gm, node)))
    if node.op in ("call_function", "call_method"):
        try:
            return ACTIVATIONS.get(node.target)
        except TypeError:  # unhashable target
            return None
    return None


def is_conv_or_linear(gm: fx.GraphModule, node: fx.Node) -> Optional[str]:
    """"conv" / "linear" for conv and linear nodes (modules or functionals), else None."""
    if node.op == "call_module":
        m = module_of(gm, node)
        return "conv" if isinstance(m, CONV_TYPES) else "linear" if isinstance(m, nn.Linear) else None
    if node.op == "call_function":
        if node.target in (F.conv1d, F.conv2d, F.conv3d):
            return "conv"
        if node.target is F.linear:
            return "linear"
    return None


def _module_uses(gm: fx.GraphModule) -> dict[str, int]:
    uses: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            uses[n.target] = uses.get(n.target, 0) + 1
    return uses


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _values(gm: fx.GraphModule) -> dict[fx.Node, Any]:
    """The value of every node on the traced example inputs (one real forward, eval mode, no grad)."""
    values: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            values[n] = out = super().run_node(n)
            return out

    with torch.no_grad():
        Recorder(gm).run(*example_inputs(gm))
    return values


def _replace(node: fx.Node, by: fx.Node) -> None:
    node.replace_all_uses_with(by)
    node.graph.erase_node(node)


class EvalPass(Pass):
    """A graph-optimisation pass: needs an fxscale-traced GraphModule in eval mode."""

    def requires(self, gm: fx.GraphModule) -> None:
        super().requires(gm)
        if gm.training:
            raise VerificationError(f"pass {self.name} is inference-only: call .eval() on the GraphModule first")


class FoldBatchNorm(EvalPass):
    """conv -> BatchNorm and linear -> BatchNorm1d become one conv / linear (the BN node is removed)."""

    name = "fold_bn"

    def call(self, gm: fx.GraphModule) -> PassResult:
        uses = _module_uses(gm)
        folded = []
        for bn in list(gm.graph.nodes):
            m = module_of(gm, bn)
            if not isinstance(m, BN_TYPES) or not m.track_running_stats or m.running_mean is None:
                continue
            src = bn.args[0] if bn.args else None
            if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1 or uses[src.target] > 1:
                continue
            layer = module_of(gm, src)
            if isinstance(layer, CONV_TYPES) and not getattr(layer, "transposed", False):
                fused = fuse_conv_bn_eval(layer.eval(), m.eval())
            elif isinstance(layer, nn.Linear) and isinstance(m, nn.BatchNorm1d):
                if m.num_features != layer.out_features:
                    continue
                fused = fuse_linear_bn_eval(layer.eval(), m.eval())
            else:
                continue
            _set_module(gm, src.target, fused)
            _replace(bn, src)
            folded.append(f"{src.target}+{bn.target}")
        gm.delete_all_unused_submodules()
        return PassResult(gm, bool(folded), {"folded": folded})


class RemoveDropoutIdentity(EvalPass):
    """Dropout (modules and functionals: the identity at inference) and nn.Identity calls are removed."""

    name = "remove_dropout_identity"

    def call(self, gm: fx.GraphModule) -> PassResult:
        removed = []
        for n in list(gm.graph.nodes):
            m = module_of(gm, n)
            drop = isinstance(m, DROPOUT_TYPES + (nn.Identity,)) or (n.op == "call_function" and n.target in DROPOUT_FNS
                                                                    and not _training_flag(n))
            if drop and n.args and isinstance(n.args[0], fx.Node):
                removed.append(n.name)
                _replace(n, n.args[0])
        gm.delete_all_unused_submodules()
        return PassResult(gm, bool(removed), {"removed": removed})


def _training_flag(n: fx.Node) -> bool:
    """The `training` argument of a functional dropout call (its default when not given)."""
    if "training" in n.kwargs:
        return bool(n.kwargs["training"])
    if len(n.args) > 2:
        return bool(n.args[2])
    return n.target not in (F.alpha_dropout, F.feature_alpha_dropout)


class FoldConstants(EvalPass):
    """Subgraphs computed from parameters and buffers only (weight standardisation, scale products) are
    evaluated once and become one new frozen parameter each."""

    name = "fold_constants"

    def call(self, gm: fx.GraphModule) -> PassResult:
        const: set[fx.Node] = set()
        for n in gm.graph.nodes:
            if n.op == "get_attr":
                const.add(n)
            elif n.op in ("call_function", "call_method") and not n.is_impure() and n.target not in RANDOM_FNS:
                inputs = n.all_input_nodes
                if inputs and all(i in const for i in inputs):
                    const.add(n)
        roots = [n for n in gm.graph.nodes if n in const and n.op != "get_attr"
                 and any(u not in const for u in n.users)]
        if not roots:
            return PassResult(gm, False, {})
        interp = fx.Interpreter(gm)
        interp.env = {}
        with torch.no_grad():
            for n in gm.graph.nodes:
                if n in const:
                    interp.env[n] = interp.run_node(n)
        folded = []
        for i, n in enumerate(roots):
            value = interp.env[n]
            if not isinstance(value, torch.Tensor):
                continue
            name = f"_folded_{n.name}"
            while hasattr(gm, name):
                name += "_"
            gm.register_parameter(name, nn.Parameter(value.detach().clone(), requires_grad=False))
            with gm.graph.inserting_before(n):
                attr = gm.graph.get_attr(name)
            attr.meta = dict(n.meta)
            n.replace_all_uses_with(attr)
            folded.append(n.name)
        gm.graph.eliminate_dead_code()
        return PassResult(gm, bool(folded), {"folded": folded})


class DeadCodeElimination(EvalPass):
    """Nodes whose values nobody uses (and that have no side effect) are removed, then unused submodules."""

    name = "dce"

    def call(self, gm: fx.GraphModule) -> PassResult:
        before = len(gm.graph.nodes)
        changed = gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        return PassResult(gm, bool(changed), {"removed": before - len(gm.graph.nodes)})


def _shape_op(n: fx.Node) -> Optional[str]:
    if n.op == "call_method" and n.target in SHAPE_METHODS:
        return n.target
    if n.op == "call_function":
        try:
            return SHAPE_FNS.get(n.target)
        except TypeError:
            return None
    return None


def _inplace_user(n: fx.Node) -> bool:
    return any((u.op == "call_method" and str(u.target).endswith("_")) or u.kwargs.get("inplace") for u in n.users)


def _perm(n: fx.Node, ndim: int) -> Optional[tuple[int, ...]]:
    """The permutation of a permute / transpose node (None when its arguments are not constants)."""
    args = list(n.args[1:]) or list(n.kwargs.get("dims", ()))
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    if not all(isinstance(a, int) for a in args):
        return None
    if _shape_op(n) == "transpose":
        if len(args) != 2:
            return None
        p = list(range(ndim))
        a, b = (d % ndim for d in args)
        p[a], p[b] = p[b], p[a]
        return tuple(p)
    return tuple(a % ndim for a in args) if len(args) == ndim else None


class RemoveRedundantViews(EvalPass):
    """reshape / view / flatten / squeeze to the shape the tensor already has, permute (transpose) followed by its
    inverse, and .contiguous() of a tensor that already is contiguous are removed."""

    name = "remove_redundant_views"

    def call(self, gm: fx.GraphModule) -> PassResult:
        values = _values(gm)
        removed = []
        for n in list(gm.graph.nodes):
            kind = _shape_op(n)
            if kind is None or not n.args or not isinstance(n.args[0], fx.Node) or _inplace_user(n):
                continue
            src = n.args[0]
            x, y = values.get(src), values.get(n)
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                continue
            if kind in ("permute", "transpose"):
                p = _perm(n, x.dim())
                if p == tuple(range(x.dim())):
                    removed.append(n.name)
                    _replace(n, src)
                    continue
                inner = _shape_op(src)
                if inner in ("permute", "transpose") and isinstance(src.args[0], fx.Node):
                    q = _perm(src, x.dim())
                    if p is not None and q is not None and tuple(q[i] for i in p) == tuple(range(x.dim())):
                        removed.append(f"{src.name}+{n.name}")
                        _replace(n, src.args[0])
                continue
            if kind == "contiguous":
                if x.is_contiguous() and not n.kwargs and len(n.args) == 1:
                    removed.append(n.name)
                    _replace(n, src)
                continue
            if tuple(y.shape) == tuple(x.shape) and (kind != "expand" or y.stride() == x.stride()):
                removed.append(n.name)
                _replace(n, src)
        gm.graph.eliminate_dead_code()
        return PassResult(gm, bool(removed), {"removed": removed})


class MarkActivationFusion(EvalPass):
    """Record, for backends, which conv / linear is followed by which activation: node.meta["fxscale"]["fuse"] =
    {"activation": name, "node": activation node} on the conv, and ["fused_into"] = conv node on the activation.
    Nothing is rewritten (a marker pass; the numerical check is exact by construction)."""

    name = "mark_activation_fusion"

    def call(self, gm: fx.GraphModule) -> PassResult:
        marks = {}
        for n in gm.graph.nodes:
            kind = is_conv_or_linear(gm, n)
            if kind is None or len(n.users) != 1:
                continue
            (user,) = n.users
            act = activation_of(gm, user)
            if act is not None and user.args and user.args[0] is n:
                n.meta.setdefault(META, {})["fuse"] = {"kind": kind, "activation": act, "node": user.name}
                user.meta.setdefault(META, {})["fused_into"] = n.name
                marks[n.name] = act
        return PassResult(gm, False, {"marked": marks})


def fusion_markers(gm: fx.GraphModule) -> dict[str, str]:
    """{conv/linear node: activation} as recorded by MarkActivationFusion."""
    return {n.name: n.meta[META]["fuse"]["activation"] for n in gm.graph.nodes
            if isinstance(n.meta.get(META), dict) and "fuse" in n.meta[META]}


PASSES: dict[str, Callable[[], Pass]] = {
    "fold_bn": FoldBatchNorm, "remove_dropout_identity": RemoveDropoutIdentity, "fold_constants": FoldConstants,
    "remove_redundant_views": RemoveRedundantViews, "dce": DeadCodeElimination,
    "mark_activation_fusion": MarkActivationFusion,
}
DEFAULT_PASSES = ("remove_dropout_identity", "fold_bn", "fold_constants", "remove_redundant_views", "dce",
                  "mark_activation_fusion")

__all__ = ["ACTIVATIONS", "DEFAULT_PASSES", "PASSES", "DeadCodeElimination", "EvalPass", "FoldBatchNorm",
           "FoldConstants", "MarkActivationFusion", "RemoveDropoutIdentity", "RemoveRedundantViews", "activation_of",
           "fusion_markers", "is_conv_or_linear", "module_of"]
