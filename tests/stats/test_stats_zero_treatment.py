"""A treatment constant at zero (no conversion at all) against a control with variance: the
absolute difference is a Welch test as usual, the relative lift has no delta-method variance."""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from abtest.stats import MeanStats, failure_code, welch_test


def test_a_treatment_constant_at_zero_has_an_absolute_test_and_no_relative_ci() -> None:
    control = np.array([1.0] * 7 + [0.0] * 13)
    treatment = np.zeros(15)
    c = MeanStats(len(control), float(control.sum()), float((control ** 2).sum()))
    t = MeanStats(len(treatment), 0.0, 0.0)
    result = welch_test(c, t)
    reference = sps.ttest_ind(treatment, control, equal_var=False)
    assert result.absolute is not None
    assert abs(result.absolute.estimate - (0.0 - control.mean())) < 1e-12
    assert abs(result.absolute.p_value - reference.pvalue) < 1e-9
    assert result.relative is None and failure_code(result.relative_error) == "zero_relative_variance"
