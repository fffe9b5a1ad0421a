"""Width pass: rebuild every module/parameter touched by a changed channel group and carry the weights."""
from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxscale.analysis.context import Use
from fxscale.analysis.graph import ChannelGraph
from fxscale.ops.table import module_row
from fxscale.passes.channel_map import ChannelMaps


def _get(root: nn.Module, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _has(root: nn.Module, path: str) -> bool:
    try:
        _get(root, path)
        return True
    except AttributeError:
        return False


def _owner(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    mod_path, _, leaf = path.rpartition(".")
    return (_get(root, mod_path) if mod_path else root), leaf


def _set_tensor(owner: nn.Module, leaf: str, value: torch.Tensor, like: torch.Tensor) -> None:
    """Replace a parameter or buffer keeping its kind and requires_grad (`value` is a new tensor: remap_tensor
    never returns a view of its input)."""
    value = value.detach()
    if isinstance(like, nn.Parameter):
        setattr(owner, leaf, nn.Parameter(value, requires_grad=like.requires_grad))
    elif leaf in owner._buffers:
        owner._buffers[leaf] = value
    else:
        setattr(owner, leaf, value)


def remap_tensor(cg: ChannelGraph, maps: ChannelMaps, t: torch.Tensor, dims: dict, fresh: torch.Tensor | None,
                 divide: bool = True, noise: float = 0.0, gen: torch.Generator | None = None) -> torch.Tensor:
    """Select/replicate along every labelled dim; consumer dims divide by replica counts; -1 takes `fresh`."""
    out = t.detach()
    fresh_mask = torch.zeros(0)
    masks = []
    for d, (label, mode) in sorted(dims.items()):
        idx, cnt = maps.index(cg, label)
        out = out.index_select(d, idx.clamp(min=0))
        shape = [1] * out.dim()
        shape[d] = -1
        if mode == "reduce" and divide:
            out = out / cnt.to(out.dtype).view(shape)
        masks.append(((idx < 0).view(shape), d))
        if noise and mode == "select":
            rep = (cnt > 1).to(out.dtype).view(shape)
            out = out + noise * out.abs().mean() * torch.randn(out.shape, generator=gen) * rep
    if not dims:
        out = out.clone()
    if fresh is not None:
        fresh_mask = torch.zeros(out.shape, dtype=torch.bool)
        for m, _d in masks:
            fresh_mask = fresh_mask | m.expand(out.shape)
        out = torch.where(fresh_mask, fresh.to(out.dtype), out)
    return out


def _patch_attrs(mod: Any, use: Use) -> None:
    """Update size attributes of a rebuilt module from its new tensors (the op row's patch)."""
    row = module_row(mod) if isinstance(mod, nn.Module) else None
    if row is not None and row.patch is not None:
        row.patch(mod, use)


def _fresh_like(mod: nn.Module) -> nn.Module:
    """A re-initialised copy (reset_parameters / reset_running_stats where available)."""
    fresh = copy.deepcopy(mod)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
    return fresh


def rebuild_module(cg: ChannelGraph, maps: ChannelMaps, gm: fx.GraphModule, use: Use, init: str,
                   noise: float, gen: torch.Generator) -> bool:
    """Rebuild one module in `gm` in place; False if nothing about it changes."""
    labels = [lab for dims in use.params.values() for lab, _m in dims.values()]
    if not any(maps.changed(cg, lab) for lab in labels):
        return False
    new = _get(gm, use.name)  # gm is the transform's private copy: the module is rebuilt in place
    old = {pname: _get(new, pname) for pname in use.params}  # the tensors before, read before any is replaced
    old_embed = getattr(new, "embed_dim", None)
    for pname, dims in use.params.items():
        owner, leaf = _owner(new, pname)
        _set_tensor(owner, leaf, remap_tensor(cg, maps, old[pname], dims, None), old[pname])
    _patch_attrs(new, use)
    if use.kind == "mha" and init == "preserve":
        _attention_fixup(cg, maps, use, new, old_embed)
    if init == "reinit":
        new = _fresh_like(new)
    elif _has_fresh(cg, maps, labels) or noise:
        fresh = _fresh_like(new) if _has_fresh(cg, maps, labels) else None
        for pname, dims in use.params.items():
            owner, leaf = _owner(new, pname)
            value = remap_tensor(cg, maps, old[pname], dims, _get(fresh, pname) if fresh is not None else None,
                                 noise=noise, gen=gen)
            _set_tensor(owner, leaf, value, old[pname])
    owner, leaf = _owner(gm, use.name)
    setattr(owner, leaf, new)
    return True


def _replicas(cg: ChannelGraph, maps: ChannelMaps, label: tuple) -> torch.Tensor:
    """Mask of new elements that are added copies (position >= the atom's old size)."""
    at = cg.ctx.atoms
    out = [torch.arange(maps.sizes.get(p.atom, at.size[p.atom])).repeat_interleave(p.inner) >= at.size[p.atom] * 1
           for p in at.expand(label)]
    return torch.cat(out)


def _attention_fixup(cg: ChannelGraph, maps: ChannelMaps, use: Use, new: nn.Module, old_embed: int) -> None:
    """Keep q.k/sqrt(d) unchanged: zero the query rows of replicated channels, rescale by sqrt(d'/d)."""
    e_new, h = new.embed_dim, new.num_heads
    rep = _replicas(cg, maps, use.inputs[0])
    scale = ((e_new / h) / (old_embed / h)) ** 0.5
    with torch.no_grad():
        q = new.in_proj_weight[:e_new]
        q.mul_(scale)[rep] = 0
        if new.in_proj_bias is not None:
            qb = new.in_proj_bias[:e_new]
            qb.mul_(scale)[rep] = 0


def _has_fresh(cg: ChannelGraph, maps: ChannelMaps, labels: list) -> bool:
    return any(bool((maps.index(cg, lab)[0] < 0).any()) for lab in labels)


def rebuild_param(cg: ChannelGraph, maps: ChannelMaps, gm: fx.GraphModule, use: Use, init: str) -> bool:
    """Rebuild a get_attr parameter/buffer (class tokens, position embeddings, layer-scale gammas)."""
    dims = use.params.get("", {})
    if not any(maps.changed(cg, lab) for lab, _m in dims.values()):
        return False
    old = _get(gm, use.name)
    value = remap_tensor(cg, maps, old, dims, None)
    if init != "preserve":  # new entries of prune/reinit start at zero, or as a fresh norm would (no replication)
        value = remap_tensor(cg, maps, old, dims, torch.full_like(value, use.extra.get("fresh", 0.0)))
    owner, leaf = _owner(gm, use.name)
    _set_tensor(owner, leaf, value, old)
    return True


def rewrite_literals(cg: ChannelGraph, maps: ChannelMaps, gm: fx.GraphModule) -> int:
    """Rewrite int literals in node args (reshape sizes, split sizes, layer_norm shapes) for new widths."""
    from fxscale.analysis.graph import label_width
    tgm = gm.meta.get("fxscale", {}).get("train_gm")
    nodes = {n.name: n for n in gm.graph.nodes}
    nodes.update({"train:" + n.name: n for n in (tgm.graph.nodes if tgm is not None else [])})
    count = 0
    for name, recs in cg.ctx.literals.items():
        node = nodes[name]
        args = list(node.args)
        for where, i, label in recs:
            w = label_width(cg.ctx, label, maps.sizes)
            if where == "varargs":
                if args[1 + i] != w:
                    args[1 + i], count = w, count + 1
            elif where == "seq1":
                seq = list(args[1])
                if seq[i] != w:
                    seq[i], count = w, count + 1
                args[1] = type(node.args[1])(seq) if isinstance(node.args[1], tuple) else seq
            elif where == "arg" and args[i] != w:
                args[i], count = w, count + 1
            elif where == "kwarg" and node.kwargs.get(i) != w:
                node.kwargs, count = {**node.kwargs, i: w}, count + 1
            elif where == "slice":
                args[1], changed = _rewrite_slice(args[1], i, w)
                count += changed
        node.args = tuple(args)
    return count


def _rewrite_slice(idx: Any, at: tuple, w: int) -> tuple[Any, int]:
    """Set one bound of a slice in a getitem index: at = (position in the index tuple, "start" | "stop", sign)."""
    k, bound, sign = at
    items = list(idx) if isinstance(idx, tuple) else [idx]
    s = items[k]
    v = sign * w if sign > 0 or w else None  # a negative bound whose suffix became empty: to the end
    new = slice(v if bound == "start" else s.start, v if bound == "stop" else s.stop, s.step)
    if new == s:
        return idx, 0
    items[k] = new
    return (tuple(items) if isinstance(idx, tuple) else items[0]), 1


def contraction_fixups(cg: ChannelGraph, maps: ChannelMaps, gm: fx.GraphModule, init: str) -> int:
    """Preserve growth of a channel space two activations are contracted over (q @ k^T, scaled dot-product
    attention) would count each replicated channel once per copy: a constant 0/1 mask multiplied into the left
    operand keeps only the first copy of each channel, and scaled_dot_product_attention keeps its traced 1/sqrt(E)
    scale. Other inits start new channels fresh (not function-preserving): nothing to do."""
    if init != "preserve" or not cg.ctx.contractions:
        return 0
    tgm = gm.meta.get("fxscale", {}).get("train_gm")
    nodes = {n.name: (gm, n) for n in gm.graph.nodes}
    nodes.update({"train:" + n.name: (tgm, n) for n in (tgm.graph.nodes if tgm is not None else [])})
    count = 0
    for name, recs in cg.ctx.contractions.items():
        owner, node = nodes[name]
        for operand, label in recs:
            if not maps.changed(cg, label):
                continue
            if node.target is F.scaled_dot_product_attention and len(node.args) < 7 and \
                    node.kwargs.get("scale") is None:
                node.kwargs = {**node.kwargs, "scale": cg.ctx.atoms.width(label) ** -0.5}
            rep = _replicas(cg, maps, label)
            if not bool(rep.any()):
                continue
            src = node.args[operand]
            dtype = getattr(src.meta.get("tensor_meta"), "dtype", torch.float32)
            attr = f"_fxscale_once_{node.name}_{operand}"
            owner.register_buffer(attr, (~rep).to(dtype))
            with owner.graph.inserting_before(node):
                mask = owner.graph.get_attr(attr)
                node.update_arg(operand, owner.graph.call_function(operator.mul, (src, mask)))
            count += 1
    return count


def replaced_tensors(cg: ChannelGraph, maps: ChannelMaps, gm: fx.GraphModule) -> list[torch.Tensor]:
    """The tensors of `gm` the width pass will replace (every tensor of a rebuilt module or parameter), when each
    has a single owner: a copy of `gm` may share them instead of copying weights it throws away."""
    tgm = gm.meta.get("fxscale", {}).get("train_gm")
    seen: dict[int, int] = {}
    for g in (gm, tgm) if tgm is not None else (gm,):
        for _n, t in list(g.named_parameters(remove_duplicate=False)) + list(g.named_buffers(remove_duplicate=False)):
            seen[id(t)] = seen.get(id(t), 0) + 1
    out = []
    for use in cg.ctx.uses.values():
        labels = [lab for dims in use.params.values() for lab, _m in dims.values()]
        if not any(maps.changed(cg, lab) for lab in labels):
            continue
        owner = gm if _has(gm, use.name) or tgm is None else tgm
        for pname in use.params:
            t = _get(owner, f"{use.name}.{pname}" if pname else use.name)
            shared_with_train = tgm is not None and owner is gm and seen.get(id(t)) == 2 and _has(tgm, use.name)
            if isinstance(t, torch.Tensor) and (seen.get(id(t)) == 1 or shared_with_train):
                out.append(t)
    return out


def width_pass(cg: ChannelGraph, maps: ChannelMaps, gm: fx.GraphModule, init: str, noise: float = 0.0,
               seed: int = 0) -> dict[str, int]:
    """Apply new widths to `gm` (a copy of cg.gm) in place; returns counts of rebuilt things."""
    gen = torch.Generator().manual_seed(seed + 1)
    tgm = gm.meta.get("fxscale", {}).get("train_gm")
    mods = params = 0
    for use in cg.ctx.uses.values():
        owner = gm if _has(gm, use.name) or tgm is None else tgm
        if use.kind == "param":
            params += rebuild_param(cg, maps, owner, use, init)
        else:
            mods += rebuild_module(cg, maps, owner, use, init, noise, gen)
    lits = rewrite_literals(cg, maps, gm)  # the PassManager lints and recompiles both graphs after the pass
    fixes = contraction_fixups(cg, maps, gm, init)
    if tgm is not None:
        from fxscale.tracing import share_modules
        share_modules(gm, tgm)
    return {"modules": mods, "params": params, "literals": lits, "contractions": fixes}
