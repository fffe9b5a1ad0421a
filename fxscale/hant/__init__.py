"""HANT (Molchanov et al., LANA): make a trained model faster on a device by replacing its slow blocks.

Phase 1 trains many candidate operations per site of the teacher by layer-wise feature-map distillation
(fxscale.hant.distill); phase 2 picks one candidate per site with an integer program under a latency budget
(fxscale.hant.solver). The parts, each usable alone:

- ``find_sites(gm)``: the replaceable units of a traced model (sites.py);
- ``create_candidate(spec, site, teacher_sub)``, ``list_candidates``, ``register_candidate`` (candidates.py);
- ``capture_sites``, ``run_pair``, ``distill`` (distill.py); ``evaluate_swap``, ``score_of`` (scores.py);
- ``measure_table``, ``check_additivity`` (latency.py); ``assemble``, ``extract_site`` (assemble.py);
- ``accelerate(model, data, target, latency_budget, out)`` and ``fxscale accelerate`` (api.py, cli.py).
"""
from fxscale.hant.assemble import assemble, extract_site
from fxscale.hant.candidates import (
    CandidateError,
    create_candidate,
    default_grid,
    list_candidates,
    register_candidate,
)
from fxscale.hant.sites import Site, find_sites


def __getattr__(name: str):
    """Lazy access to the heavier parts (they import the data, targets and training code)."""
    lazy = {"accelerate": "fxscale.hant.api", "AccelerateConfig": "fxscale.hant.config",
            "DistillConfig": "fxscale.hant.distill", "distill": "fxscale.hant.distill",
            "run_pair": "fxscale.hant.distill", "capture_sites": "fxscale.hant.distill",
            "measure_table": "fxscale.hant.latency", "evaluate_swap": "fxscale.hant.scores"}
    if name in lazy:
        import importlib
        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module 'fxscale.hant' has no attribute {name!r}")


__all__ = ["AccelerateConfig", "CandidateError", "DistillConfig", "Site", "accelerate", "assemble", "capture_sites",
           "create_candidate", "default_grid", "distill", "evaluate_swap", "extract_site", "find_sites",
           "list_candidates", "measure_table", "register_candidate", "run_pair"]
