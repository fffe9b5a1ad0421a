"""Model zoo: torchvision classifiers and segmentation models and small digits CNNs by name, test-size specs and
seeded re-initialisation.

googlenet and inception_v3 are built with ``aux_logits=True`` (and ``init_weights=True`` when no weights are
given) so that train mode returns their auxiliary heads: a scaler that only looks at eval traces misses them.
Smallest square inputs measured on torchvision 0.29: most CNNs run from 8 px (alexnet 63, densenet 29,
vgg/convnext 32, squeezenet1_1 17, squeezenet1_0 21, googlenet 15), swin/swin_v2 from 8 px (they pad to the
window), inception_v3 from 75 px in eval but only from 299 px in train mode (its aux head needs a 17x17
Mixed_6e map), ViTs and maxvit_t only at their fixed 224 px (``create_model("vit_b_16", image_size=32)``
builds a smaller ViT). The small test size is 64 px (room to halve the resolution) or that minimum if larger.

``timm:NAME`` names any timm model (timm is optional: a clear error says to install it). timm models are always
built with random weights (``pretrained=False``: nothing is downloaded); their family is the timm module that
defines them (``timm:resnet18d`` -> ``resnet``), their small size 64 px. Models whose timm config has a fixed input
size (ViTs, LeViT, CrossViT...) are marked ``fixed_input``: build them for the small size with ``img_size=64``.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.resnet import BasicBlock

from fxscale.errors import FxscaleError
from fxscale.ops.table import module_row

if TYPE_CHECKING:
    import os

    from fxscale.plan import ScalingPlan

REPRESENTATIVE_SLICE = (
    "resnet18", "mobilenet_v2", "efficientnet_b0", "densenet121", "shufflenet_v2_x1_0", "squeezenet1_1",
    "vgg11_bn", "regnet_y_400mf", "convnext_tiny", "vit_b_16", "googlenet", "mobilenet_v3_small", "swin_t",
)
SLOW_PARAMS_MILLIONS = 150.0  # regnet_y_128gf, vit_h_14, vit_l_16/32, convnext_large: seconds to build each
_AUX_MODELS = ("googlenet", "inception_v3")
_SEGMENTATION_PREFIXES = ("fcn", "deeplabv3", "lraspp")
_FAMILY_PREFIXES = (
    "wide_resnet", "resnext", "resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet_v2", "efficientnet",
    "regnet_x", "regnet_y", "shufflenet_v2", "squeezenet", "densenet", "mnasnet", "convnext", "swin_v2", "swin",
    "maxvit", "vit", "vgg", "alexnet", "googlenet", "inception_v3", "digits", *_SEGMENTATION_PREFIXES,
)
_SMALL_INPUT = MappingProxyType({"inception_v3": 75, "vit": 224, "maxvit": 224, "digits": 8})
# torchvision's segmentation models (FCN, DeepLabV3, LR-ASPP): dict outputs {"out", "aux"} at the input's size,
# trained at 520 px on 21 VOC classes; built without any backbone download unless weights are asked for
_FULL_INPUT = MappingProxyType({"inception_v3": 299, "digits": 8, "fcn": 520, "deeplabv3": 520, "lraspp": 520})
TASKS = ("classification", "segmentation")
_TRAIN_INPUT = MappingProxyType({"inception_v3": 299})
DEFAULT_SMALL_INPUT = 64


@dataclass(frozen=True)
class ZooSpec:
    """What tests and benchmarks need to know about one zoo model."""

    name: str
    family: str
    small_input_size: int  # square side used by fast tests (eval mode)
    full_input_size: int  # the architecture's native resolution
    train_input_size: int  # smallest tested side at which train mode (aux heads included) runs
    params_millions: float
    in_slice: bool
    slow: bool
    in_channels: int = 3
    num_classes: int = 1000
    fixed_input: bool = False  # built for one input size (timm ViTs): create_model(name, img_size=side) for others
    task: str = "classification"  # or "segmentation": dense {"out", "aux"} outputs at the input's size

    def example_input(self, batch: int = 1, size: int | None = None, seed: int = 0) -> torch.Tensor:
        """A seeded random NCHW input at ``size`` (default: the small size)."""
        side = self.small_input_size if size is None else size
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(batch, self.in_channels, side, side, generator=gen)


class DigitsVGG(nn.Module):
    """VGG-style CNN for 1x8x8 digits: conv-BN-ReLU blocks, max-pools, adaptive pool, linear head."""

    def __init__(self, widths: Sequence[int] = (16, 16, 32, 32, 64), pool_after: Sequence[int] = (1, 3),
                 in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(cin, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape [N, num_classes]."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class DigitsResNet(nn.Module):
    """ResNet-style CNN for 1x8x8 digits: torchvision BasicBlocks with identity and projection shortcuts."""

    def __init__(self, widths: Sequence[int] = (16, 32), blocks: Sequence[int] = (2, 2),
                 in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, blocks)):
            stages.append(_resnet_stage(cin, width, depth, stride=1 if i == 0 else 2))
            cin = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape [N, num_classes]."""
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def _resnet_stage(cin: int, width: int, depth: int, stride: int) -> nn.Sequential:
    """``depth`` BasicBlocks; the first gets a 1x1 conv-BN projection when shape changes."""
    down = None
    if stride != 1 or cin != width:
        down = nn.Sequential(nn.Conv2d(cin, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
    blocks = [BasicBlock(cin, width, stride, down)] + [BasicBlock(width, width) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


def digits_vgg(**kwargs: object) -> nn.Module:
    """Small VGG-style digits CNN (~35k parameters)."""
    return DigitsVGG(**kwargs)  # type: ignore[arg-type]


def digits_resnet(**kwargs: object) -> nn.Module:
    """Small ResNet-style digits CNN (~43k parameters)."""
    return DigitsResNet(**kwargs)  # type: ignore[arg-type]


_LOCAL_MODELS: Mapping[str, Callable[..., nn.Module]] = MappingProxyType(
    {"digits_vgg": digits_vgg, "digits_resnet": digits_resnet})


def _torchvision_names() -> list[str]:
    """Every torchvision classification and segmentation builder name."""
    return list(tvm.list_models(module=tvm)) + _segmentation_names()


def _segmentation_names() -> list[str]:
    """torchvision's semantic segmentation builders (torchvision.models.segmentation)."""
    return list(tvm.list_models(module=tvm.segmentation))


def _all_names() -> list[str]:
    """Torchvision and built-in model names, sorted."""
    return sorted(_torchvision_names() + list(_LOCAL_MODELS))


def _unknown(name: str) -> FxscaleError:
    """An error for an unknown model name that lists close matches."""
    close = difflib.get_close_matches(name, _all_names(), n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else "; see fxscale.zoo.list_models()"
    return FxscaleError(f"unknown model {name!r}{hint}")


def family_of(name: str) -> str:
    """The architecture family of a zoo name (``resnet`` for resnet18, ``swin_v2`` for swin_v2_t)."""
    return next((p for p in _FAMILY_PREFIXES if name.startswith(p)), name)


def _params_millions(name: str) -> float:
    """Parameter count in millions: torchvision weight metadata (no aux heads), or a built local model."""
    if name in _LOCAL_MODELS:
        return sum(p.numel() for p in _LOCAL_MODELS[name]().parameters()) / 1e6
    return tvm.get_model_weights(name).DEFAULT.meta["num_params"] / 1e6


TIMM_PREFIX = "timm:"


def _timm() -> object:
    """The timm package, or an FxscaleError saying how to get it."""
    try:
        import timm
    except ImportError as exc:
        raise FxscaleError("timm:NAME models need the optional dependency timm: pip install 'fxscale[timm]' "
                           f"(it is not importable: {exc})") from exc
    return timm


def _timm_name(name: str) -> str:
    """The timm model name of ``timm:NAME`` (checked against timm's registry, with close matches)."""
    timm = _timm()
    short = name[len(TIMM_PREFIX):]
    if not timm.is_model(short):  # type: ignore[attr-defined]
        close = difflib.get_close_matches(short, timm.list_models(), n=5, cutoff=0.5)  # type: ignore[attr-defined]
        hint = f"; did you mean: {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise FxscaleError(f"unknown timm model {short!r}{hint}")
    return short


def _timm_spec(name: str) -> ZooSpec:
    timm = _timm()
    short = _timm_name(name)
    from timm.models import get_pretrained_cfg, model_entrypoint
    cfg = get_pretrained_cfg(short)
    full = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    family = model_entrypoint(short).__module__.rpartition(".")[2]
    with torch.device("meta"):  # the parameter count without allocating or initialising weights
        params = sum(p.numel() for p in timm.create_model(short, pretrained=False).parameters())  # type: ignore
    return ZooSpec(name=name, family=family, small_input_size=DEFAULT_SMALL_INPUT, full_input_size=full,
                   train_input_size=DEFAULT_SMALL_INPUT, params_millions=params / 1e6, in_slice=False,
                   slow=params / 1e6 > SLOW_PARAMS_MILLIONS,
                   fixed_input=bool(getattr(cfg, "fixed_input_size", False)))


def get_spec(name: str) -> ZooSpec:
    """Test and benchmark facts about a zoo model (``timm:NAME`` for timm models)."""
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name)
    if name not in _LOCAL_MODELS and name not in _torchvision_names():
        raise _unknown(name)
    family = family_of(name)
    small = _SMALL_INPUT.get(name, _SMALL_INPUT.get(family, DEFAULT_SMALL_INPUT))
    local = name in _LOCAL_MODELS
    params = _params_millions(name)
    seg = name in _segmentation_names()
    return ZooSpec(name=name, family=family, small_input_size=small,
                   full_input_size=_FULL_INPUT.get(family, 224), train_input_size=_TRAIN_INPUT.get(name, small),
                   params_millions=params, in_slice=name in REPRESENTATIVE_SLICE,
                   slow=params > SLOW_PARAMS_MILLIONS, in_channels=1 if local else 3,
                   num_classes=10 if local else 21 if seg else 1000,
                   task="segmentation" if seg else "classification")


def list_models(include_slow: bool = True, task: str | None = "classification") -> list[str]:
    """Zoo names, sorted: ``task="classification"`` (default) the torchvision classifiers and the built-in digits
    models, ``"segmentation"`` torchvision's FCN / DeepLabV3 / LR-ASPP models, None both."""
    if task not in (None, *TASKS):
        raise FxscaleError(f"task must be one of {', '.join(TASKS)} or None, got {task!r}")
    seg = set(_segmentation_names())
    names = [n for n in _all_names() if task is None or (n in seg) == (task == "segmentation")]
    return names if include_slow else [n for n in names if not get_spec(n).slow]


def representative_slice() -> list[str]:
    """The fast cross-section of architectures used by default tests and benchmarks."""
    return list(REPRESENTATIVE_SLICE)


def create_model(name: str, weights: str | None = None, num_classes: int | None = None, *,
                 plan: "ScalingPlan | str | os.PathLike[str] | None" = None, init: str = "preserve",
                 input_size: int | None = None, **kwargs: object) -> nn.Module:
    """Build a zoo model by name, optionally with weights and rescaled by a plan with those weights carried over.

    ``weights``: None (random init, no download); a local file (a state dict, a fxscale.train checkpoint or a
    ``{"state_dict": ...}`` file: anything ending in .pt/.pth/.bin/.tar or an existing path) loaded after the
    build; otherwise torchvision's weight name (``"DEFAULT"``, ``"IMAGENET1K_V1"``: torchvision downloads them),
    or ``"pretrained"`` for a timm model (timm downloads them). Downloads happen only when asked for like this.
    ``timm:NAME`` builds ``timm.create_model(NAME, pretrained=..., num_classes=..., **kwargs)``.

    ``plan`` (a ScalingPlan or a plan JSON path): the model is traced at ``input_size`` (default: the model's
    native size; 8 for the digits models) and returned as ``fxscale.transform(gm, plan, init=init,
    resolution_mode="input")``, a GraphModule whose changed layers are initialised by ``init``: "preserve" (the
    trained function is kept: Net2Net growth, identity depth; a shrink keeps the largest-L1 channels), "prune" or
    "reinit". To shrink by Taylor importance on data, see fxscale.scaling.warm.taylor_importance.
    """
    path = _weights_file(weights)
    model = _build(name, None if path is not None else weights, num_classes, kwargs)
    if path is not None:
        from fxscale.scaling.warm import load_state
        load_state(model, path, "weights")
    if plan is None:
        return model
    return _rescale(name, model, plan, init, input_size, kwargs)


def _weights_file(weights: str | None) -> str | None:
    """The path when ``weights`` names a local file (FxscaleError when it looks like one but is missing)."""
    if weights is None:
        return None
    import os
    text = str(weights)
    if os.path.isfile(text):
        return text
    if text.endswith((".pt", ".pth", ".bin", ".tar")) or os.sep in text:
        raise FxscaleError(f"weights file {text} does not exist")
    return None


def _build(name: str, weights: str | None, num_classes: int | None, kwargs: dict) -> nn.Module:
    """The model itself: timm, built-in or torchvision (``weights``: a download name, never a file)."""
    if name.startswith(TIMM_PREFIX):
        if weights not in (None, "pretrained"):
            raise FxscaleError(f"timm models take weights='pretrained' (timm downloads them) or a local file, "
                               f"got weights={weights!r}")
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return _timm().create_model(_timm_name(name), pretrained=weights == "pretrained",  # type: ignore[attr-defined]
                                    **kwargs)
    if name in _LOCAL_MODELS:
        if weights is not None:
            raise FxscaleError(f"model {name!r} has no pretrained weights (got weights={weights!r}; "
                               "give a local weights file instead)")
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return _LOCAL_MODELS[name](**kwargs)
    if name not in _torchvision_names():
        raise _unknown(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name in _AUX_MODELS:
        kwargs.setdefault("aux_logits", True)
        if weights is None:
            kwargs.setdefault("init_weights", True)
    if weights is None and name in _segmentation_names():
        kwargs.setdefault("weights_backbone", None)  # torchvision would download ImageNet backbone weights
    return tvm.get_model(name, weights=weights, **kwargs)


def _rescale(name: str, model: nn.Module, plan: object, init: str, input_size: int | None,
             kwargs: dict) -> nn.Module:
    """``model`` traced at its size and transformed by ``plan`` (a ScalingPlan or a JSON file path)."""
    import fxscale
    from fxscale.errors import PlanError
    from fxscale.plan import ScalingPlan
    if not isinstance(plan, ScalingPlan):
        try:
            text = open(plan, encoding="utf-8").read()  # type: ignore[arg-type]
        except (OSError, TypeError, UnicodeDecodeError) as e:
            raise PlanError(f"plan must be a ScalingPlan or a readable plan JSON file, got {plan!r} ({e})") from e
        plan = ScalingPlan.from_json(text)
    spec = get_spec(name)
    channels = int(kwargs.get("in_channels", spec.in_channels))  # type: ignore[call-overload]
    side = input_size or spec.full_input_size
    x = torch.zeros(1, channels, side, side)
    gm = fxscale.trace(model.eval(), x)
    return fxscale.transform(gm, plan, init=init, resolution_mode="input")


def model_from_string(spec: str) -> nn.Module:
    """A zoo name (``timm:NAME`` included), ``package.module:callable`` or ``path/file.py:callable`` called with no
    arguments (fxscale.modelspec.build_model: one resolver for the CLI and the API)."""
    from fxscale.modelspec import build_model
    return build_model(spec)


def _is_norm(module: nn.Module) -> bool:
    """BatchNorm*, InstanceNorm*, GroupNorm, LayerNorm: the op table's norm rows."""
    row = module_row(module)
    return row is not None and row.kind == "norm"


def _reinit_(module: nn.Module, name: str, t: torch.Tensor, gen: torch.Generator) -> None:
    """Re-initialise one parameter or BN statistic of ``module`` in place."""
    if name == "running_mean" or name.endswith("bias"):
        t.normal_(0.0, 0.1, generator=gen)
    elif name == "running_var" or _is_norm(module):
        t.uniform_(0.5, 1.5, generator=gen)
    elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        t.normal_(0.0, math.sqrt(2.0 / t[0].numel()), generator=gen)  # He: the input signal survives depth
    elif sum(d > 1 for d in t.shape) <= 1:  # layer-scale gammas, class tokens
        t.uniform_(0.5, 1.5, generator=gen)
    else:  # position embeddings, attention projections, relative-position tables
        t.normal_(0.0, 1.0 / math.sqrt(t.shape[-1]), generator=gen)


def _unit_std_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    """Rescale a conv/linear so that this output has unit standard deviation (LSUV-style)."""
    scale = output.std() if output.numel() > 1 else output.new_zeros(())
    if not torch.isfinite(scale) or scale <= 0:
        return None
    module.weight.div_(scale)
    if module.bias is not None:
        module.bias.div_(scale)
    return output / scale


def _calibrate_(model: nn.Module, example_input: torch.Tensor) -> None:
    """One eval forward on ``example_input`` that gives every conv/linear output unit std, in call order."""
    layers = [m for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    handles = [m.register_forward_hook(_unit_std_hook) for m in layers]
    was_training = model.training
    try:
        model.eval()(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def randomize_(model: nn.Module, seed: int = 0, example_input: torch.Tensor | None = None) -> nn.Module:
    """Re-initialise all parameters and BN running stats from ``seed`` so outputs are non-degenerate.

    BN running mean ~ N(0, 0.1), var ~ U(0.5, 1.5); norm gammas ~ U(0.5, 1.5); biases ~ N(0, 0.1);
    conv/linear weights He-normal (this replaces zero-initialised heads such as ViT's and zero-init residual
    gammas); other parameters: scale-like U(0.5, 1.5), matrices N(0, 1/fan_in). Other buffers are kept.
    Deep residual stacks then grow activations (efficientnet_v2_l logits ~1e12); pass ``example_input`` to
    also rescale each conv/linear in forward order to unit output std on it, which keeps outputs O(1-10).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            tensors = list(module.named_parameters(recurse=False))
            tensors += [(n, b) for n, b in module.named_buffers(recurse=False) if n in ("running_mean", "running_var")]
            for name, t in tensors:
                if t.is_floating_point():
                    _reinit_(module, name, t, gen)
        if example_input is not None:
            _calibrate_(model, example_input)
    return model
