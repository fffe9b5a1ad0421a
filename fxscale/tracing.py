"""Trace a model into a torch.fx GraphModule with shape metadata under node.meta["fxscale"]."""
from __future__ import annotations

import contextlib
import inspect
import io
import operator
import sys
import warnings
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from fxscale.errors import TraceError

META = "fxscale"  # the one node.meta / gm.meta key fxscale writes


class LeafTracer(fx.Tracer):
    """fx.Tracer that also keeps user-registered module types (and torch.nn modules) as leaves, and records
    calls of `autowrap_functions` as call_function nodes without tracing into them."""

    def __init__(self, leaf_modules: Iterable[type] = (), autowrap_functions: Iterable[Callable] = ()) -> None:
        super().__init__(autowrap_functions=tuple(autowrap_functions))
        self.leaf_types = tuple(leaf_modules)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as e:  # noqa: BLE001 - annotated with the modules it was raised in, innermost first
            with contextlib.suppress(AttributeError):
                e._fxscale_modules = getattr(e, "_fxscale_modules", ()) + (type(m),)  # type: ignore[attr-defined]
            raise

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, qualname)


def _as_tuple(example_input: Any) -> tuple:
    return tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)


@dataclass(frozen=True)
class TraceOptions:
    """What the tracer keeps opaque and which forward arguments it fixes (see trace())."""

    leaf_modules: tuple[type, ...] = ()
    autowrap_functions: tuple[Callable, ...] = ()
    concrete_args: Optional[Mapping[str, Any]] = None
    n_inputs: int = 1  # graph inputs kept: the example inputs


def _trace_graph(model: nn.Module, opts: TraceOptions) -> fx.GraphModule:
    tracer = LeafTracer(opts.leaf_modules, opts.autowrap_functions)
    try:
        graph = tracer.trace(model, concrete_args=dict(opts.concrete_args) if opts.concrete_args else None)
    except Exception as e:  # noqa: BLE001 - re-raised with guidance
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}. "
            "Data-dependent control flow or unsupported Python in forward() must be hidden inside a leaf: "
            "pass leaf_modules=[TheModuleType] to fxscale.trace (or autowrap_functions=[fn] for a free "
            "function, or torch.fx.wrap it).") from e
    if opts.concrete_args:
        _drop_concrete_placeholders(graph, opts.n_inputs)
    _resolve_types(graph, model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _resolve_types(graph: fx.Graph, model: nn.Module) -> None:
    """Node types fx took from string annotations (``from __future__ import annotations``) become the objects
    they name, or None: a string type in the generated code's globals cannot be pickled on torch 2.13."""
    scope = dict(vars(sys.modules.get(type(model).__module__, torch)), torch=torch)
    for node in graph.nodes:
        if isinstance(node.type, str):
            try:
                node.type = eval(node.type, scope)  # noqa: S307 - an annotation of the model's own source
            except Exception:  # noqa: BLE001 - unresolvable: drop the annotation
                node.type = None


_CHECKS = {torch._assert, operator.eq, getattr(torch.fx._symbolic_trace, "_assert_is_none", None)}


def _drop_concrete_placeholders(graph: fx.Graph, n_inputs: int) -> None:
    """Remove the placeholders fx keeps for concrete arguments (those after the example inputs), with the checks
    fx adds on them, so that the graph's inputs are the example inputs only."""
    for ph in [n for n in graph.nodes if n.op == "placeholder"][n_inputs:]:
        users, todo = set(), list(ph.users)
        while todo:
            u = todo.pop()
            users.add(u)
            todo.extend(v for v in u.users if v not in users)
        if all(u.op == "call_function" and u.target in _CHECKS for u in users):  # else: used for real, kept
            for u in [n for n in reversed(graph.nodes) if n in users] + [ph]:
                graph.erase_node(u)


def default_concrete_args(model: nn.Module, n_inputs: int) -> dict[str, Any]:
    """Forward arguments after the example inputs that have defaults (attn_mask=None, is_causal=False): traced as
    constants, so that they are neither graph inputs nor tensors in the exported model."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    out = {}
    for p in params[n_inputs:]:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty:
            out[p.name] = p.default
    return out


def timm_registries() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    """timm's FX registries (notrace modules, autowrapped functions) when timm has been imported; else empty."""
    if "timm" not in sys.modules:
        return (), ()
    try:
        from timm.layers import _fx
    except ImportError:
        return (), ()
    mods, fns = getattr(_fx, "_leaf_modules", ()), getattr(_fx, "_autowrap_functions", ())  # in every timm 0.9+
    return (tuple(sorted({m for m in mods if isinstance(m, type)}, key=lambda t: t.__qualname__)),
            tuple(f for f in dict.fromkeys(fns) if callable(f) and hasattr(f, "__globals__")))


def _trace_options(model: nn.Module, n_inputs: int, leaf_modules: Sequence[type],
                   autowrap_functions: Sequence[Callable], concrete_args: Optional[Mapping[str, Any]],
                   ) -> tuple[TraceOptions, tuple[type, ...]]:
    """The first options to trace with, and the timm notrace modules kept in reserve: those with an op-table row
    are leaves from the start; the others are traced into, and become leaves one by one where that fails."""
    timm_mods, timm_fns = timm_registries()
    fns = tuple(dict.fromkeys(tuple(autowrap_functions) + timm_fns))
    concrete = {**default_concrete_args(model, n_inputs), **dict(concrete_args or {})}
    from fxscale.ops.table import module_class_row
    ruled = tuple(m for m in timm_mods if module_class_row(m) is not None)
    return (TraceOptions(tuple(leaf_modules) + ruled, fns, concrete, n_inputs),
            tuple(m for m in timm_mods if m not in ruled))


def _trace_with_fallback(model: nn.Module, opts: TraceOptions, reserve: tuple[type, ...]
                         ) -> tuple[fx.GraphModule, TraceOptions]:
    """Trace; when tracing fails inside a module of a type in `reserve`, make the innermost such type a leaf and
    try again."""
    while True:
        try:
            return _trace_graph(model, opts), opts
        except TraceError as e:
            inside = getattr(e.__cause__, "_fxscale_modules", ())
            culprit = next((t for t in inside if t in reserve and t not in opts.leaf_modules), None)
            if culprit is None:
                raise
            opts = replace(opts, leaf_modules=opts.leaf_modules + (culprit,))


class _ShapeProp(ShapeProp):
    """ShapeProp that also keeps a node's plain non-tensor value (sizes read off shapes) under META "value"."""

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        plain = lambda v: isinstance(v, (int, float, bool)) or isinstance(v, tuple) and all(map(plain, v))  # noqa
        n.meta.setdefault(META, {}).pop("value", None)
        n.meta[META].update({"value": out} if plain(out) else {})
        return out


def propagate_shapes(gm: fx.GraphModule, *inputs: torch.Tensor) -> Any:
    """Run ShapeProp and copy each node's tensor shapes into node.meta["fxscale"]["shape"]."""
    try:
        with torch.no_grad():
            out = _ShapeProp(gm).propagate(*inputs)
    except Exception as e:  # noqa: BLE001
        node = _failing_node(gm, inputs)
        cause = e.__cause__ or e  # ShapeProp wraps the op's own error in a RuntimeError naming the node
        msg = " ".join(str(cause).split("While executing")[0].split())
        raise TraceError(f"shape propagation failed at node {node}: {type(cause).__name__}: {msg}") from e
    for node in gm.graph.nodes:
        node.meta.setdefault(META, {})["shape"] = _shapes(node.meta.get("tensor_meta"))
    return out


def _meta_state(gm: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter, buffer and plain tensor attribute of gm as a meta tensor (shape and dtype, no data)."""
    out = {k: torch.empty_like(v, device="meta") for k, v in gm.named_parameters(remove_duplicate=False)}
    out.update((k, torch.empty_like(v, device="meta")) for k, v in gm.named_buffers(remove_duplicate=False)
               if v is not None)
    return out


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty_like(x, device="meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(v) for v in x)
    return x


def infer_shapes(gm: fx.GraphModule, *inputs: torch.Tensor) -> Any:
    """Shape-only propagate_shapes: parameters, buffers and inputs on the meta device, so the cost does not
    depend on the input size and nothing (BatchNorm statistics) is mutated. Falls back to a real forward when an
    op has no meta kernel or reads a tensor attribute that is not a parameter or buffer. Returns output shapes,
    nested like the output (not values)."""
    from torch.nn.utils.stateless import _reparametrize_module
    try:
        with _reparametrize_module(gm, _meta_state(gm)), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = _ShapeProp(gm).propagate(*_to_meta(inputs))
        for node in gm.graph.nodes:
            node.meta.setdefault(META, {})["shape"] = _shapes(node.meta.get("tensor_meta"))
        return _shapes_of(out)
    except Exception:  # noqa: BLE001 - the real forward below names the failing node, or succeeds
        pass
    state = {k: v.detach().clone() for k, v in gm.state_dict(keep_vars=True).items()} if gm.training else None
    try:
        return _shapes_of(propagate_shapes(gm, *inputs))
    finally:
        if state is not None:
            gm.load_state_dict(state, strict=False)  # a train-mode forward must not move BatchNorm statistics


def _shapes(tm: Any) -> Any:
    """Tensor shapes (tuples) from ShapeProp metadata, nested like the value."""
    if tm is None:
        return None
    if hasattr(tm, "shape"):
        return tuple(int(s) for s in tm.shape)
    if isinstance(tm, (list, tuple)):
        return type(tm)(_shapes(t) for t in tm) if not hasattr(tm, "_fields") else tuple(_shapes(t) for t in tm)
    if isinstance(tm, dict):
        return {k: _shapes(v) for k, v in tm.items()}
    return None


def _failing_node(gm: fx.GraphModule, inputs: tuple) -> str:
    """Name the first node whose interpretation raises (for error messages)."""
    class _Find(fx.Interpreter):
        last = "?"
        def run_node(self, n: fx.Node) -> Any:  # noqa: E301
            _Find.last = f"{n.name} ({n.op} {n.target})"
            return super().run_node(n)
    try:
        with torch.no_grad():
            _Find(gm).run(*inputs)
    except Exception:  # noqa: BLE001
        return _Find.last
    return "?"


def trace(model: nn.Module, example_input: Any, leaf_modules: Sequence[type] = (),
          mode: Optional[str] = None, *, autowrap_functions: Sequence[Callable] = (),
          concrete_args: Optional[Mapping[str, Any]] = None) -> fx.GraphModule:
    """Trace `model` (eval mode unless mode="train") into a GraphModule with shapes on every node.

    leaf_modules: module types kept as opaque calls. autowrap_functions: free functions recorded as calls
    instead of traced into (like torch.fx.wrap). Forward arguments after the example inputs that have defaults
    (timm's ``attn_mask=None, is_causal=False``) are fixed to their defaults, plus any `concrete_args`, so the
    graph's inputs are the example inputs only. When timm is imported, its FX registries are used too: its
    autowrapped functions always; its notrace modules are leaves where the op table has a row for them, and
    otherwise traced into (their insides get rules), becoming leaves only where tracing through them fails.
    """
    if not isinstance(model, nn.Module):
        raise TraceError(f"fxscale.trace needs an nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example_input)
    first, reserve = _trace_options(model, len(inputs), leaf_modules, autowrap_functions, concrete_args)
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train(mode == "train")
        gm, opts = _trace_with_fallback(model, first, reserve)
        gm.train(mode == "train")
        out_shapes = infer_shapes(gm, *inputs)
        train_gm, eval_only = (None, None) if mode == "train" else _train_only_graph(model, gm, inputs, opts)
    finally:
        for m, training in modes:
            m.training = training
    gm.meta[META] = {
        "train_gm": train_gm,
        "input_shapes": [tuple(t.shape) for t in inputs],
        "input_dtypes": [t.dtype for t in inputs],
        "output_shapes": out_shapes,
        "leaf_modules": opts.leaf_modules,
        "autowrap_functions": opts.autowrap_functions,
        "resolution": tuple(inputs[0].shape[2:]) if inputs[0].dim() >= 3 else None,
    }
    if eval_only is not None:
        size = "x".join(str(s) for s in inputs[0].shape[2:]) or str(tuple(inputs[0].shape))
        warnings.warn(f"fxscale.trace: {type(model).__name__} is traced eval-only at input {size}: {eval_only}. "
                      "Training it (fxscale.train_graph_module, gm.train()) will be refused; trace at a size "
                      "where the train-mode graph runs to train it.", UserWarning, stacklevel=2)
        gm.meta[META]["eval_only"] = True
        gm.meta[META]["eval_only_reason"] = eval_only
        guard_eval_only(gm)
    return gm


def _module_targets(gm: fx.GraphModule) -> set:
    return {n.target for n in gm.graph.nodes if n.op == "call_module"}


def share_modules(gm: fx.GraphModule, train_gm: fx.GraphModule) -> None:
    """Make the train-mode graph use the eval graph's module objects wherever both call one."""
    for target in _module_targets(train_gm) & _module_targets(gm):
        parent, _, leaf = target.rpartition(".")
        setattr(train_gm.get_submodule(parent) if parent else train_gm, leaf, gm.get_submodule(target))


def _train_only_graph(model: nn.Module, gm: fx.GraphModule, inputs: tuple,
                      opts: TraceOptions) -> tuple[fx.GraphModule | None, str | None]:
    """(train-mode trace, None) when it calls modules the eval trace does not (GoogLeNet/Inception aux heads),
    (None, None) when the eval graph is also the train graph, and (None, reason) when the train-mode graph
    cannot be traced or does not run at the example size (the result is then eval-only)."""
    model.train()
    try:
        tgm = _trace_graph(model, opts)
    except TraceError as e:
        return None, f"the train-mode graph cannot be traced ({e})"
    if not (_module_targets(tgm) - _module_targets(gm)):
        return None, None
    tgm.train()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints the traceback of a failing node
            infer_shapes(tgm, *inputs)  # meta tensors: BatchNorm statistics do not move
    except TraceError as e:
        return None, f"the train-mode graph does not run at this size ({e})"
    share_modules(gm, tgm)
    return tgm, None


def eval_only_error(gm: fx.GraphModule) -> TraceError:
    """The error for train-mode use of a GraphModule that fxscale.trace marked eval-only."""
    info = gm.meta.get(META, {})
    shape = info.get("input_shapes", ["?"])[0]
    return TraceError(f"{type(gm).__name__} was traced eval-only (input {tuple(shape)}): "
                      f"{info.get('eval_only_reason', 'the train-mode graph is unavailable')}. It cannot be used "
                      "in train mode; call .eval(), or trace it at a size where the train-mode graph runs.")


def _refuse_train_mode(module: nn.Module, args: Any) -> None:
    if module.training:
        raise eval_only_error(module)  # type: ignore[arg-type]


def guard_eval_only(gm: fx.GraphModule) -> None:
    """Make a train-mode forward of an eval-only GraphModule raise (idempotent; deep copies keep the guard)."""
    if not gm.meta.get(META, {}).get("eval_only"):
        return
    if not any(h is _refuse_train_mode for h in gm._forward_pre_hooks.values()):
        gm.register_forward_pre_hook(_refuse_train_mode)
    hooks = getattr(gm, "_deepcopy_hooks", None)
    if isinstance(hooks, list) and guard_eval_only not in hooks:
        hooks.append(guard_eval_only)


def train_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    """The GraphModule to train with: the train-mode graph (aux heads) if the model has one, else gm.

    Raises TraceError for a GraphModule traced eval-only (its train-mode graph did not run at the traced size).
    """
    info = gm.meta.get(META, {})
    if info.get("eval_only"):
        raise eval_only_error(gm)
    tgm = info.get("train_gm")
    return tgm.train() if tgm is not None else gm.train()


def _shapes_of(out: Any) -> Any:
    """Shapes of a forward result (tensor, tuple, list, dict, namedtuple)."""
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, dict):
        return {k: _shapes_of(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return tuple(_shapes_of(v) for v in out)
    return None


def output_leaves(obj: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """(path, leaf) for every leaf of a nested output (dict keys and sequence indices); a leaf is anything
    that is not a dict, list or tuple -- a tensor or its shape tuple of ints."""
    if isinstance(obj, dict):
        return [leaf for k, v in obj.items() for leaf in output_leaves(v, path + (k,))]
    if isinstance(obj, (list, tuple)) and not all(isinstance(v, int) for v in obj):
        return [leaf for i, v in enumerate(obj) for leaf in output_leaves(v, path + (i,))]
    return [(path, obj)]


def leaf_at(obj: Any, path: tuple) -> Any:
    """The leaf of a nested output at `path` (see output_leaves)."""
    for k in path:
        obj = obj[k]
    return obj


def _probe_output_shapes(gm: fx.GraphModule, inputs: tuple, hw: tuple[int, int]) -> Any:
    """Output shapes with the first input at spatial size hw, shape-only: meta tensors (node metadata untouched),
    or fake tensors where an op has no meta kernel."""
    from torch.nn.utils.stateless import _reparametrize_module
    was = gm.training
    gm.eval()
    first = tuple(inputs[0].shape[:-2]) + tuple(hw)
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            try:
                with _reparametrize_module(gm, _meta_state(gm)):
                    meta_first = torch.empty(first, dtype=inputs[0].dtype, device="meta")
                    return _shapes_of(gm(meta_first, *_to_meta(tuple(inputs[1:]))))
            except Exception:  # noqa: BLE001 - no meta kernel somewhere: fake tensors
                from torch._subclasses.fake_tensor import FakeTensorMode
                with FakeTensorMode(allow_non_fake_inputs=True) as mode:
                    x = torch.empty(first, dtype=inputs[0].dtype)
                    return _shapes_of(gm(x, *(mode.from_tensor(t) for t in inputs[1:])))
    finally:
        gm.train(was)


def dense_outputs(gm: fx.GraphModule) -> dict[tuple, dict[str, Any]]:
    """The dense outputs of a traced GraphModule (see find_dense_outputs), found on first use and then kept
    under gm.meta["fxscale"]["dense_outputs"]: only a resolution change needs them."""
    info = gm.meta[META]
    if "dense_outputs" not in info:
        info["dense_outputs"] = find_dense_outputs(gm, example_inputs(gm), info["output_shapes"])
    return info["dense_outputs"]


def find_dense_outputs(gm: fx.GraphModule, inputs: tuple, out_shapes: Any) -> dict[tuple, dict[str, Any]]:
    """The dense outputs of `gm`: output leaves whose trailing two dims follow the input's spatial size.

    The graph is run shape-only (fake tensors) at probe sizes p and 2p, with p the traced size rounded up to a
    multiple of 64 (stride-2^k rounding cancels there; if the model does not run there, p is the traced size).
    A leaf of rank >= 3 is dense when both trailing dims change between p and 2p while the leading ones do not;
    each is recorded as an affine map ``out = a * in + b`` of the input's H (resp. W). When no probe runs, a
    leaf is dense when its trailing dims equal the input's (a=1, b=0). Returns {path: {"affine": ((a_h, b_h),
    (a_w, b_w)), "shape": traced shape, "input": traced (H, W), "dtype": dtype, "rule": "probe" | "input
    size"}} with paths as in output_leaves.
    """
    x = inputs[0]
    if x.dim() != 4:  # resolution changes resize the two trailing dims of an N x C x H x W first input
        return {}
    hw = tuple(int(s) for s in x.shape[-2:])
    dtypes = dict(output_leaves(_dtypes_of(gm)))
    leaves = [(path, s0) for path, s0 in output_leaves(out_shapes) if isinstance(s0, tuple) and len(s0) >= 3]
    up = tuple(64 * max(1, -(-s // 64)) for s in hw)
    for p1 in (up, hw):
        p2 = tuple(2 * s for s in p1)
        try:
            s1, s2 = (dict(output_leaves(_probe_output_shapes(gm, inputs, p))) for p in (p1, p2))
        except Exception:  # noqa: BLE001, S112 - the model does not run (shape-only) at this probe size
            continue
        dense = {}
        for path, s0 in leaves:
            a, b = s1.get(path), s2.get(path)
            if not (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) == len(s0)
                    and a[:-2] == b[:-2] == s0[:-2] and a[-2] != b[-2] and a[-1] != b[-1]):
                continue
            slopes = [Fraction(b[d] - a[d], p2[i] - p1[i]) for i, d in enumerate((-2, -1))]
            affine = tuple((k, a[d] - k * p1[i]) for i, (k, d) in enumerate(zip(slopes, (-2, -1))))
            dense[path] = {"affine": affine, "shape": s0, "input": hw, "dtype": dtypes.get(path), "rule": "probe"}
        return dense
    return {path: {"affine": ((Fraction(1), Fraction(0)),) * 2, "shape": s0, "input": hw,
                   "dtype": dtypes.get(path), "rule": "input size"}
            for path, s0 in leaves if tuple(s0[-2:]) == hw}


def _dtypes_of(gm: fx.GraphModule) -> Any:
    """Output dtypes nested like the output, from the shape propagation of the output node."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")

    def conv(tm: Any) -> Any:
        if hasattr(tm, "dtype") and hasattr(tm, "shape"):
            return tm.dtype
        if isinstance(tm, dict):
            return {k: conv(v) for k, v in tm.items()}
        if isinstance(tm, (list, tuple)):
            return tuple(conv(v) for v in tm)
        return None
    return conv(out.meta.get("tensor_meta"))


def example_inputs(gm: fx.GraphModule, resolution: Optional[tuple] = None, seed: int = 0) -> tuple:
    """Random inputs of the traced shapes (spatial dims of the first input replaced by `resolution`)."""
    info = gm.meta.get(META)
    if not info:
        raise TraceError("this GraphModule was not produced by fxscale.trace (no gm.meta['fxscale'])")
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (shape, dtype) in enumerate(zip(info["input_shapes"], info["input_dtypes"])):
        if i == 0 and resolution is not None:
            shape = tuple(shape[:2]) + tuple(resolution)
        out.append(torch.randn(shape, generator=g).to(dtype) if dtype.is_floating_point
                   else torch.zeros(shape, dtype=dtype))
    return tuple(out)
