"""Small models for tests/test_faults.py, named on the command line as tests/faults/faultnets.py:NAME (a file) or
faultnets:NAME / faultnets.Class (with tests/faults on PYTHONPATH)."""
from __future__ import annotations

import torch
from torch import nn


class Fixed(nn.Module):
    """No channel group can scale: a slice of the flattened input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10]


class Small(nn.Module):
    """conv-BN-ReLU, global pool, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace through it (make it a --leaf)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x


class WithUntraceable(nn.Module):
    """Small with an Untraceable block after the conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.odd = Untraceable()
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.odd(self.conv(x)).mean((2, 3)))


def fixed() -> nn.Module:
    """A model with no scalable channel group."""
    return Fixed()


def one_channel() -> nn.Module:
    """Takes 1-channel images, 10 classes."""
    return Small(1, 10)


def seven_classes() -> nn.Module:
    """Takes 1-channel images, 7 classes."""
    return Small(1, 7)


def with_untraceable() -> nn.Module:
    """Needs --leaf faultnets.Untraceable."""
    return WithUntraceable()


def not_a_model() -> int:
    """Returns no nn.Module."""
    return 42


class NoOnnx(nn.Module):
    """A conv followed by an FFT: traces and runs, but the ONNX exporter cannot write aten::fft_rfft2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.fft.rfft2(self.conv(x)).abs().mean((2, 3)))


def no_onnx() -> nn.Module:
    """Transforms, then fails at ONNX export."""
    return NoOnnx()
