"""Depth pass: repeat blocks of a traced model with function-preserving (identity) initialisation.

A depth plan maps a *stage key* to a new block count (``ScalingPlan.depths``). Two key forms exist:

- ``"S"`` names an ``nn.Sequential`` of blocks in the original model (``"layer1"`` in torchvision
  ResNets, ``"features.3"`` in ConvNeXt, ``"stages.0"`` in ``digits_resnet``). The value is the new number
  of blocks; the last block is repeated and the copies are appended (``layer1.2``, ``layer1.3``, ...).
- ``"S.K"`` names child ``K`` of an ``nn.Sequential`` ``S``. The value is how many times that unit appears
  (1 = unchanged). If the child is a block (a container such as a BasicBlock or InvertedResidual), the block
  is repeated; if it is a leaf ``Conv`` in a flat Sequential (torchvision VGG ``features``), its
  conv -> [BatchNorm] -> [ReLU] run of siblings is repeated. Copies go right after the unit and the later
  children of ``S`` are renumbered, so the state_dict reads like the deeper network (vgg13_bn plus
  ``features.17``, ``features.24``, ``features.31`` at 2 gives exactly vgg16_bn's key names).

A ``Sequential`` that is itself a stage (its last child is a block) is read as the ``"S"`` form.

Only blocks whose input and output shapes are equal can be repeated (stride 1, same channels), and only
single-input, single-output blocks. Copies are chained after the block and initialised as identities:

- residual block, ``out = act(x + branch(x))``: the last norm on the branch (BatchNorm/LayerNorm/GroupNorm
  gamma and beta; else a layer-scale parameter or the last conv/linear) is zeroed, so the branch is 0 and the
  copy computes ``act(x)``, which is ``x`` because ``x`` is itself the output of the same activation;
- plain chain conv -> BN -> ReLU (VGG): Dirac conv (bias 0), BatchNorm identity in eval (running mean 0,
  var 1, gamma sqrt(1 + eps), beta 0), ReLU of a non-negative input.

A block that fits neither pattern raises PlanError unless ``init="reinit"`` (fresh initialisation of the
copies, not function-preserving). Preservation holds in eval mode (BatchNorm in train mode uses batch
statistics). The pass works on the eval graph only: models with a train-mode graph (aux heads) are refused.
"""
from __future__ import annotations

import copy
import difflib
import math
import operator
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxscale.errors import PlanError
from fxscale.tracing import META, propagate_shapes

STACK = "nn_module_stack"
INF = math.inf
_TEMP = "_fxscale_depth_copy"
_NUMBERED = re.compile(r"^(.*?)(\d+)$")
_REL_TOL = 1e-4  # safety net: relative output change tolerated after an identity-initialised depth change

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_PASS_MODULES = (nn.Identity, nn.modules.dropout._DropoutNd, nn.Flatten, nn.Unflatten)
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
          nn.modules.pooling._AdaptiveMaxPoolNd)
_ZERO_KEEPING_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardswish, nn.LeakyReLU, nn.Hardtanh,
                         nn.Mish, nn.ELU, nn.Softsign, nn.Tanhshrink) + _PASS_MODULES
_ZERO_KEEPING_FUNCS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.tanh, F.hardswish, F.leaky_relu,
                       F.hardtanh, F.dropout, torch.permute, torch.transpose, torch.reshape, torch.flatten,
                       torch.squeeze, torch.unsqueeze}
_ZERO_KEEPING_METHODS = {"relu", "relu_", "permute", "transpose", "reshape", "view", "flatten", "contiguous",
                         "squeeze", "unsqueeze", "clone"}
_SHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}
_SHAPE_METHODS = {"flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze", "clone"}
_POOL_FUNCS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
               F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d}
_ADDS = {operator.add, operator.iadd, torch.add}
_MULS = {operator.mul, operator.imul, torch.mul}


# ----------------------------------------------------------------------------------------------- module index

def _clean(path: str) -> str:
    """'layer1.0.relu@1' -> 'layer1.0.relu' (fx suffixes repeated calls of one module with @N)."""
    return ".".join(p.split("@")[0] for p in path.split("."))


def _is_seq(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, nn.Sequential)


@dataclass
class _Index:
    """Module paths seen in node.meta['nn_module_stack']: their types, nodes, calls and children."""

    types: dict[str, type] = field(default_factory=dict)
    nodes: dict[str, list[fx.Node]] = field(default_factory=dict)
    repeated: set[str] = field(default_factory=set)  # paths called more than once (keys with @N)
    leaves: dict[str, list[fx.Node]] = field(default_factory=dict)  # call_module targets

    def children(self, path: str) -> list[str]:
        """Child names of `path`, in model order when numbered."""
        pre = path + "."
        names = {p[len(pre):].split(".")[0] for p in self.types if p.startswith(pre)}
        return sorted(names, key=lambda c: (_num(c)[1] if _num(c) else -1, c))

    def is_leaf(self, path: str) -> bool:
        return path in self.leaves and not any(p.startswith(path + ".") for p in self.types)


def _num(name: str) -> Optional[tuple[str, int]]:
    m = _NUMBERED.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def _index(gm: fx.GraphModule) -> _Index:
    idx = _Index()
    for n in gm.graph.nodes:
        stack = n.meta.get(STACK) or {}
        for key, val in stack.items():
            path = _clean(key)
            if "@" in key:
                idx.repeated.add(path)
            typ = val[1] if isinstance(val, tuple) and len(val) > 1 else None
            if isinstance(typ, type):
                idx.types.setdefault(path, typ)
            idx.nodes.setdefault(path, []).append(n)
        if n.op == "call_module":
            idx.leaves.setdefault(n.target, []).append(n)
            idx.types.setdefault(n.target, type(gm.get_submodule(n.target)))
    return idx


def stage_keys(gm: fx.GraphModule) -> list[str]:
    """Depth keys the graph can name: Sequentials of blocks ("S"), blocks and convs inside Sequentials ("S.K").

    Whether a key's block can be repeated also depends on its shapes and structure (see resolve()).
    """
    idx = _index(gm)
    keys = []
    for path, typ in idx.types.items():
        if not _is_seq(typ):
            continue
        kids = idx.children(path)
        if kids and not idx.is_leaf(f"{path}.{kids[-1]}"):
            keys.append(path)
        for k in kids:
            child = f"{path}.{k}"
            if child not in keys and (not idx.is_leaf(child) or _is_plain_conv(idx.types.get(child))):
                keys.append(child)
    return sorted(set(keys), key=lambda k: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in k.split(".")])


def _is_plain_conv(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, nn.modules.conv._ConvNd) and not issubclass(
        t, nn.modules.conv._ConvTransposeNd)


# ----------------------------------------------------------------------------------------------- resolution

@dataclass
class Insertion:
    """One resolved depth key: the block to repeat, where the copies go and how they are initialised."""

    key: str
    container: str  # module path of the Sequential that receives the copies
    units: list[str]  # child names of `container` that make up the repeated block, in order
    current: int
    count: int
    copies: int
    nodes: list[fx.Node]
    inp: fx.Node
    out: fx.Node
    form: str  # "stage" | "block" | "conv"
    recipe: list[tuple[str, str]] = field(default_factory=list)  # (target inside the block, action)
    identity: str = ""

    @property
    def block(self) -> str:
        return ", ".join(f"{self.container}.{u}" for u in self.units)


def _err(key: str, msg: str) -> PlanError:
    return PlanError(f"plan depth key {key!r}: {msg}")


def _unknown(gm: fx.GraphModule, key: str) -> PlanError:
    close = difflib.get_close_matches(key, stage_keys(gm), n=3)
    hint = f"; did you mean {close}?" if close else ""
    return _err(key, f"names no stage (an nn.Sequential of blocks, or a block/conv inside one){hint}")


def _container_name(container: str, typ: Any) -> str:
    return f"{container!r} ({getattr(typ, '__name__', typ)})"


def resolve(gm: fx.GraphModule, key: str, count: int, idx: Optional[_Index] = None) -> Insertion:
    """Find the block a depth key repeats and check its count, structure and shapes (no init check)."""
    idx = idx or _index(gm)
    if not idx.types:
        raise _err(key, "the graph has no nn_module_stack metadata; trace the model with fxscale.trace")
    if not isinstance(key, str) or key not in idx.types:
        raise _unknown(gm, key)
    typ = idx.types[key]
    kids = idx.children(key)
    if _is_seq(typ) and kids and not idx.is_leaf(f"{key}.{kids[-1]}"):
        container, unit, current, form = key, kids[-1], len(kids), "stage"
    else:
        container, _, unit = key.rpartition(".")
        ptype = idx.types.get(container)
        if not container or not _is_seq(ptype):
            if _is_seq(typ) and kids:
                if all(idx.is_leaf(f"{key}.{k}") for k in kids):
                    raise _err(key, f"{_container_name(key, typ)} is a flat Sequential of layers, not of blocks; "
                               f"name a conv in it ('{key}.K') to repeat its conv-bn-relu run")
                raise _err(key, f"the last child of {_container_name(key, typ)}, {key}.{kids[-1]}, is a single layer, "
                           f"not a block; name the block to repeat ('{key}.K')")
            parent = f"its parent {_container_name(container, ptype)} is not" if container else "it is not in"
            raise _err(key, f"{_container_name(key, typ)} is not a repeatable stage: it is not an nn.Sequential of "
                       f"blocks and {parent} an nn.Sequential. Depth keys name an nn.Sequential of blocks "
                       "('layer1') or a block / conv inside one ('layer1.0', 'features.3')")
        current, form = 1, "block"
        if idx.is_leaf(key):
            if not _is_plain_conv(typ):
                raise _err(key, f"names a {typ.__name__} inside the flat Sequential {container!r}; name a Conv to "
                           "repeat its conv-bn-relu run, or a block")
            form = "conv"
    if isinstance(count, bool) or not isinstance(count, int):
        raise _err(key, f"block count must be an int, got {count!r}")
    if count < current:
        raise _err(key, f"count {count} is smaller than the current {current}; the depth pass only adds blocks")
    if form == "conv":
        units, nodes = _conv_run(gm, idx, key, container)
    else:
        units = [unit]
        path = f"{container}.{unit}"
        if path in idx.repeated:
            raise _err(key, f"block {path!r} is called more than once; a shared block cannot be repeated")
        nodes = _block_nodes(gm, idx, path)
    inp, out = _block_io(gm, key, container, units, nodes)
    ins = Insertion(key, container, units, current, count, count - current, nodes, inp, out, form)
    _check_shapes(ins)
    if not all(_num(c) for c in idx.children(container)) or len({_num(c)[0] for c in idx.children(container)}) > 1:
        raise _err(key, f"the children of {container!r} are not numbered ({idx.children(container)}); cannot "
                   "name new blocks")
    return ins


def _block_nodes(gm: fx.GraphModule, idx: _Index, path: str) -> list[fx.Node]:
    pre = path + "."
    members = set(idx.nodes.get(path, []))
    members |= {n for n in gm.graph.nodes if n.op in ("call_module", "get_attr") and
                (n.target == path or str(n.target).startswith(pre))}
    return [n for n in gm.graph.nodes if n in members]


def _conv_run(gm: fx.GraphModule, idx: _Index, key: str, container: str) -> tuple[list[str], list[fx.Node]]:
    """conv -> [BatchNorm] -> [activation]: consecutive sibling modules of a flat Sequential."""
    calls = idx.leaves.get(key, [])
    if len(calls) != 1:
        raise _err(key, f"conv {key!r} is called {len(calls)} times; a shared layer cannot be repeated")
    run = [calls[0]]
    seen_bn = False
    while True:
        users = list(run[-1].users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].target.rpartition(".")[0] != container:
            break
        m = gm.get_submodule(users[0].target)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not seen_bn:
            seen_bn = True
            run.append(users[0])
            continue
        if _act_range(users[0], gm) is not None and not isinstance(m, _PASS_MODULES):
            run.append(users[0])
        break
    units = [n.target.rpartition(".")[2] for n in run]
    nums = [_num(u)[1] if _num(u) else -1 for u in units]
    if len({_num(u)[0] if _num(u) else None for u in units}) != 1 or nums != list(range(nums[0], nums[0] + len(nums))):
        raise _err(key, f"the conv run {[n.target for n in run]} is not a run of consecutively numbered children "
                   f"of {container!r}")
    return units, run


def _block_io(gm: fx.GraphModule, key: str, container: str, units: list[str],
              nodes: list[fx.Node]) -> tuple[fx.Node, fx.Node]:
    block = f"{container}.{units[0]}" if len(units) == 1 else f"{container}.{units[0]}..{units[-1]}"
    if not nodes:
        raise _err(key, f"block {block!r} has no nodes in the graph")
    members = set(nodes)
    prefixes = tuple(f"{container}.{u}" for u in units)
    for n in nodes:  # get_attr of a constant outside the block is shared by the copies; modules must be inside
        inside = n.target in prefixes or str(n.target).startswith(tuple(p + "." for p in prefixes))
        if n.op == "call_module" and not inside:
            raise _err(key, f"block {block!r} calls module {n.target!r}, which lives outside the block")
    ins = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in members))
    if len(ins) != 1:
        raise _err(key, f"block {block!r} reads {len(ins)} values from outside ({[a.name for a in ins]}); only "
                   "single-input blocks can be repeated")
    outs = [n for n in nodes if any(u not in members for u in n.users)]
    if len(outs) != 1:
        raise _err(key, f"block {block!r} has {len(outs)} outputs ({[o.name for o in outs]}); only single-output "
                   "blocks can be repeated")
    return ins[0], outs[0]


def _shape(n: fx.Node) -> Any:
    return n.meta.get(META, {}).get("shape")


def _check_shapes(ins: Insertion) -> None:
    si, so = _shape(ins.inp), _shape(ins.out)
    if si is None or so is None or si != so:
        raise _err(ins.key, f"block {ins.block} maps {si} -> {so}; only blocks whose input and output shapes "
                   "are equal (stride 1, same channels) can be repeated")


# ----------------------------------------------------------------------------------------------- identity init

def _mod(gm: fx.GraphModule, n: fx.Node) -> Optional[nn.Module]:
    return gm.get_submodule(n.target) if n.op == "call_module" else None


def _fn_name(n: fx.Node) -> str:
    return getattr(n.target, "__name__", str(n.target))


def _act_range(n: fx.Node, gm: fx.GraphModule) -> Optional[tuple[float, float]]:
    """For an op that is the identity on an interval, that interval; None for other ops."""
    m = _mod(gm, n)
    if m is not None:
        if isinstance(m, _PASS_MODULES):
            return (-INF, INF)
        if isinstance(m, nn.ReLU6):
            return (0.0, 6.0)
        if isinstance(m, nn.Hardtanh):
            return (float(m.min_val), float(m.max_val))
        if isinstance(m, nn.ReLU):
            return (0.0, INF)
        return None
    if n.op == "call_function":
        if n.target in (F.relu, torch.relu, torch.relu_):
            return (0.0, INF)
        if n.target is F.relu6:
            return (0.0, 6.0)
        if n.target is F.hardtanh:
            lo = n.args[1] if len(n.args) > 1 else n.kwargs.get("min_val", -1.0)
            hi = n.args[2] if len(n.args) > 2 else n.kwargs.get("max_val", 1.0)
            return (float(lo), float(hi))
        if n.target is F.dropout:
            return (-INF, INF)
    if n.op == "call_method" and n.target in ("relu", "relu_"):
        return (0.0, INF)
    return None


def value_range(n: Any, gm: fx.GraphModule, depth: int = 0) -> tuple[float, float]:
    """A conservative interval holding every value of node `n` (eval mode)."""
    if not isinstance(n, fx.Node) or depth > 64:
        return (-INF, INF)
    first = n.all_input_nodes[0] if n.all_input_nodes else None
    m = _mod(gm, n)
    r = _act_range(n, gm)
    if r is not None and r != (-INF, INF):
        return r
    if m is not None:
        if isinstance(m, _PASS_MODULES + _POOLS) or isinstance(m, nn.Sigmoid):
            return (0.0, 1.0) if isinstance(m, nn.Sigmoid) else value_range(first, gm, depth + 1)
        return (-INF, INF)
    if n.op == "call_function":
        if n.target in _ADDS and len(n.args) == 2 and not n.kwargs:
            a, b = (value_range(x, gm, depth + 1) if isinstance(x, fx.Node) else (float(x), float(x))
                    for x in n.args)
            return (a[0] + b[0], a[1] + b[1])
        if n.target is torch.cat:
            parts = [value_range(x, gm, depth + 1) for x in n.args[0]]
            return (min(p[0] for p in parts), max(p[1] for p in parts))
        if n.target in _POOL_FUNCS or n.target in _SHAPE_FUNCS or n.target is F.dropout or r is not None:
            return value_range(first, gm, depth + 1)
    if n.op == "call_method" and n.target in _SHAPE_METHODS:
        return value_range(first, gm, depth + 1)
    return (-INF, INF)


def _within(r: tuple[float, float], req: tuple[float, float]) -> bool:
    return req[0] <= r[0] and r[1] <= req[1]


def _zeroable(gm: fx.GraphModule, n: Any, members: set, inp: fx.Node, prefixes: tuple, depth: int = 0
              ) -> Optional[tuple[str, str, str]]:
    """(target, action, what) that makes the value of branch node `n` zero, walking back through ops f(0)=0."""
    if not isinstance(n, fx.Node) or n not in members or n is inp or depth > 64:
        return None
    m = _mod(gm, n)
    if m is not None:
        if isinstance(m, _NORMS):
            if getattr(m, "weight", None) is None:
                return None
            return (n.target, "zero", f"zeroed the last norm {n.target} ({type(m).__name__} gamma and beta)")
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            return (n.target, "zero", f"zeroed the last {type(m).__name__} {n.target} (weight and bias)")
        if isinstance(m, _ZERO_KEEPING_MODULES):
            return _zeroable(gm, n.args[0], members, inp, prefixes, depth + 1)
        return None
    if n.op == "get_attr":  # only the block's own parameters (a shared constant would change other blocks)
        if not n.target.startswith(prefixes):
            return None
        return (n.target, "zero_param", f"zeroed the layer-scale parameter {n.target}")
    mul = (n.op == "call_function" and n.target in _MULS) or (n.op == "call_method" and n.target in ("mul", "mul_"))
    if mul:
        args = [a for a in n.args if isinstance(a, fx.Node)]
        for a in sorted(args, key=lambda a: a.op != "get_attr"):  # layer-scale gamma first
            if a.op == "get_attr" and a not in members:
                continue
            r = _zeroable(gm, a, members, inp, prefixes, depth + 1)
            if r is not None:
                return r
        return None
    if (n.op == "call_function" and (n.target in _ZERO_KEEPING_FUNCS or _fn_name(n) == "stochastic_depth")) or (
            n.op == "call_method" and n.target in _ZERO_KEEPING_METHODS):
        first = n.all_input_nodes[0] if n.all_input_nodes else None
        return _zeroable(gm, first, members, inp, prefixes, depth + 1)
    return None


def _is_add(n: fx.Node) -> bool:
    tensors = [a for a in n.args if isinstance(a, fx.Node)]
    if len(n.args) != 2 or len(tensors) != 2 or n.kwargs:
        return False
    return (n.op == "call_function" and n.target in _ADDS) or (n.op == "call_method" and n.target in ("add", "add_"))


def _residual_recipe(gm: fx.GraphModule, ins: Insertion) -> tuple[Optional[tuple], str]:
    members = set(ins.nodes)
    req = (-INF, INF)
    n = ins.out
    while n in members and not _is_add(n):
        r = _act_range(n, gm)
        if r is None or len(n.all_input_nodes) != 1:
            return None, f"its output {n.name} is not an add of the block input and a branch"
        req = (max(req[0], r[0]), min(req[1], r[1]))
        n = n.all_input_nodes[0]
    if n not in members:
        return None, "its output is not an add of the block input and a branch"
    for skip, branch in (n.args, tuple(reversed(n.args))):
        while skip in members and skip.op == "call_module" and isinstance(_mod(gm, skip), nn.Identity):
            skip = skip.args[0]
        if skip is not ins.inp:
            continue
        z = _zeroable(gm, branch, members, ins.inp, tuple(f"{ins.container}.{u}." for u in ins.units))
        if z is None:
            return None, (f"the residual branch into {n.name} does not end in a norm, layer-scale, conv or linear "
                          "that can be zeroed")
        rng = value_range(ins.out, gm)
        if not _within(rng, req):
            return None, (f"the activation after the residual add is the identity only on {req}, but the block "
                          f"output ranges over {rng}")
        return (z[0], z[1]), f"residual: {z[2]}"
    return None, f"neither input of the add {n.name} is the block input"


def _dirac_problem(m: nn.Module) -> str:
    if not _is_plain_conv(type(m)):
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
    chain, n = [], ins.out
    while n is not ins.inp:
        if n not in members or len(n.all_input_nodes) != 1:
            return None, f"it is not a single chain of layers (at {n.name})"
        chain.append(n)
        n = n.all_input_nodes[0]
    if set(chain) != members:
        return None, "it is not a single chain of layers (side branches)"
    recipe, req, what = [], (-INF, INF), []
    for n in reversed(chain):
        m = _mod(gm, n)
        if m is not None and isinstance(m, nn.modules.conv._ConvNd):
            problem = _dirac_problem(m)
            if problem:
                return None, f"conv {n.target} cannot be a Dirac identity ({problem})"
            recipe.append((n.target, "dirac"))
            what.append(f"Dirac {n.target}")
        elif m is not None and isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is None:
                return None, f"BatchNorm {n.target} has no running statistics"
            recipe.append((n.target, "bn_identity"))
            what.append(f"identity {n.target}")
        else:
            r = _act_range(n, gm)
            if r is None:
                kind = type(m).__name__ if m is not None else f"{n.op} {_fn_name(n)}"
                return None, f"{n.name} ({kind}) cannot be set to the identity"
            req = (max(req[0], r[0]), min(req[1], r[1]))
    rng = value_range(ins.out, gm)
    if not _within(rng, req):
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


def _apply(gm: fx.GraphModule, target: str, action: str) -> None:
    with torch.no_grad():
        if action == "zero_param":
            _get_attr(gm, target).zero_()
            return
        m = gm.get_submodule(target)
        if action == "zero":
            m.weight.zero_()
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        elif action == "dirac":
            nn.init.dirac_(m.weight, groups=m.groups)
            if m.bias is not None:
                m.bias.zero_()
        elif action == "bn_identity":
            m.running_mean.zero_()
            if m.weight is not None:
                m.running_var.fill_(1.0)
                m.weight.fill_(math.sqrt(1.0 + m.eps))
                m.bias.zero_()
            else:
                m.running_var.fill_(1.0 - m.eps)
        else:  # pragma: no cover - internal
            raise ValueError(action)


def _get_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for p in target.split("."):
        obj = getattr(obj, p)
    return obj


def _reinit(m: nn.Module) -> None:
    for sub in m.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
        if hasattr(sub, "reset_running_stats"):
            sub.reset_running_stats()


# ----------------------------------------------------------------------------------------------- planning

def _check_train_graph(gm: fx.GraphModule, depths: Mapping[str, int]) -> None:
    if gm.meta.get(META, {}).get("train_gm") is not None and depths:
        raise PlanError("plan key 'depths': depth scaling of models with a train-mode graph (auxiliary heads, "
                        f"e.g. GoogLeNet/Inception) is not supported; got {sorted(depths)}")


def plan_depths(gm: fx.GraphModule, depths: Mapping[str, int], init: Optional[str] = "preserve"
                ) -> list[Insertion]:
    """Resolve every depth key without mutating anything; init=None skips the identity check.

    Raises PlanError naming the key for unknown stages, counts below the current one, blocks that cannot be
    repeated (shapes, structure) or, unless init == "reinit", made an identity; and for two keys on one block.
    """
    if not depths:
        return []
    idx = _index(gm)
    out: list[Insertion] = []
    for key in sorted(depths):
        ins = resolve(gm, key, depths[key], idx)
        if ins.copies:
            out.append(ins)
    if out:
        _check_train_graph(gm, {i.key: i.count for i in out})
    seen: dict[fx.Node, str] = {}
    for ins in out:
        for n in ins.nodes:
            if n in seen:
                raise PlanError(f"plan depth keys {seen[n]!r} and {ins.key!r} both change block {ins.block}; "
                                "use one key per block")
            seen[n] = ins.key
    if init is not None and init != "reinit":
        for ins in out:
            identity_recipe(gm, ins)
    return out


def validate_depths(gm: fx.GraphModule, depths: Mapping[str, int]) -> None:
    """ScalingPlan.validate's depth check: stages, counts, repeatable blocks (not the identity init)."""
    plan_depths(gm, depths, init=None)


# ----------------------------------------------------------------------------------------------- mutation

def _rewrite(path: str, container: str, mapping: Mapping[str, str]) -> str:
    """Rename child `c` of `container` in a module path (keeps a trailing '@N' call suffix)."""
    pre = container + "." if container else ""
    if not path.startswith(pre):
        return path
    rest = path[len(pre):]
    head, dot, tail = rest.partition(".")
    name, at, call = head.partition("@")
    if name not in mapping:
        return path
    return pre + mapping[name] + at + call + dot + tail


def _rewrite_node(n: fx.Node, container: str, mapping: Mapping[str, str]) -> None:
    if n.op in ("call_module", "get_attr"):
        n.target = _rewrite(n.target, container, mapping)
    stack = n.meta.get(STACK)
    if stack:  # replaced, never mutated: fx shares node.meta dicts between deep copies of a GraphModule
        n.meta[STACK] = OrderedDict(
            (_rewrite(k, container, mapping),
             (_rewrite(v[0], container, mapping),) + tuple(v[1:]) if isinstance(v, tuple) and v else v)
            for k, v in stack.items())


def _single_input(nodes: list[fx.Node]) -> fx.Node:
    members = set(nodes)
    return next(a for n in nodes for a in n.all_input_nodes if a not in members)


def _insert_copies(gm: fx.GraphModule, ins: Insertion, init: str, serial: list[int]) -> list[str]:
    """Register deep copies of the block's units under temporary names and chain their nodes after the block."""
    graph = gm.graph
    parent = gm.get_submodule(ins.container)
    inp = _single_input(ins.nodes)  # re-read: an earlier insertion may have rewired this block's input
    members = set(ins.nodes)
    prev, cursor, temps = ins.out, ins.out, []
    ext_users = [u for u in ins.out.users if u not in members]
    for _ in range(ins.copies):
        mapping = {}
        for u in ins.units:
            serial[0] += 1
            temp = f"{_TEMP}{serial[0]}"
            parent.add_module(temp, copy.deepcopy(parent._modules[u]))
            mapping[u] = temp
            temps.append(temp)
        for target, action in ins.recipe:
            _apply(gm, _rewrite(target, ins.container, mapping), action)
        if init == "reinit":
            for u in ins.units:
                _reinit(parent._modules[mapping[u]])
        env = {inp: prev}
        for n in ins.nodes:
            with graph.inserting_after(cursor):
                new = graph.node_copy(n, lambda a: env[a])
            new.meta = dict(n.meta)
            if META in n.meta:
                new.meta[META] = dict(n.meta[META])
            _rewrite_node(new, ins.container, mapping)
            env[n] = cursor = new
        prev = env[ins.out]
    for u in ext_users:
        u.replace_input_with(ins.out, prev)
    return temps


def _renumber(gm: fx.GraphModule, container: str, inserted: Mapping[str, list[str]]) -> dict[str, str]:
    """Give the original children and the copies after each anchor consecutive numbers, in model order."""
    parent = gm.get_submodule(container)
    temps = {t for ts in inserted.values() for t in ts}
    originals = [c for c in parent._modules if c not in temps]
    numbered = sorted(((_num(c), c) for c in originals), key=lambda x: x[0][1])
    prefix = numbered[0][0][0] if numbered else ""
    mapping, od, offset = {}, OrderedDict(), 0
    for (_p, i), name in numbered:
        mapping[name] = f"{prefix}{i + offset}"
        od[mapping[name]] = parent._modules[name]
        for t in inserted.get(name, []):
            offset += 1
            mapping[t] = f"{prefix}{i + offset}"
            od[mapping[t]] = parent._modules[t]
    parent._modules.clear()
    parent._modules.update(od)
    for n in gm.graph.nodes:
        _rewrite_node(n, container, mapping)
    return mapping


def _rename_nodes(gm: fx.GraphModule) -> None:
    """Rebuild the graph so module-calling nodes are named after their (renumbered) targets, as fx does."""
    old = gm.graph
    new = fx.Graph(tracer_cls=old._tracer_cls, tracer_extras=old._tracer_extras)
    new._codegen = copy.deepcopy(old._codegen)
    env: dict[fx.Node, fx.Node] = {}
    for n in old.nodes:
        name = n.target.replace(".", "_") if n.op in ("call_module", "get_attr") else n.name
        m = new.create_node(n.op, n.target, fx.map_arg(n.args, env.__getitem__),
                            fx.map_arg(n.kwargs, env.__getitem__), name=name, type_expr=n.type)
        m.meta = n.meta
        env[n] = m
    gm.graph = new


def _flat_tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat_tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _flat_tensors(v)]
    return []


def _eval_forward(gm: fx.GraphModule, inputs: tuple, fn: Callable) -> Any:
    was = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            return fn(gm, *inputs)
    finally:
        gm.train(was)


def depth_pass(gm: fx.GraphModule, depths: Mapping[str, int], init: str = "preserve", seed: int = 0
               ) -> dict[str, Any]:
    """Repeat blocks of `gm` in place as `depths` asks (see the module docstring); returns a report.

    Everything is resolved and checked before the graph changes. Afterwards the graph is linted and
    recompiled, shapes are propagated again (so fxscale.analyze works on the result) and, unless
    init == "reinit", the outputs are checked against the shallower model (eval mode). The report has
    one entry per changed key under "blocks" (stage, form, from, to, repeated block, added module paths,
    identity init, added parameters) and "max_rel_err".
    """
    from fxscale.tracing import example_inputs
    if not depths:
        return {}
    inputs = example_inputs(gm)
    before = _eval_forward(gm, inputs, propagate_shapes)  # fresh shapes after the width/resolution passes
    plan = plan_depths(gm, depths, init)
    if not plan:
        return {}
    blocks: dict[str, Any] = {}
    temps: dict[str, list[str]] = {}
    serial = [0]
    per_container: dict[str, dict[str, list[str]]] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 2)  # only used by init="reinit"
        for ins in plan:
            params = ins.copies * sum(p.numel() for u in ins.units
                                      for p in gm.get_submodule(f"{ins.container}.{u}").parameters())
            temps[ins.key] = _insert_copies(gm, ins, init, serial)
            per_container.setdefault(ins.container, {})[ins.units[-1]] = temps[ins.key]
            blocks[ins.key] = {"stage": ins.container, "form": ins.form, "from": ins.current, "to": ins.count,
                               "block": [f"{ins.container}.{u}" for u in ins.units],
                               "identity": ins.identity if init != "reinit" else "reinit", "params": params,
                               "added": [f"{ins.container}.{t}" for t in temps[ins.key]]}
    for container in sorted(per_container, key=lambda c: -c.count(".")):  # inner stages first
        mapping = _renumber(gm, container, per_container[container])
        for rep in blocks.values():
            rep["added"] = [_rewrite(a, container, mapping) for a in rep["added"]]
    _rename_nodes(gm)
    gm.graph.lint()
    gm.recompile()
    after = _eval_forward(gm, inputs, propagate_shapes)
    report: dict[str, Any] = {"blocks": blocks}
    if init != "reinit":
        err = _rel_err(before, after)
        if err > _REL_TOL:
            raise PlanError(f"plan key 'depths': the deeper model does not compute the same function (relative "
                            f"error {err:.2e}); the identity init of {sorted(blocks)} failed")
        report["max_rel_err"] = err
    return report


def _rel_err(a: Any, b: Any) -> float:
    ta, tb = _flat_tensors(a), _flat_tensors(b)
    if len(ta) != len(tb):
        return INF
    worst = 0.0
    for x, y in zip(ta, tb):
        if x.shape != y.shape:
            return INF
        if not x.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(x, y) else INF)
            continue
        scale = float(x.abs().max()) if x.numel() else 0.0
        diff = float((x - y).abs().max()) if x.numel() else 0.0
        worst = max(worst, diff / max(scale, 1e-12))
    return worst


__all__ = ["depth_pass", "plan_depths", "validate_depths", "stage_keys", "resolve", "identity_recipe",
           "value_range", "Insertion"]
