"""Shared pytest setup: one intra-op thread, session caches of traced nets, zoo models and datasets.

Tests import the hand-built nets from tests/nets.py and plain helpers from tests/helpers.py; the shared
(cached, read-only) objects come from the fixtures below. Any test that changes a cached object fails at
teardown (``_shared_objects_unchanged``), since every later test of the session would see the change.
"""
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP pool
sys.path.insert(0, os.path.dirname(__file__))

import pytest
import torch


def _helpers():
    """tests/helpers.py, imported on first use: tests that need no fxscale do not import it through here."""
    import helpers
    return helpers


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny forwards are far faster on one intra-op thread, and workers share a 2-core box."""
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    if "helpers" in sys.modules:
        sys.modules["helpers"].clear_caches()


@pytest.fixture(autouse=True)
def _shared_objects_unchanged():
    """Fail the test that mutated a cached model, trace, analysis, input or dataset it was handed."""
    helpers = sys.modules.get("helpers")  # not imported yet: no test has been handed a cached object
    if helpers is not None:
        helpers.mutated_cache_entries()  # forget what earlier tests were handed
    yield
    helpers = sys.modules.get("helpers")
    changed = helpers.mutated_cache_entries() if helpers is not None else []
    if changed:
        pytest.fail(f"test mutated shared cached objects {changed}: take a fresh copy from helpers.trace_net / "
                    "helpers.trace_zoo / helpers.build_zoo instead", pytrace=False)


@pytest.fixture(scope="session")
def traced_net():
    """``traced_net(name) -> Traced(gm, cg, x)``: a tests/nets.py net traced and analysed once per session."""
    return _helpers().cached_net


@pytest.fixture(scope="session")
def traced_zoo():
    """``traced_zoo(name, size=None, calibrated=False) -> Traced(gm, cg, x)``: a zoo model at
    ``spec.example_input(size=size)``, traced and analysed once per session (the last few kept)."""
    return _helpers().cached_zoo


@pytest.fixture(scope="session")
def zoo_model():
    """``zoo_model(name, calibrated=False) -> nn.Module``: a zoo model in eval mode, built once per session."""
    return _helpers().cached_zoo_model


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """``(out, summary, logs)`` of one tiny ``fxscale scale`` run (test_pipeline's METHODS and TINY settings), run
    once per session and shared by test_pipeline and test_stage_cache (which damage a copy, never this folder)."""
    from fxscale.scaling.pipeline import Pipeline, ScaleConfig
    from test_pipeline import METHODS, TINY
    out = tmp_path_factory.mktemp("scale")
    logs: list[str] = []
    summary = Pipeline(ScaleConfig(methods=METHODS, **TINY), out, log=logs.append).run()
    return out, summary, logs


@pytest.fixture
def digits():
    """The digits DataBundle (``get_dataset("digits")``), loaded once per session (handed out per test, so
    the mutation guard watches every test that uses it)."""
    return _helpers().cached_dataset("digits")
