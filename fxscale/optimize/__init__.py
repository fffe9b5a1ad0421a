"""Woodpecker-DL in fxscale: inference graph passes, partitions, one measured implementation per partition.

``fxscale.optimize(model, x, ...)`` (this package is callable: it runs ``api.optimize``) returns an
``OptimizeResult`` with the inference plan and the hybrid module; ``fxscale optimize`` is the command line.
"""
from __future__ import annotations

import sys
import types
from typing import Any

from fxscale.optimize.api import DEFAULT_BACKENDS, TARGETS, OptimizeResult, optimize
from fxscale.optimize.backends import create_backend, list_backends
from fxscale.optimize.graphopt import DEFAULT_PASSES, PASSES, fusion_markers
from fxscale.optimize.partition import Partition, Partitioning, partition_graph
from fxscale.optimize.plan import make_plan, read_plan, validate_plan
from fxscale.optimize.rebuild import compile_plan, load_hybrid, measure_under_plan
from fxscale.optimize.select import GAConfig, Problem, brute_force, genetic, solve, solve_chain, solve_milp
from fxscale.optimize.verify import PASS_RULES, optimize_graph


class _CallableModule(types.ModuleType):
    """`fxscale.optimize(...)` calls fxscale.optimize.api.optimize (the package and the function share a name)."""

    def __call__(self, *args: Any, **kwargs: Any) -> OptimizeResult:
        return optimize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["DEFAULT_BACKENDS", "DEFAULT_PASSES", "GAConfig", "OptimizeResult", "PASSES", "PASS_RULES", "Partition",
           "Partitioning", "Problem", "TARGETS", "brute_force", "compile_plan", "create_backend", "fusion_markers",
           "genetic", "list_backends", "load_hybrid", "make_plan", "measure_under_plan", "optimize", "optimize_graph",
           "partition_graph", "read_plan", "solve", "solve_chain", "solve_milp", "validate_plan"]
