"""Poorly fitted importance laws are listed in the predictor's summary (and so in report.md) and warned about."""
from __future__ import annotations

from fxscale.scaling.powerlaw import POOR_R2, ImportancePredictor, PowerLaw


def test_poorly_fitted_groups_are_listed():
    good = PowerLaw(a=1.0, b=-1.0, r2=0.99, r2_log=0.98, n=6)
    bad = PowerLaw(a=1.0, b=-4.0, r2=0.9, r2_log=POOR_R2 - 0.3, n=6)
    pred = ImportancePredictor({"layer1": good, "layer2": bad})
    assert pred.poorly_fit() == ["layer2"]
    d = pred.to_dict()
    assert d["poorly_fit"] == ["layer2"]
    assert ImportancePredictor.from_dict(d).poorly_fit() == ["layer2"]
