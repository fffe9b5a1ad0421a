"""Scores of trained candidates: the teacher's validation loss and accuracy with only one site swapped.

`SCORES` names what the integer program can maximise per option:

- ``dloss`` (default): minus the increase of the teacher's validation cross-entropy when only this site holds the
  candidate. It is continuous, measures the candidate's effect on the network's output (not only on its own
  feature map) and adds up well over sites (the paper's observation); accuracy on a few hundred validation images
  moves in steps of 1/n and ties many candidates at 0.
- ``dacc``: the change of validation top-1 (percentage points) with the same single swap.
- ``local``: minus the candidate's held-out normalised MSE on its own site.

The swap is evaluated without rebuilding the graph: an Interpreter skips the site's nodes and computes the site's
output with the candidate from the entry tensor. The HANT benchmark script (hant_digits.py) measures dloss against dacc.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from fxscale.errors import PlanError
from fxscale.hant.sites import Site

SCORES = ("dloss", "dacc", "local")
DEFAULT_SCORE = "dloss"


class _Swapped(fx.Interpreter):
    """The teacher with one site's output computed by `module` (the site's own nodes are skipped)."""

    def __init__(self, gm: fx.GraphModule, site: Optional[Site], module: Optional[nn.Module]) -> None:
        super().__init__(gm, garbage_collect_values=False)  # the entry must outlive its last (skipped) user
        self.site, self.candidate = site, module
        self.skip = set(site.nodes) - {site.output} if site is not None else set()
        self.entry: Any = None

    def run_node(self, n: fx.Node) -> Any:
        if self.site is not None:
            if n.name in self.skip:
                return None
            if n.name == self.site.output:
                return self.candidate(self.env[next(v for v in self.env if v.name == self.site.entry)])
        return super().run_node(n)


@dataclass(frozen=True)
class Eval:
    """Validation loss and top-1 accuracy (fraction) of one model."""

    loss: float
    acc: float


@torch.no_grad()
def evaluate_swap(gm: fx.GraphModule, batches: list[tuple[torch.Tensor, torch.Tensor]], site: Optional[Site] = None,
                  module: Optional[nn.Module] = None) -> Eval:
    """Cross-entropy and top-1 of the teacher on `batches`, with `site` replaced by `module` when given."""
    gm.eval()
    if module is not None:
        module.eval()
    loss = correct = n = 0.0
    for x, y in batches:
        out = _Swapped(gm, site, module).run(x)
        loss += float(F.cross_entropy(out, y, reduction="sum"))
        correct += float((out.argmax(1) == y).sum())
        n += len(y)
    return Eval(loss / n, correct / n)


def score_of(kind: str, teacher: Eval, swapped: Eval, val_nmse: float) -> float:
    """The option score of one candidate under score `kind` (higher is better; the teacher scores 0 or -0)."""
    if kind == "dloss":
        return -(swapped.loss - teacher.loss)
    if kind == "dacc":
        return 100.0 * (swapped.acc - teacher.acc)
    if kind == "local":
        return -val_nmse if math.isfinite(val_nmse) else -1.0
    raise PlanError(f"unknown score {kind!r}; valid scores: {', '.join(SCORES)}")


__all__ = ["DEFAULT_SCORE", "Eval", "SCORES", "evaluate_swap", "score_of"]
