"""Spatial constants baked in by a trace at the traced resolution, re-derived for a new one (used by the
resolution pass).

A torch.fx trace evaluates Python-level size arithmetic once, so some models carry constants that are tied to
the traced input size: torchvision's ViT checks ``h == 224`` (``operator.eq(getitem, 224)`` in the graph) and
adds a learned position embedding of ``1 + 14 * 14`` tokens; MaxViT's window/grid partitions reshape with
literal partition counts (``reshape(x, B, 8, 8, 7, 7, C)``). When the rescaled graph does not run as it is,
:func:`solve_spatial_constants` works out which of these constants follow the spatial size and what they
become, by running the graph shape-only (meta tensors) at three sizes in lockstep -- the traced one, the
target and twice the target -- and following the data flow of every size:

* every tensor dimension is tracked as an ordered product of *factors* (a feature-map height, a window count,
  a partition size, ...); factors flow through reshapes, permutes, flattens and elementwise ops, so a literal
  in a later reshape that re-splits a dimension is matched to the factor it came from (a MaxViT departition
  ``reshape(x, B, 8, 8, 7, 7, C)`` re-splits the ``(H // 7) * (W // 7)`` window count that the partition
  computed from ``x.shape``): it becomes that factor's size at the new resolution, or stays if it is fixed;
* a literal compared with a size read from ``.shape`` (``h == 224``) becomes that size;
* a literal divisor of a spatial size (``H // 8``) either stays (the quotient grows) or keeps the quotient
  (the divisor grows, MaxViT's grid partition); the choice is searched with backjumping, keeping the literal
  first, and the shape checks downstream (a relative-position bias of 49 tokens) decide;
* a parameter broadcast against a token sequence whose length follows the spatial grid is a position
  embedding: prefix (class) tokens are kept and the grid part is resampled bicubically
  (:func:`resample_position_embedding`, timm's ``resample_abs_pos_embed`` approach).

Only constants reached this way are rewritten; anything else that breaks at the new size raises a
:class:`~fxscale.errors.PlanError` naming the node, with nearby sizes that do work where some can be found.

Layout: :mod:`.factors` (size labels), :mod:`.rules` (how each op row carries sizes: the rule tables),
:mod:`.views` (reshape/expand size literals), :mod:`.embeddings` (position embeddings), :mod:`.solver`
(the lockstep run), :mod:`.solve` / :mod:`.apply` (entry points), :mod:`.nearby` (sizes that work).
"""
from __future__ import annotations

from fxscale.passes.spatial_constants.apply import (  # noqa: F401 - re-exported
    _replace_at, apply_spatial_constants, solve_spatial_constants)
from fxscale.passes.spatial_constants.embeddings import (  # noqa: F401
    _PosEmb, resample_position_embedding, resample_spatial_map)
from fxscale.passes.spatial_constants.factors import _F, _I, _T, _Fail, _Restart, _Unsupported  # noqa: F401
from fxscale.passes.spatial_constants.nearby import _nearby_sizes, _with_nearby  # noqa: F401
from fxscale.passes.spatial_constants.rules import BY_ARITH, BY_NAME, UNROWED, Rule, rule_for
from fxscale.passes.spatial_constants.solve import _make_solver, _probe_sizes, _shapes_from_solver, _solve  # noqa: F401
from fxscale.passes.spatial_constants.solver import _Solver  # noqa: F401

__all__ = ["solve_spatial_constants", "apply_spatial_constants", "resample_position_embedding",
           "resample_spatial_map", "Rule", "BY_NAME", "BY_ARITH", "UNROWED", "rule_for"]
