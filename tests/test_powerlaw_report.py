"""Poorly fitted importance laws are listed in the predictor's summary (and so in report.md) and warned about."""
from __future__ import annotations

import numpy as np
import pytest

from fxscale.errors import FxscaleError
from fxscale.scaling.powerlaw import POOR_R2, ImportancePredictor, PowerLaw, fit_power_law


def test_poorly_fitted_groups_are_listed():
    good = PowerLaw(a=1.0, b=-1.0, r2=0.99, r2_log=0.98, n=6)
    bad = PowerLaw(a=1.0, b=-4.0, r2=0.9, r2_log=POOR_R2 - 0.3, n=6)
    pred = ImportancePredictor({"layer1": good, "layer2": bad})
    assert pred.poorly_fit() == ["layer2"]
    d = pred.to_dict()
    assert d["poorly_fit"] == ["layer2"]
    assert ImportancePredictor.from_dict(d).poorly_fit() == ["layer2"]


@pytest.mark.parametrize("a,b", [(50.0, -1.5), (3.0, -0.5), (0.2, -2.5)])
def test_fit_power_law_recovers_a_and_b_from_noisy_samples(a, b):
    rng = np.random.default_rng(0)
    widths = np.repeat([16, 24, 32, 48, 64], 3).astype(float)
    values = a * widths ** b * np.exp(rng.normal(0.0, 0.05, widths.shape))  # 5% multiplicative noise
    law = fit_power_law(widths, values)
    assert law.b == pytest.approx(b, abs=0.1) and law.a == pytest.approx(a, rel=0.3)
    assert law.r2_log > 0.95 and law.note in ("log-space fit", "relative-error NLS")


def test_fit_is_not_dominated_by_the_narrowest_width():
    """An unweighted linear-space fit chases the large value at 0.5x; the log-space choice does not."""
    widths = np.array([16.0, 24, 32, 48, 64])
    values = 10.0 * widths ** -1.0
    values[0] *= 3.0  # an undertrained narrow sample: importance measures training progress, not width
    law = fit_power_law(widths, values)
    rest = np.array([law(w) for w in widths[1:]])
    assert np.max(np.abs(np.log(rest / values[1:]))) < 0.35  # within 42% at the other widths


def test_fit_needs_two_widths():
    with pytest.raises(FxscaleError, match="2 distinct widths"):
        fit_power_law([32, 32], [1.0, 2.0])
