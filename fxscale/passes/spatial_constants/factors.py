"""Sizes as products of factors: the labels the spatial-constant solver attaches to every value.

Every tensor dimension is an ordered product of *factors* (:class:`_F`: one size with its value at every probe
size: a feature-map height, a window count, a partition size, ...); a positive int is one product of factors.
"""
from __future__ import annotations

from typing import Any, Optional

import torch.fx as fx


class _F:
    """One factor of a size: its value at every probe; ``parts`` for a concatenated (token) dimension."""

    __slots__ = ("vals", "parts")

    def __init__(self, vals: Any, parts: Optional[list] = None) -> None:
        self.vals = tuple(vals)
        self.parts = parts


class _T(tuple):
    """Label of a tensor: per dimension, the tuple of factors whose product is its size."""


class _I(tuple):
    """Label of a positive int: the factors whose product is its value."""


class _Fail(Exception):
    """The graph does not run (or is inconsistent) at some probe size under the current decisions."""

    def __init__(self, node: fx.Node, why: str) -> None:
        super().__init__(why)
        self.node, self.why = node, why


class _Restart(Exception):
    """A parameter was found to be a position embedding: run again from the top with it resampled."""


class _Unsupported(Exception):
    """The graph does not even run shape-only at its traced size (an op without a meta kernel, say)."""


def _const(vals: tuple) -> bool:
    return all(v == vals[0] for v in vals)


def _pvals(factors: Any, nprobes: int) -> tuple:
    """Per-probe value of a product of factors."""
    out = [1] * nprobes
    for f in factors:
        for p in range(nprobes):
            out[p] *= f.vals[p]
    return tuple(out)


def _fresh(sizes: tuple) -> tuple:
    """A new factor for sizes seen at every probe (no factor for a size that is 1 everywhere)."""
    return () if all(s == 1 for s in sizes) else (_F(sizes),)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


__all__ = ["_F", "_T", "_I", "_Fail", "_Restart", "_Unsupported", "_const", "_pvals", "_fresh", "_is_int"]
