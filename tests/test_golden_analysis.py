"""The live channel analysis of the zoo slice and the pattern nets against tests/golden/analysis.json.

Any change to groups, widths, divisors, freeze reasons, MACs or params fails here with a compact diff; when
the change is intended, regenerate the file (``python benchmarks/regen_golden.py``) and review its git diff.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "regen_golden.py"
_spec = importlib.util.spec_from_file_location("regen_golden", _SCRIPT)
golden = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(golden)

GOLDEN = golden.load()
MODELS = [(section, name) for section, names in golden.model_names().items() for name in names]


def _live(section, name, traced_net, traced_zoo):
    _gm, cg, x = traced_net(name) if section == "nets" else traced_zoo(name)
    return golden.record(cg, x)


@pytest.mark.parametrize("section, name", MODELS, ids=[f"{s}/{n}" for s, n in MODELS])
def test_analysis_matches_golden(section, name, traced_net, traced_zoo):
    want = GOLDEN.get(section, {}).get(name)
    got = _live(section, name, traced_net, traced_zoo)
    if got != want:
        lines = golden.diff_model(want, got) if want is not None else ["missing from the golden file"]
        pytest.fail(f"{section}/{name}: the analysis differs from {golden.GOLDEN.relative_to(golden.ROOT)}:\n  " + "\n  ".join(lines)
                    + f"\nif intended, regenerate and review the diff: {golden.REGEN}", pytrace=False)


def test_golden_covers_exactly_the_models():
    have = {(section, name) for section, entries in GOLDEN.items() for name in entries}
    assert have == set(MODELS), f"stale or missing golden entries; regenerate: {golden.REGEN}"


def test_golden_file_is_canonical():
    """Sorted keys, indent 1, no object addresses: regenerating an unchanged analysis gives the same bytes."""
    text = golden.GOLDEN.read_text()
    assert text == golden.dumps(GOLDEN)
    assert not golden._ADDRESS.search(text)
