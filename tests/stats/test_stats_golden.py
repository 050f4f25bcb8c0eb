"""Golden numbers: abtest.stats against values frozen from scipy, statsmodels and gbstats.

GOLDEN was produced by ``tests/stats/make_golden.py`` from the cases in
``stats_reference.CASES`` (conversion 10k and small, revenue mean, small-n
count, latency ratio, error-rate ratio). Each reference uses the same
definition as the field it is compared with:

* ``scipy_abs``  scipy.stats.ttest_ind_from_stats(equal_var=False) p-value and
  statsmodels' Welch CI  ->  Comparison.absolute (mean metrics)
* ``gb_abs`` / ``gb_rel``  gbstats TwoSidedTTest (absolute / relative)
  ->  Comparison.absolute / .relative
* ``gb_seq_*``  gbstats SequentialTwoSidedTTest, N* = 5000 -> sequential_test
* ``gb_bayes_*``  gbstats EffectBayesianABTest, flat prior -> bayesian_test
"""

from __future__ import annotations

import pytest
from stats_reference import CASES, rel_err

from abtest.stats import MeanStats, bayesian_test, sequential_test, welch_test

RTOL = 1e-6

GOLDEN = {'conversion_10k': {'scipy_abs': {'estimate': 0.009999999999999995,
                                  'ci_lower': 0.001503119126420963,
                                  'ci_upper': 0.01849688087357903,
                                  'p_value': 0.02107469104980239,
                                  'df': 19962.71255812323},
                    'gb_abs': {'estimate': 0.009999999999999995,
                               'ci_lower': 0.0015031191264209612,
                               'ci_upper': 0.01849688087357903,
                               'p_value': 0.021074691049802308},
                    'gb_rel': {'estimate': 0.09999999999999995,
                               'ci_lower': 0.010860251045968966,
                               'ci_upper': 0.18913974895403093,
                               'p_value': 0.02789734922386211},
                    'gb_seq_abs': {'estimate': 0.009999999999999995,
                                   'ci_lower': -0.0035559150840725456,
                                   'ci_upper': 0.023555915084072537,
                                   'p_value': 0.43383211574387837},
                    'gb_seq_rel': {'estimate': 0.09999999999999995,
                                   'ci_lower': -0.042213464613091806,
                                   'ci_upper': 0.2422134646130917,
                                   'p_value': 0.5491666515641536},
                    'gb_bayes_rel': {'chance_to_win': 0.986057039849917,
                                     'loss_control': 0.10022295353164151,
                                     'loss_treatment': 0.0002229535316415569},
                    'gb_bayes_abs': {'chance_to_win': 0.9894677472730522,
                                     'loss_control': 0.010015558324668711,
                                     'loss_treatment': 1.555832466871618e-05}},
 'conversion_small': {'scipy_abs': {'estimate': 0.13888888888888887,
                                    'ci_lower': -0.038355422906872716,
                                    'ci_upper': 0.31613320068465045,
                                    'p_value': 0.1228851123924988,
                                    'df': 81.89246811574577},
                      'gb_abs': {'estimate': 0.13888888888888887,
                                 'ci_lower': -0.038355422906872716,
                                 'ci_upper': 0.31613320068465045,
                                 'p_value': 0.12288511239249877},
                      'gb_rel': {'estimate': 0.9259259259259258,
                                 'ci_lower': -0.792825454508532,
                                 'ci_upper': 2.644677306360384,
                                 'p_value': 0.28699990528149244},
                      'gb_seq_abs': {'estimate': 0.13888888888888887,
                                     'ci_lower': -0.5002820597832113,
                                     'ci_upper': 0.778059837560989,
                                     'p_value': 0.9220466513786411},
                      'gb_seq_rel': {'estimate': 0.9259259259259258,
                                     'ci_lower': -5.272162685400919,
                                     'ci_upper': 7.12401453725277,
                                     'p_value': 0.9950230184314502},
                      'gb_bayes_rel': {'chance_to_win': 0.8580741660755385,
                                       'loss_control': 0.9886037258629671,
                                       'loss_treatment': 0.06267779993704117},
                      'gb_bayes_abs': {'chance_to_win': 0.9404856463155735,
                                       'loss_control': 0.1411690538468864,
                                       'loss_treatment': 0.002280164957997527}},
 'revenue_mean': {'scipy_abs': {'estimate': 0.120135294117647,
                                'ci_lower': -0.09266397628706058,
                                'ci_upper': 0.3329345645223546,
                                'p_value': 0.268482229879785,
                                'df': 10079.752011813795},
                  'gb_abs': {'estimate': 0.120135294117647,
                             'ci_lower': -0.09266397628706058,
                             'ci_upper': 0.3329345645223546,
                             'p_value': 0.2684822298797851},
                  'gb_rel': {'estimate': 0.011476322744112782,
                             'ci_lower': -0.008972821409510136,
                             'ci_upper': 0.031925466897735705,
                             'p_value': 0.2713195754549118},
                  'gb_seq_abs': {'estimate': 0.120135294117647,
                                 'ci_lower': -0.21229755846013942,
                                 'ci_upper': 0.45256814669543344,
                                 'p_value': 1.0},
                  'gb_seq_rel': {'estimate': 0.011476322744112782,
                                 'ci_lower': -0.020469121950479764,
                                 'ci_upper': 0.04342176743870533,
                                 'p_value': 1.0},
                  'gb_bayes_rel': {'chance_to_win': 0.8643533480805737,
                                   'loss_control': 0.01219204743940919,
                                   'loss_treatment': 0.0007157246952964108},
                  'gb_bayes_abs': {'chance_to_win': 0.8657720895777414,
                                   'loss_control': 0.12748756523727425,
                                   'loss_treatment': 0.007352271119627237}},
 'count_small_n': {'scipy_abs': {'estimate': 0.4583333333333335,
                                 'ci_lower': -0.5800673386102844,
                                 'ci_upper': 1.4967340052769513,
                                 'p_value': 0.3715027432534742,
                                 'df': 24.202203339751186},
                   'gb_abs': {'estimate': 0.4583333333333335,
                              'ci_lower': -0.5800673386102844,
                              'ci_upper': 1.4967340052769513,
                              'p_value': 0.3715027432534743},
                   'gb_rel': {'estimate': 0.18032786885245908,
                              'ci_lower': -0.2687868189162419,
                              'ci_upper': 0.62944255662116,
                              'p_value': 0.4155793343931655},
                   'gb_seq_abs': {'estimate': 0.4583333333333335,
                                  'ci_lower': -5.6406955128929575,
                                  'ci_upper': 6.5573621795596235,
                                  'p_value': 1.0},
                   'gb_seq_rel': {'estimate': 0.18032786885245908,
                                  'ci_lower': -2.457539680711251,
                                  'ci_upper': 2.818195418416169,
                                  'p_value': 1.0},
                   'gb_bayes_rel': {'chance_to_win': 0.7962574120988286,
                                    'loss_control': 0.20521575539313522,
                                    'loss_treatment': 0.024887886540676092},
                   'gb_bayes_abs': {'chance_to_win': 0.8187387428195112,
                                    'loss_control': 0.5079134512609502,
                                    'loss_treatment': 0.04958011792761684}},
 'latency_ratio': {'gb_abs': {'estimate': -6.287424351821528,
                              'ci_lower': -11.04634570877407,
                              'ci_upper': -1.5285029948689877,
                              'p_value': 0.009624963751020621},
                   'gb_rel': {'estimate': -0.0455737447277081,
                              'ci_lower': -0.07925770959513058,
                              'ci_upper': -0.011889779860285624,
                              'p_value': 0.00801899215751778},
                   'gb_seq_abs': {'estimate': -6.287424351821528,
                                  'ci_lower': -13.666193147834386,
                                  'ci_upper': 1.0913444441913303,
                                  'p_value': 0.14950116878694714},
                   'gb_seq_rel': {'estimate': -0.0455737447277081,
                                  'ci_lower': -0.09780116565926375,
                                  'ci_upper': 0.006653676203847554,
                                  'p_value': 0.12978775268002446},
                   'gb_bayes_rel': {'chance_to_win': 0.996006139950891,
                                    'loss_control': 0.04559499240468945,
                                    'loss_treatment': 2.1247676981346797e-05},
                   'gb_bayes_abs': {'chance_to_win': 0.9952047640777673,
                                    'loss_control': 6.291089514029242,
                                    'loss_treatment': 0.003665162207713529}},
 'error_rate_ratio': {'gb_abs': {'estimate': 0.007382730330190861,
                                 'ci_lower': 0.004714867696475303,
                                 'ci_upper': 0.01005059296390642,
                                 'p_value': 6.033787580683736e-08},
                      'gb_rel': {'estimate': 0.38435136075524073,
                                 'ci_lower': 0.22086022643019423,
                                 'ci_upper': 0.5478424950802873,
                                 'p_value': 4.140054192802722e-06},
                      'gb_seq_abs': {'estimate': 0.007382730330190861,
                                     'ci_lower': 0.00325037462584589,
                                     'ci_upper': 0.011515086034535833,
                                     'p_value': 5.37967437219387e-06},
                      'gb_seq_rel': {'estimate': 0.38435136075524073,
                                     'ci_lower': 0.13111361417868028,
                                     'ci_upper': 0.6375891073318012,
                                     'p_value': 0.0002182315091140631},
                      'gb_bayes_rel': {'chance_to_win': 2.0265190898705043e-06,
                                       'loss_control': 3.3832410372853706e-08,
                                       'loss_treatment': 0.3843513945876511},
                      'gb_bayes_abs': {'chance_to_win': 2.8991996581240187e-08,
                                       'loss_control': 6.8465191943071965e-12,
                                       'loss_treatment': 0.00738273033703738}}}


def _check(ours: dict[str, float], expected: dict[str, float]) -> None:
    for key, ref in expected.items():
        assert rel_err(ours[key], ref) <= RTOL, (key, ours[key], ref)


@pytest.mark.parametrize("name", sorted(CASES))
def test_frequentist_matches_golden(name: str) -> None:
    c, t = CASES[name]
    cmp = welch_test(c, t)
    assert cmp.absolute is not None and cmp.relative is not None
    absolute, relative = vars(cmp.absolute), vars(cmp.relative)
    if isinstance(c, MeanStats):
        _check(absolute, GOLDEN[name]["scipy_abs"])
    else:
        assert "scipy_abs" not in GOLDEN[name]
    _check(absolute, GOLDEN[name]["gb_abs"])
    _check(relative, GOLDEN[name]["gb_rel"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_sequential_matches_golden(name: str) -> None:
    c, t = CASES[name]
    seq = sequential_test(welch_test(c, t), n_star=5000)
    assert seq.absolute is not None and seq.relative is not None
    _check(vars(seq.absolute), GOLDEN[name]["gb_seq_abs"])
    _check(vars(seq.relative), GOLDEN[name]["gb_seq_rel"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_bayesian_matches_golden(name: str) -> None:
    c, t = CASES[name]
    higher_is_better = "ratio" not in name
    cmp = welch_test(c, t)
    for scale in ("relative", "absolute"):
        b = bayesian_test(cmp, scale=scale, higher_is_better=higher_is_better)
        key = "gb_bayes_rel" if scale == "relative" else "gb_bayes_abs"
        _check(vars(b), GOLDEN[name][key])


def test_golden_cases_span_significant_and_not() -> None:
    """The frozen cases exercise both outcomes, so agreement is not trivial."""
    p = [GOLDEN[n]["gb_abs"]["p_value"] for n in GOLDEN]
    assert min(p) < 0.05 < max(p)
