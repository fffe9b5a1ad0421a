"""Channel rules for leaf modules (conv, linear, norms, attention, pooling, activations)."""
from __future__ import annotations

import math
from typing import Any

import torch.fx as fx
from torch import nn

from fxscale.analysis.context import Ctx
from fxscale.analysis.labels import Part, concat



def _in(ctx: Ctx, node: fx.Node, i: int = 0) -> Any:
    arg = node.args[i] if len(node.args) > i else None
    return ctx.lab(arg), ctx.shape(arg)


def _spatial_in(ctx: Ctx, node: fx.Node) -> Any:
    """(labels, shape) of the input of an op that reads dims 2.. as space (those must carry no channel label)."""
    from fxscale.analysis.ops import freeze_spatial
    labels, shape = _in(ctx, node)
    freeze_spatial(ctx, node, labels)
    return labels, shape


def channel_first_out(ctx: Ctx, node: fx.Node, ch: Any) -> list:
    """Output labels of an [N, C, *spatial] op: channel label at dim 1, spatial dims unlabelled."""
    shape = ctx.shape(node)
    return [None, ch] + [None] * (len(shape) - 2)


def unary(ctx: Ctx, node: fx.Node, mod: nn.Module) -> Any:
    """Shape-preserving elementwise module: labels pass through."""
    labels, _ = _in(ctx, node)
    if isinstance(mod, nn.PReLU) and mod.num_parameters > 1:
        u, _seen = ctx.use(node.target, "prelu")
        u.params["weight"] = {0: (labels[1], "select")}
    return labels


def spatial(ctx: Ctx, node: fx.Node, mod: nn.Module) -> Any:
    """Pooling/resizing module: channel dim passes, spatial dims change."""
    labels, shape = _spatial_in(ctx, node)
    if labels is None:
        return None
    return channel_first_out(ctx, node, labels[1] if len(shape) >= 3 else None) if len(shape) >= 3 else labels


def conv(ctx: Ctx, node: fx.Node, mod: nn.Module) -> Any:
    """ConvNd: consumer of the input channels, producer of the output channels (grouped/depthwise aware)."""
    labels, shape = _spatial_in(ctx, node)
    name = node.target
    lin = ctx.need(labels[1] if labels else None, shape[1], f"input of {name}")
    u, seen = ctx.use(name, "conv")
    g, cin, cout = mod.groups, mod.in_channels, mod.out_channels
    if seen:
        ctx.tie(u.inputs[0], lin, f"{name} (called twice)")
        return channel_first_out(ctx, node, u.outputs[0])
    u.inputs.append(lin)
    if g == cin and g > 1:  # depthwise (with channel multiplier cout // cin)
        lout = tuple(Part(p.atom, p.inner * (cout // cin)) for p in ctx.atoms.expand(lin))
        u.extra["depthwise"] = cout // cin  # channel multiplier
        u.params["weight"] = {0: (lout, "select")}
    else:
        u.producer = True
        if g > 1:
            lin, lout = _grouped(ctx, name, lin, cout, g)
        else:
            lout = ctx.atoms.label(cout, name)
        u.params["weight"] = {0: (lout, "select"), 1: (_per_group(lin, g, ctx), "reduce")}
    if mod.bias is not None:
        u.params["bias"] = {0: (lout, "select")}
    u.outputs.append(lout)
    return channel_first_out(ctx, node, lout)


def std_conv(ctx: Ctx, node: fx.Node, mod: nn.Module) -> Any:
    """Weight-standardised conv (timm StdConv2dSame / ScaledStdConv2dSame): a conv whose weight rows are normalised
    over the input channels and kernel, so only the output channels may change (the input channels are fixed)."""
    out = conv(ctx, node, mod)
    u = ctx.uses[node.target]
    ctx.atoms.freeze(u.inputs[0], f"{node.target} ({type(mod).__name__}): weight standardisation over the input "
                                  "channels")
    if isinstance(getattr(mod, "gain", None), nn.Parameter):
        u.params["gain"] = {0: (u.outputs[0], "select")}
    return out


def conv_cost(mod: nn.Module, ins: list, out: tuple) -> tuple[str, int]:
    """ConvNd MACs = N * Cout * prod(out spatial) * Cin/groups * prod(kernel); depthwise stays depthwise."""
    cin, cout = ins[0][1], out[1]
    dw = mod.groups == mod.in_channels and mod.groups > 1
    g = cin if dw else mod.groups
    kind = ("dwconv" if dw else "gconv" if g > 1 else "conv") + f"_k{mod.kernel_size[0]}"
    return kind, out[0] * cout * math.prod(out[2:]) * (cin // g) * math.prod(mod.kernel_size)


def _grouped(ctx: Ctx, name: str, lin: tuple, cout: int, g: int) -> tuple:
    """Refine input/output of a grouped conv into g equal parts: input parts share one index map."""
    per_in = ctx.atoms.label(ctx.atoms.width(lin) // g, f"{name} group input")
    ctx.tie(lin, per_in * g, f"{name} groups={g}")
    parts = [ctx.atoms.label(cout // g, name) for _ in range(g)]
    for p in parts[1:]:
        ctx.atoms.tie_sizes(parts[0][0].atom, p[0].atom)
    return per_in * g, concat(parts)


def _per_group(lin: tuple, g: int, ctx: Ctx) -> tuple:
    """The label of a grouped conv weight's input dim (one group's slice)."""
    return lin if g == 1 else lin[: len(lin) // g]


def conv_transpose(ctx: Ctx, node: fx.Node, mod: nn.Module) -> Any:
    """ConvTransposeNd: weight is [in, out/groups, *k]."""
    labels, shape = _spatial_in(ctx, node)
    name = node.target
    lin = ctx.need(labels[1] if labels else None, shape[1], f"input of {name}")
    u, seen = ctx.use(name, "convT")
    if seen:
        ctx.tie(u.inputs[0], lin, f"{name} (called twice)")
        return channel_first_out(ctx, node, u.outputs[0])
    if mod.groups != 1:
        ctx.atoms.freeze(lin, f"{name}: grouped ConvTranspose is not rewritten")
    lout = ctx.atoms.label(mod.out_channels, name)
    u.producer = True
    if mod.groups != 1:
        ctx.atoms.freeze(lout, f"{name}: grouped ConvTranspose is not rewritten")
    u.inputs.append(lin)
    u.outputs.append(lout)
    u.params["weight"] = {0: (lin, "reduce"), 1: (lout, "select")}
    if mod.bias is not None:
        u.params["bias"] = {0: (lout, "select")}
    return channel_first_out(ctx, node, lout)


def conv_transpose_cost(mod: nn.Module, ins: list, out: tuple) -> tuple[str, int]:
    """ConvTransposeNd MACs = N * Cin * prod(in spatial) * Cout/groups * prod(kernel)."""
    x = ins[0]
    return "convT", x[0] * x[1] * math.prod(x[2:]) * (out[1] // mod.groups) * math.prod(mod.kernel_size)


def linear(ctx: Ctx, node: fx.Node, mod: nn.Module) -> Any:
    """Linear on the last dim: consumer of in_features, producer of out_features."""
    labels, shape = _in(ctx, node)
    name = node.target
    lin = ctx.need(labels[-1] if labels else None, shape[-1], f"input of {name}")
    u, seen = ctx.use(name, "linear")
    if seen:
        ctx.tie(u.inputs[0], lin, f"{name} (called twice)")
        lout = u.outputs[0]
    else:
        lout = ctx.atoms.label(mod.out_features, name)
        u.producer = True
        u.inputs.append(lin)
        u.outputs.append(lout)
        u.params["weight"] = {0: (lout, "select"), 1: (lin, "reduce")}
        if mod.bias is not None:
            u.params["bias"] = {0: (lout, "select")}
    return list(labels[:-1]) + [lout] if labels else [None] * (len(shape) - 1) + [lout]


def linear_cost(mod: nn.Module, ins: list, out: tuple) -> tuple[str, int]:
    """Linear MACs = rows * in_features * out_features (rows = product of the leading dims)."""
    return "linear", math.prod(out[:-1]) * ins[0][-1] * out[-1]


def batchnorm(ctx: Ctx, node: fx.Node, mod: nn.Module) -> Any:
    """BatchNorm/InstanceNorm: per-channel follower (affine params and running stats)."""
    labels, shape = _in(ctx, node)
    ch = ctx.need(labels[1] if labels else None, shape[1], f"input of {node.target}")
    u, _seen = ctx.use(node.target, "bn")
    for p in ("weight", "bias", "running_mean", "running_var"):
        if getattr(mod, p, None) is not None:
            if p in u.params:
                ctx.tie(u.params[p][0][0], ch, f"{node.target} (called twice)")
            u.params[p] = {0: (ch, "select")}
    out = list(labels) if labels else [None] * len(shape)
    out[1] = ch
    return out


def groupnorm(ctx: Ctx, node: fx.Node, mod: nn.Module) -> Any:
    """GroupNorm: follower whose width must stay divisible by num_groups."""
    out = batchnorm(ctx, node, mod)
    ctx.uses[node.target].kind = "gn"
    ctx.atoms.require_divisor(out[1], mod.num_groups)
    return out


def layernorm(ctx: Ctx, node: fx.Node, mod: nn.Module) -> Any:
    """LayerNorm over the last dim: follower (other normalized dims freeze the channel)."""
    labels, shape = _in(ctx, node)
    u, _seen = ctx.use(node.target, "ln")
    last = ctx.need(labels[-1] if labels else None, shape[-1], f"input of {node.target}")
    if len(mod.normalized_shape) != 1:
        ctx.atoms.freeze(last, f"{node.target}: LayerNorm over {len(mod.normalized_shape)} dims")
    for p in ("weight", "bias"):
        if getattr(mod, p, None) is not None:
            u.params[p] = {0: (last, "select")}
    return list(labels[:-1]) + [last] if labels else [None] * (len(shape) - 1) + [last]


def mha(ctx: Ctx, node: fx.Node, mod: nn.MultiheadAttention) -> Any:
    """nn.MultiheadAttention: q/k/v/out share the embed space, split into num_heads equal parts."""
    name = node.target
    args = list(node.args) + [node.kwargs.get(k) for k in ("query", "key", "value")[len(node.args):]]
    q, k, v = args[:3]
    lq, sq = ctx.lab(q), ctx.shape(q)
    embed = ctx.need(lq[-1] if lq else None, sq[-1], f"input of {name}")
    for other in (k, v):
        lo = ctx.lab(other)
        if mod._qkv_same_embed_dim:
            ctx.tie(embed, ctx.need(lo[-1] if lo else None, ctx.shape(other)[-1], name), name)
        else:
            ctx.atoms.freeze(embed, f"{name}: kdim/vdim differ from embed_dim")
    h = mod.num_heads
    head = ctx.atoms.label(mod.embed_dim // h, f"{name} head")
    heads = [ctx.atoms.label(mod.embed_dim // h, f"{name} head") for _ in range(h)]
    for p in heads:
        ctx.atoms.tie_sizes(head[0].atom, p[0].atom)
    ctx.tie(embed, concat(heads), f"{name} heads={h}")
    u, _seen = ctx.use(name, "mha")
    u.inputs.append(embed)
    u.outputs.append(embed)
    qkv = embed * 3
    u.params.update({"in_proj_weight": {0: (qkv, "select"), 1: (embed, "reduce")},
                     "out_proj.weight": {0: (embed, "select"), 1: (embed, "reduce")}})
    if mod.in_proj_bias is not None:
        u.params["in_proj_bias"] = {0: (qkv, "select")}
    if mod.out_proj.bias is not None:
        u.params["out_proj.bias"] = {0: (embed, "select")}
    for extra in ("bias_k", "bias_v"):
        if getattr(mod, extra, None) is not None:
            u.params[extra] = {2: (embed, "select")}
    out = list(lq[:-1]) + [embed] if lq else [None] * (len(sq) - 1) + [embed]
    wshape = ctx.shape(node)[1]
    return (out, [None] * len(wshape) if wshape is not None else None)


def mha_cost(mod: nn.MultiheadAttention, ins: list, out: tuple) -> tuple[str, int]:
    """MHA MACs = in-proj (L*N*E*(E+Ek+Ev)) + scores and mixing (2*N*L*S*E) + out-proj (L*N*E*E)."""
    q, k, v = ins[:3]
    b = 0 if mod.batch_first else 1
    n, lq, s = q[b], q[1 - b], k[1 - b]
    e = q[-1]
    return "attention", n * (lq * e * e + s * e * k[-1] + s * e * v[-1] + 2 * lq * s * e + lq * e * e)


def flatten_module(ctx: Ctx, node: fx.Node, mod: nn.Flatten) -> Any:
    """nn.Flatten: a reshape merging dims start..end."""
    from fxscale.analysis.ops import reshape_labels
    return reshape_labels(ctx, node, node.args[0], None)


# ---- size attributes patched after a width change (each next to its op's rule) ----------------------
def patch_conv(mod: nn.Module, use: Any) -> None:
    """ConvNd: out/in channels from the weight; a depthwise conv stays depthwise."""
    mod.out_channels = mod.weight.shape[0]
    mult = use.extra.get("depthwise")
    if mult:
        mod.groups = mod.in_channels = mod.out_channels // mult
    else:
        mod.in_channels = mod.weight.shape[1] * mod.groups


def patch_conv_transpose(mod: nn.Module, use: Any) -> None:
    """ConvTransposeNd: weight is [Cin, Cout/groups, *k]."""
    mod.in_channels = mod.weight.shape[0]
    mod.out_channels = mod.weight.shape[1] * mod.groups


def patch_linear(mod: nn.Module, use: Any) -> None:
    mod.out_features, mod.in_features = mod.weight.shape


def patch_batchnorm(mod: nn.Module, use: Any) -> None:
    t = mod.weight if mod.weight is not None else mod.running_mean
    if t is not None:
        mod.num_features = t.shape[0]


def patch_groupnorm(mod: nn.Module, use: Any) -> None:
    mod.num_channels = mod.weight.shape[0]


def patch_layernorm(mod: nn.Module, use: Any) -> None:
    if mod.weight is not None:
        mod.normalized_shape = (mod.weight.shape[0],)


def patch_mha(mod: nn.Module, use: Any) -> None:
    e = mod.out_proj.weight.shape[0]
    mod.embed_dim = mod.kdim = mod.vdim = e
    mod.head_dim = e // mod.num_heads
    mod.out_proj.in_features = mod.out_proj.out_features = e


__all__ = ["unary", "spatial", "conv", "std_conv", "conv_cost", "conv_transpose", "conv_transpose_cost", "linear", "linear_cost",
           "batchnorm", "groupnorm", "layernorm", "mha", "mha_cost", "flatten_module", "patch_conv",
           "patch_conv_transpose", "patch_linear", "patch_batchnorm", "patch_groupnorm", "patch_layernorm", "patch_mha",
           "channel_first_out"]
