"""Tiny hand-built nets, one per channel construct fxscale must handle, plus a random DAG-CNN strategy.

Every factory in ``NETS`` returns ``(module, example_input)`` with the module in eval mode and all
parameters and BN statistics re-initialised by ``fxscale.zoo.randomize_`` (seeded, so outputs are
non-trivial and reproducible). In train mode ``dropout_ops`` is stochastic and ``train_only_branch``
returns an extra aux output. All nets trace with plain ``torch.fx.symbolic_trace``: nn.MultiheadAttention
is a leaf (call_module) by default, and no net needs extra leaf modules.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

from fxscale.zoo import randomize_

Example = tuple[nn.Module, torch.Tensor]


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv2d (no bias) -> BatchNorm2d -> ReLU with 'same' padding."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision's shufflenet channel shuffle: view-transpose-view with x.size()-derived sizes."""
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ConvChain(nn.Module):
    """conv-BN-ReLU, maxpool, conv-BN-ReLU, adaptive avg pool, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(3, 8), nn.MaxPool2d(2), conv_bn_relu(8, 16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class FlattenLinear(nn.Module):
    """conv -> flatten of C*H*W features (no adaptive pool) -> linear: each channel owns H*W inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(3, 8), conv_bn_relu(8, 6, stride=2))
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block; projection shortcut if asked or when stride or width changes, else identity."""

    def __init__(self, cin: int, cout: int, stride: int = 1, projection: bool = False) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride=stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if projection or stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class Residual(nn.Module):
    """Stem, an identity-shortcut block, a projection-shortcut block, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.blocks = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 12, stride=2))
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class SubMulDiv(nn.Module):
    """Two branches combined with x - y, x * y and x / y, all tying their channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = conv_bn_relu(3, 8)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.out = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.a(x), self.b(x)
        return self.out((a - b) * b + a / (1.0 + b * b))


class SqueezeExcite(nn.Module):
    """x * sigmoid(conv1x1(relu(conv1x1(avgpool(x))))): an [N, C, 1, 1] gate broadcast over H, W."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn_relu(3, 12)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(12, 4, 1), nn.Conv2d(4, 12, 1)
        self.head = nn.Conv2d(12, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.head(x * torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x))))))


class SqueezeExciteLinear(nn.Module):
    """SE with Linear layers: gate = sigmoid(fc(mean(x))).view(n, c, 1, 1) using x.size()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn_relu(3, 8)
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.head = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        n, c = x.size(0), x.size(1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return self.head(x * gate.view(n, c, 1, 1))


class DenseConcat(nn.Module):
    """DenseNet-like: each layer's output is concatenated to its input along channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
        self.layer2 = nn.Sequential(nn.BatchNorm2d(12), nn.ReLU(), nn.Conv2d(12, 4, 3, padding=1))
        self.transition = nn.Sequential(nn.BatchNorm2d(16), nn.Conv2d(16, 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.layer1(x)], 1)
        x = torch.cat([x, self.layer2(x)], 1)
        return self.transition(x)


class StackReduce(nn.Module):
    """torch.stack of two branches along a new dim 1, then a mean over it (channels tied)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = conv_bn_relu(3, 8), conv_bn_relu(3, 8, k=1)
        self.out = nn.Conv2d(8, 6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.stack([self.a(x), self.b(x)], dim=1).mean(dim=1))


class SplitChunk(nn.Module):
    """Uneven torch.split and Tensor.chunk along channels feeding different convs, then cat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 12)
        self.left, self.right = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.c1, self.c2 = nn.Conv2d(6, 4, 1), nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = torch.split(self.stem(x), [4, 8], dim=1)
        y = torch.cat([self.left(left), self.right(right)], dim=1)
        y1, y2 = y.chunk(2, dim=1)
        return torch.cat([self.c1(y1), self.c2(y2)], dim=1)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit: stride 1 chunks and keeps half; stride 2 runs both branches; cat; shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride, half = stride, cout // 2
        self.branch1 = nn.Identity()
        if stride > 1:
            self.branch1 = nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
                                         nn.BatchNorm2d(cin), conv_bn_relu(cin, half, k=1))
        bin_ = cin if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn_relu(bin_, half, k=1),
                                     nn.Conv2d(half, half, 3, stride, 1, groups=half, bias=False),
                                     nn.BatchNorm2d(half), conv_bn_relu(half, half, k=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNet(nn.Module):
    """Stem, a stride-2 shuffle unit, two stride-1 shuffle units, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.units = nn.Sequential(ShuffleUnit(8, 16, 2), ShuffleUnit(16, 16, 1), ShuffleUnit(16, 16, 1))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.units(self.stem(x)).mean([2, 3]))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetBlocks(nn.Module):
    """Stem, a residual inverted-residual block, a stride-2 one, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 4)
        self.blocks = nn.Sequential(InvertedResidual(4, 4, 1), InvertedResidual(4, 8, 2))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class GroupedBottleneck(nn.Module):
    """ResNeXt-like bottleneck: 1x1, 3x3 grouped (groups=4), 1x1, identity shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, 8)
        self.body = nn.Sequential(conv_bn_relu(8, 16, k=1), conv_bn_relu(16, 16, groups=4),
                                  nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return F.relu(x + self.body(x))


class ConvTranspose(nn.Module):
    """Encoder conv (stride 2), ConvTranspose2d back up, skip add with the encoder input, 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = conv_bn_relu(3, 8)
        self.down = conv_bn_relu(8, 12, stride=2)
        self.up = nn.ConvTranspose2d(12, 8, 2, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        return self.head(F.relu(self.bn(self.up(self.down(e))) + e))


class Conv1dNet(nn.Module):
    """Conv1d-BN1d-ReLU twice on [N, C, L], adaptive avg pool, flatten, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8), nn.ReLU(),
                                      nn.Conv1d(8, 12, 3, stride=2, padding=1), nn.BatchNorm1d(12), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class GroupNormNet(nn.Module):
    """conv -> GroupNorm(4 groups) -> ReLU twice: widths must stay multiples of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                                  nn.Conv2d(16, 6, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7, permute to NHWC, LayerNorm, Linear, GELU, Linear, layer-scale gamma, permute back, add."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        x = x + y.permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


class InstanceNormNet(nn.Module):
    """conv -> InstanceNorm2d(affine) -> ReLU -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True), nn.ReLU(),
                                  nn.Conv2d(8, 6, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class UnaryOps(nn.Module):
    """Channel-preserving unary ops: ReLU, sigmoid, hardswish, GELU, Dropout module and F.dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.act, self.hswish, self.drop = nn.ReLU(), nn.Hardswish(), nn.Dropout(0.2)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.act(self.conv1(x)))
        x = F.gelu(self.hswish(torch.sigmoid(x) * 4.0 - 2.0))
        x = F.dropout(self.drop(x), 0.1, training=self.training)
        return self.fc(x.mean((2, 3)))


class AvgPoolNet(nn.Module):
    """AvgPool2d between convs, then flatten of the remaining C*2*2 features."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(3, 8), nn.AvgPool2d(2), conv_bn_relu(8, 12), nn.AvgPool2d(2, 2))
        self.fc = nn.Linear(12 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.body(x), 1))


class SpatialReduce(nn.Module):
    """mean over (H, W) with keepdim=True into a 1x1 conv; sum with keepdim=False into a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = conv_bn_relu(3, 8)
        self.proj = nn.Conv2d(8, 5, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        pooled = self.proj(x.mean(dim=(2, 3), keepdim=True)).flatten(1)
        return pooled + self.fc(x.sum(dim=[2, 3]) / 64.0)


class SharedConv(nn.Module):
    """One conv module applied to two branches (shared weights), results added."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = conv_bn_relu(3, 8), conv_bn_relu(3, 8, k=1)
        self.shared = nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.a(x)) + self.shared(self.b(x))


class MultiOutput(nn.Module):
    """A backbone with two heads returned as a tuple (class logits, 1x1-conv map)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(conv_bn_relu(3, 8), conv_bn_relu(8, 12, stride=2))
        self.cls = nn.Linear(12, 5)
        self.seg = nn.Conv2d(12, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        return self.cls(f.mean((2, 3))), self.seg(f)


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: LN, MultiheadAttention (batch_first), add, LN, MLP, add."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyViT(nn.Module):
    """ViT: conv patches reshaped with a literal hidden size (as torchvision), class token, pos-emb, 2 blocks."""

    def __init__(self, image_size: int = 16, patch: int = 4, hidden_dim: int = 16) -> None:
        super().__init__()
        self.patch, self.hidden_dim = patch, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, patch, stride=patch)
        seq = (image_size // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, seq, hidden_dim).normal_(std=0.02))
        self.blocks = nn.Sequential(EncoderBlock(hidden_dim, 4, 32), EncoderBlock(hidden_dim, 4, 32))
        self.ln = nn.LayerNorm(hidden_dim)
        self.head = nn.Linear(hidden_dim, 5)

    def _process_input(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, (h // self.patch) * (w // self.patch))
        return x.permute(0, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.blocks(x))[:, 0])


class TrainOnlyBranch(nn.Module):
    """GoogLeNet-like: an aux head used only when self.training; train returns (main, aux), eval main."""

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = conv_bn_relu(3, 8)
        self.stage2 = conv_bn_relu(8, 12, stride=2)
        self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4, 5))
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> Any:
        f = self.stage1(x)
        aux = self.aux(f) if self.training else None
        out = self.fc(self.stage2(f).mean((2, 3)))
        return (out, aux) if self.training else out


def make_example(cls: Callable[[], nn.Module], shape: Sequence[int], seed: int = 0) -> Example:
    """Build ``cls()``, randomise it from ``seed``, return it in eval mode with a seeded input."""
    net = randomize_(cls(), seed)
    gen = torch.Generator().manual_seed(seed + 1)
    return net.eval(), torch.randn(*shape, generator=gen)


def _entry(cls: Callable[[], nn.Module], *shape: int) -> Callable[[], Example]:
    """A zero-argument NETS factory."""
    return functools.partial(make_example, cls, shape)


NETS: Mapping[str, Callable[[], Example]] = MappingProxyType({
    "conv_chain": _entry(ConvChain, 2, 3, 16, 16),
    "flatten_linear": _entry(FlattenLinear, 2, 3, 8, 8),
    "residual": _entry(Residual, 2, 3, 12, 12),
    "sub_mul_div": _entry(SubMulDiv, 2, 3, 8, 8),
    "squeeze_excite": _entry(SqueezeExcite, 2, 3, 8, 8),
    "squeeze_excite_linear": _entry(SqueezeExciteLinear, 2, 3, 8, 8),
    "dense_concat": _entry(DenseConcat, 2, 3, 8, 8),
    "stack_reduce": _entry(StackReduce, 2, 3, 8, 8),
    "split_chunk": _entry(SplitChunk, 2, 3, 8, 8),
    "channel_shuffle": _entry(ShuffleNet, 2, 3, 16, 16),
    "inverted_residual": _entry(MobileNetBlocks, 2, 3, 12, 12),
    "grouped_conv": _entry(GroupedBottleneck, 2, 3, 8, 8),
    "conv_transpose": _entry(ConvTranspose, 2, 3, 8, 8),
    "conv1d": _entry(Conv1dNet, 2, 4, 16),
    "group_norm": _entry(GroupNormNet, 2, 3, 8, 8),
    "layernorm_channels_last": _entry(ConvNeXtBlock, 2, 3, 16, 16),
    "instance_norm": _entry(InstanceNormNet, 2, 3, 8, 8),
    "unary_ops": _entry(UnaryOps, 2, 3, 8, 8),
    "avgpool": _entry(AvgPoolNet, 2, 3, 8, 8),
    "spatial_reduce": _entry(SpatialReduce, 2, 3, 8, 8),
    "shared_conv": _entry(SharedConv, 2, 3, 8, 8),
    "multi_output": _entry(MultiOutput, 2, 3, 8, 8),
    "tiny_vit": _entry(TinyViT, 2, 3, 16, 16),
    "train_only_branch": _entry(TrainOnlyBranch, 2, 3, 8, 8),
})


# ---------------------------------------------------------------- random DAG CNNs (hypothesis)

DAG_WIDTHS = tuple(range(4, 17, 2))  # even widths: every block input stays divisible by 2
DAG_KINDS = ("conv", "residual", "concat", "split", "dwsep", "grouped")
DAG_INPUT_SIZE = 12


class ConcatBlock(nn.Module):
    """Two branches (1x1 and 3x3 conv-BN-ReLU) on the same input, concatenated along channels."""

    def __init__(self, cin: int, branches: Sequence[int]) -> None:
        super().__init__()
        self.b1, self.b2 = conv_bn_relu(cin, branches[0], k=1), conv_bn_relu(cin, branches[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x)], dim=1)


class SplitBlock(nn.Module):
    """torch.split (given sizes) or Tensor.chunk(2) along channels, a conv per part, then cat."""

    def __init__(self, op: str, sizes: Sequence[int], outs: Sequence[int]) -> None:
        super().__init__()
        self.op, self.sizes = op, list(sizes)
        self.c1, self.c2 = conv_bn_relu(sizes[0], outs[0], k=1), conv_bn_relu(sizes[1], outs[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1) if self.op == "chunk" else torch.split(x, self.sizes, dim=1)
        return torch.cat([self.c1(a), self.c2(b)], dim=1)


def build_block(block: Mapping[str, Any]) -> nn.Module:
    """The module for one block dict of a DAG spec."""
    kind, cin, cout, stride = block["kind"], block["in"], block["out"], block.get("stride", 1)
    if kind == "conv":
        return conv_bn_relu(cin, cout, block["kernel"], stride)
    if kind == "residual":
        return BasicBlock(cin, cout, stride, projection=block["shortcut"] == "projection")
    if kind == "concat":
        return ConcatBlock(cin, block["branches"])
    if kind == "split":
        return SplitBlock(block["op"], block["sizes"], block["outs"])
    if kind == "dwsep":
        return nn.Sequential(conv_bn_relu(cin, cin, 3, stride, groups=cin), conv_bn_relu(cin, cout, k=1))
    if kind == "grouped":
        return conv_bn_relu(cin, cout, 3, stride, groups=block["groups"])
    raise ValueError(f"unknown DAG block kind {kind!r}")


class RandomDagNet(nn.Module):
    """A CNN built from a plain spec (list of block dicts with 'kind', 'in', 'out'), then pool + linear."""

    def __init__(self, spec: Sequence[Mapping[str, Any]], num_classes: int = 5) -> None:
        super().__init__()
        self.spec = [dict(b) for b in spec]
        for prev, block in zip([{"out": 3}] + self.spec, self.spec):
            if block["in"] != prev["out"]:
                raise ValueError(f"block {block} takes {block['in']} channels, previous gives {prev['out']}")
        self.blocks = nn.Sequential(*[build_block(b) for b in self.spec])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.spec[-1]["out"], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(x)), 1))

    def example_input(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        """A seeded [batch, 3, 12, 12] input."""
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, 3, DAG_INPUT_SIZE, DAG_INPUT_SIZE, generator=gen)

    def __repr__(self) -> str:
        return f"RandomDagNet(spec={self.spec!r})"


def _draw_block(draw: Callable[[Any], Any], kind: str, cin: int, stride: int) -> dict[str, Any]:
    """Draw the parameters of one block of ``kind`` taking ``cin`` channels."""
    width = draw(st.sampled_from(DAG_WIDTHS))
    if kind == "conv":
        return {"kind": kind, "in": cin, "out": width, "kernel": draw(st.sampled_from((1, 3))), "stride": stride}
    if kind == "residual":
        shortcut = draw(st.sampled_from(("identity", "projection"))) if stride == 1 else "projection"
        out = cin if shortcut == "identity" else width
        return {"kind": kind, "in": cin, "out": out, "stride": stride, "shortcut": shortcut}
    if kind == "concat":
        branches = [width, draw(st.sampled_from(DAG_WIDTHS))]
        return {"kind": kind, "in": cin, "out": sum(branches), "branches": branches}
    if kind == "split":
        op = draw(st.sampled_from(("split", "chunk")))
        first = cin // 2 if op == "chunk" else draw(st.integers(1, cin - 1))
        outs = [width, draw(st.sampled_from(DAG_WIDTHS))]
        return {"kind": kind, "in": cin, "out": sum(outs), "op": op, "sizes": [first, cin - first], "outs": outs}
    if kind == "dwsep":
        return {"kind": kind, "in": cin, "out": width, "stride": stride}
    groups = draw(st.sampled_from([g for g in (2, 4) if cin % g == 0]))
    out = draw(st.sampled_from([w for w in DAG_WIDTHS if w % groups == 0]))
    return {"kind": kind, "in": cin, "out": out, "stride": stride, "groups": groups}


@st.composite
def dag_specs(draw: Callable[[Any], Any], min_blocks: int = 2, max_blocks: int = 6) -> list[dict[str, Any]]:
    """A DAG spec: a conv stem then 2-6 random blocks; stride 2 only while the feature map is >= 4 px."""
    stem = {"kind": "conv", "in": 3, "out": draw(st.sampled_from(DAG_WIDTHS)), "kernel": 3, "stride": 1}
    spec, size = [stem], DAG_INPUT_SIZE
    for _ in range(draw(st.integers(min_blocks, max_blocks))):
        kind = draw(st.sampled_from(DAG_KINDS))
        can_stride = size >= 4 and kind in ("conv", "residual", "dwsep", "grouped")
        stride = draw(st.sampled_from((1, 2))) if can_stride else 1
        spec.append(_draw_block(draw, kind, spec[-1]["out"], stride))
        size = (size + 1) // 2 if stride == 2 else size
    return spec


def make_dag_net(spec: Sequence[Mapping[str, Any]], seed: int = 0) -> RandomDagNet:
    """RandomDagNet(spec) randomised by ``randomize_(net, seed)``, in eval mode."""
    net = RandomDagNet(spec)
    randomize_(net, seed)
    return net.eval()


def random_dag_cnn(min_blocks: int = 2, max_blocks: int = 6) -> st.SearchStrategy[RandomDagNet]:
    """Hypothesis strategy of randomised eval-mode RandomDagNets; their repr is the plain spec."""
    return dag_specs(min_blocks, max_blocks).map(make_dag_net)
