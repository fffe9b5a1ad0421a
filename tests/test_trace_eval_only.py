"""Models whose train-only branch cannot run at the traced size are traced eval-only, with a warning.

The eval graph is traced and transformed as usual; any train-mode use (fxscale.train_graph_module, a forward in
train mode, also after transform) raises a TraceError that says why.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fxscale
from fxscale.errors import TraceError


class AuxAtLargeSizes(nn.Module):
    """A stride-8 body; in train mode an aux head with a 5x5 valid conv, which needs a >= 5x5 map (>= 40 px)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
        self.aux = nn.Conv2d(8, classes, 5)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor):
        f = self.body(x)
        logits = self.fc(f.mean((2, 3)))
        if self.training:
            return logits, self.aux(f).mean((2, 3))
        return logits


def _trace(model: nn.Module, size: int):
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm = fxscale.trace(model.eval(), x)
    return gm, x, [str(w.message) for w in caught if "eval-only" in str(w.message)]


def test_train_graph_is_kept_where_it_runs():
    gm, x, warned = _trace(AuxAtLargeSizes(), 64)
    assert not warned and not gm.meta["fxscale"].get("eval_only")
    main, aux = fxscale.train_graph_module(gm)(x)
    assert main.shape == aux.shape == (2, 4)


def test_train_only_branch_too_small_is_traced_eval_only():
    gm, x, warned = _trace(AuxAtLargeSizes(), 16)
    assert len(warned) == 1 and "16x16" in warned[0] and "aux" in warned[0]  # names the failing node
    info = gm.meta["fxscale"]
    assert info["eval_only"] is True and "aux" in info["eval_only_reason"]
    assert info["train_gm"] is None
    assert gm(x).shape == (2, 4)  # the eval graph runs
    with pytest.raises(TraceError, match="eval-only.*aux"):
        fxscale.train_graph_module(gm)
    with pytest.raises(TraceError, match="eval-only"):
        gm.train()(x)
    gm.eval()


def test_transform_of_eval_only_trace_works_in_eval_and_stays_eval_only():
    gm, x, _ = _trace(AuxAtLargeSizes(), 16)
    cg = fxscale.analyze(gm)
    plan = fxscale.ScalingPlan(widths={g.name: g.width * 2 for g in cg.scalable}, resolution=(24, 24))
    new = fxscale.transform(gm, plan)
    assert new.eval()(x).shape == (2, 4)
    assert new.meta["fxscale"]["eval_only"] is True
    with pytest.raises(TraceError, match="eval-only"):
        fxscale.train_graph_module(new)
    with pytest.raises(TraceError, match="eval-only"):
        new.train()(x)


def test_inception_v3_at_160_is_traced_eval_only():
    tv = pytest.importorskip("torchvision")
    model = tv.models.inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=10)
    x = torch.randn(1, 3, 160, 160)
    with pytest.warns(UserWarning, match="eval-only at input 160x160"):
        gm = fxscale.trace(model.eval(), x)
    assert gm.meta["fxscale"]["eval_only"] is True
    assert "AuxLogits" in gm.meta["fxscale"]["eval_only_reason"]
    with torch.no_grad():
        assert gm(x).shape == (1, 10)
    with pytest.raises(TraceError, match="traced eval-only"):
        fxscale.train_graph_module(gm)
