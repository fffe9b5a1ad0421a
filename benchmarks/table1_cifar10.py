"""Table I recipe for CIFAR-10 (VGG11 as in the paper) for users with the data on disk and a GPU.

    python benchmarks/table1_cifar10.py --root /data/cifar10 [--download] --device cuda --epochs 300 \
        --target trtexec   # or ort / torch

The paper's setting: SGD 0.9, batch 128, 300 epochs; tight budget 1.05x latency, loose 2.2x. Tests run this
script's `run()` on a tiny synthetic stand-in (see tests/test_table1_recipes.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from torch import nn

from fxscale.scaling.pipeline import Pipeline, ScaleConfig
from fxscale.scaling.report import table

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class CifarVGG(nn.Module):
    """The CIFAR VGG11 of the paper's Table I (9.2 M parameters at width 1)."""

    def __init__(self, cfg: tuple = VGG11, width: float = 1.0, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            c = max(1, int(v * width))
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x):  # noqa: ANN001, ANN201
        """Logits."""
        return self.classifier(self.pool(self.features(x)).flatten(1))


def run(out: str, data: str = "cifar10", data_kw: Optional[dict[str, Any]] = None, width: float = 1.0,
        budgets: tuple[str, ...] = ("1.05x", "2.2x"), **settings: Any) -> list[dict[str, Any]]:
    """Scale VGG11 under each latency budget; returns the summaries."""
    summaries = []
    for b in budgets:
        cfg = ScaleConfig(model="cifar_vgg11", data=data, data_kw=dict(data_kw or {}), latency_budget=b, **settings)
        s = Pipeline(cfg, Path(out) / f"budget_{b}", model=CifarVGG(width=width)).run()
        print(f"## latency budget {b}\n\n{table(s['methods'])}\n", flush=True)
        summaries.append(s)
    return summaries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="data", help="folder holding cifar-10-batches-py")
    ap.add_argument("--download", action="store_true", help="download CIFAR-10 first (needs internet)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--search-epochs", type=int, default=30)
    ap.add_argument("--sample-epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--target", default="ort")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/table1_cifar10")
    a = ap.parse_args()
    run(a.out, "cifar10", {"root": a.root, "download": a.download}, device=a.device, epochs=a.epochs,
        search_epochs=a.search_epochs, sample_epochs=a.sample_epochs, seeds=tuple(range(a.seeds)), batch_size=128,
        lr=0.1, target=a.target, workers=a.workers, memory_budget="3x",
        methods=("uniform", "resolution", "depth", "efficientnet", "dollar", "neuralscale-lite"))


if __name__ == "__main__":
    main()
