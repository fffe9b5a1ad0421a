"""Knowledge distillation for fxscale.train: the teacher's logits and the Hinton et al. (2015) KD loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def teacher_logits(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's logits on x in eval mode (running statistics untouched, no gradient)."""
    was = teacher.training
    teacher.eval()
    try:
        out = teacher(x)
    finally:
        teacher.train(was)
    return out if isinstance(out, torch.Tensor) else out[0]


def distill_loss(hard: torch.Tensor, student: torch.Tensor, teacher: torch.Tensor, weight: float,
                 temperature: float) -> torch.Tensor:
    """(1 - weight) * hard + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)), batch mean.

    The T^2 factor keeps the soft term's gradient scale independent of T (Hinton et al.).
    """
    t = temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                    log_target=True)
    return (1.0 - weight) * hard + weight * t * t * soft


__all__ = ["distill_loss", "teacher_logits"]
