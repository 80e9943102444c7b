"""The statistics behind the verdicts, on hand-worked numbers (docs/statistics.md states the rules)."""

from __future__ import annotations

import math

import pytest

from mnist_repro.compare.stats import (TOO_FEW, Difference, also_contains, describe, detectable_shift, mean_curve,
                               pooled_shift, prediction_interval, sign_test, t_cdf, t_quantile, welch)


@pytest.mark.parametrize("df, t", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)])
def test_t_quantile_matches_the_printed_tables(df, t):
    assert t_quantile(0.975, df) == pytest.approx(t, abs=5e-5)
    assert t_quantile(0.025, df) == pytest.approx(-t, abs=5e-5)


def test_t_cdf_against_closed_forms():
    for t in (-3.0, -0.5, 0.0, 0.7, 2.0, 12.7062):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)      # Cauchy
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    # a large df tends to the normal: 1.959964 for 97.5%
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)
    # scipy's t CDF rests on the regularized incomplete beta: I_x(a, 1) = x^a and I_x(1, b) = 1 - (1 - x)^b
    from scipy.special import betainc

    assert betainc(2.5, 1, 0.3) == pytest.approx(0.3 ** 2.5, rel=1e-12)
    assert betainc(1, 3.5, 0.3) == pytest.approx(1 - 0.7 ** 3.5, rel=1e-12)


def test_non_integer_df_inverts_the_cdf_between_its_neighbours():
    t = t_quantile(0.975, 7.5)
    assert t_cdf(t, 7.5) == pytest.approx(0.975, abs=1e-12)
    assert t_quantile(0.975, 8) < t < t_quantile(0.975, 7)


def test_prediction_interval_by_hand():
    # 99.47, 99.43, 99.51, 99.43, 99.52: mean 99.472; squared deviations 0.000004 + 0.001764 + 0.001444
    # + 0.001764 + 0.002304 = 0.00728, / 4 -> SD 0.0426615. Half-width t(0.975, 4) · SD · sqrt(1 + 1/5)
    # = 2.776445 · 0.0426615 · 1.0954451 = 0.129752: [99.34225, 99.60175].
    i = prediction_interval([99.47, 99.43, 99.51, 99.43, 99.52])
    assert (i.n, i.mean, i.sd) == (5, pytest.approx(99.472), pytest.approx(0.0426615, abs=1e-7))
    assert i.half_width == pytest.approx(0.129752, abs=1e-6)
    assert (i.low, i.high) == (pytest.approx(99.342248, abs=1e-6), pytest.approx(99.601752, abs=1e-6))
    assert i.verdict(99.53) == "consistent" and i.verdict(99.60) == "consistent"
    assert i.verdict(99.61) == "above" and i.verdict(99.34) == "below"


def test_fewer_than_three_runs_have_no_interval():
    for values in ([99.3], [99.3, 99.5]):
        i = prediction_interval(values)
        assert i.half_width is None and i.low is None and i.verdict(99.4) == TOO_FEW and not i.contains(99.4)
    # three runs: 99.3, 99.4, 99.5 -> SD 0.1, t(0.975, 2) = 4.302653, sqrt(4/3) -> ±0.496828
    assert prediction_interval([99.3, 99.4, 99.5]).half_width == pytest.approx(0.496828, abs=1e-6)


def test_power_lists_the_other_variants_inside():
    i = prediction_interval([99.47, 99.43, 99.51, 99.43, 99.52])  # [99.342, 99.602]
    published = {"a": 99.53, "b": 99.35, "c": 99.32, "d": 99.60, "e": 99.61}
    assert also_contains(i, published, "a") == ["b", "d"]
    assert also_contains(prediction_interval([99.4]), published, "a") == []


def test_welch_difference_by_hand():
    # a: mean 2.5, var 1.666667 (va = 0.416667); b = 2, 2.5, 3.5, 4.5: mean 3.125, var 1.229167
    # (vb = 0.307292); se = sqrt(0.723958) = 0.850857; df = 0.723958² / (0.416667²/3 + 0.307292²/3) = 5.8661
    d = welch([1, 2, 3, 4], [2, 2.5, 3.5, 4.5])
    assert (d.diff, d.se, d.df) == (pytest.approx(-0.625), pytest.approx(0.850857, abs=1e-6),
                                    pytest.approx(5.8661, abs=1e-4))
    low, high = d.ci()
    t = t_quantile(0.975, d.df)  # 2.4; between t(0.975, 5) = 2.5706 and t(0.975, 6) = 2.4469
    assert 2.4469 < t < 2.5706 and (low, high) == (pytest.approx(-0.625 - t * d.se), pytest.approx(-0.625 + t * d.se))
    assert welch([1.0], [1.0, 2.0]) is None
    # scipy's Welch test on the same numbers: the same df, and its 95% CI and p are ours
    from scipy.stats import ttest_ind

    res = ttest_ind([1, 2, 3, 4], [2, 2.5, 3.5, 4.5], equal_var=False)
    ci = res.confidence_interval(0.95)
    assert (low, high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    assert d.p_value() == pytest.approx(res.pvalue)
    # two spreads of exactly zero: no df to estimate, the pooled one; the CI is the difference itself
    assert welch([1.0, 1.0], [2.0, 2.0]) == Difference(-1.0, 0.0, 2) and Difference(-1.0, 0.0, 2).ci() == (-1.0, -1.0)


@pytest.mark.parametrize("diff, se, df, margin, verdict", [
    (0.01, 0.02, 8, 0.15, "equivalent"),    # 90% CI ±0.0372 around 0.01: inside ±0.15
    (0.30, 0.05, 8, 0.15, "different"),     # 95% CI [0.185, 0.415] excludes 0 and the margin
    (0.05, 0.10, 8, 0.15, "inconclusive"),  # 90% CI [-0.136, 0.236] passes 0.15; 95% CI holds 0
    (0.12, 0.01, 8, 0.15, "equivalent"),    # a real but small difference: inside the margin wins
])
def test_the_equivalence_rule(diff, se, df, margin, verdict):
    assert Difference(diff, se, df).equivalence(margin) == verdict


def test_describe_and_mean_curve():
    assert describe([99.5, 99.4, 99.3]) == {"n": 3, "mean": pytest.approx(99.4), "sd": pytest.approx(0.1),
                                            "min": 99.3, "max": 99.5}
    curves = [[{"epoch": 1, "test_acc": 90.0}, {"epoch": 2, "test_acc": 98.0}],
              [{"epoch": 1, "test_acc": 94.0}, {"epoch": 2, "test_acc": 99.0}]]
    assert mean_curve(curves) == [{"epoch": 1, "mean": 92.0, "min": 90.0, "max": 94.0},
                                  {"epoch": 2, "mean": 98.5, "min": 98.0, "max": 99.0}]


def test_tost_is_the_90_percent_interval_inside_the_margin():
    # diff 0.12, se 0.02, df 8: t(0.95, 8) = 1.859548, 90% CI [0.08281, 0.15719] passes +0.15, so TOST's
    # upper test p = P(T <= (0.12 - 0.15) / 0.02 = -1.5) = 0.0860 > 0.05; a margin of 0.16: -2.0 -> 0.0403
    d = Difference(0.12, 0.02, 8)
    assert d.tost(0.15) == pytest.approx(0.08600, abs=5e-5) and d.equivalence(0.15) == "different"
    assert d.tost(0.16) == pytest.approx(0.04025, abs=5e-5) and d.equivalence(0.16) == "equivalent"
    assert d.ci(0.90)[1] == pytest.approx(0.12 + 1.859548 * 0.02, abs=1e-6)


def test_detectable_shift_has_the_stated_power():
    # For large n it is the normal one: (z(0.975) + z(0.80)) · SD = (1.959964 + 0.841621) · SD
    assert detectable_shift(10 ** 6, 1.0) == pytest.approx(2.801585, abs=1e-3)
    assert detectable_shift(2, 0.1) is None and detectable_shift(5, 0.0) == 0.0
    # Simulated: one published value drawn from our spread shifted by the detectable shift falls outside
    # the 95% prediction interval of n = 5 runs in 80% of 200,000 draws (± 0.3% at 3 binomial SDs)
    import numpy as np

    n, sd = 5, 0.1
    shift = detectable_shift(n, sd)
    rng = np.random.default_rng(0)
    ours = rng.normal(99.4, sd, size=(200_000, n))
    published = rng.normal(99.4 + shift, sd, size=200_000)
    half = t_quantile(0.975, n - 1) * ours.std(axis=1, ddof=1) * math.sqrt(1 + 1 / n)
    outside = np.abs(published - ours.mean(axis=1)) > half
    assert outside.mean() == pytest.approx(0.80, abs=0.003)
    # and about the textbook approximation (t(0.975, n − 1) + t(0.80, n − 1)) · SD · sqrt(1 + 1/n) = 0.4072
    assert shift == pytest.approx(0.4120, abs=1e-4)


def test_sign_test_and_pooled_shift_by_hand():
    # 7 of 7 above: p = 2 · (1/2)^7 = 0.015625; 6 of 7: 2 · 8/128 = 0.125; zeros are left out
    assert sign_test([0.1] * 7) == {"above": 7, "below": 0, "n": 7, "p": pytest.approx(0.015625)}
    assert sign_test([0.1] * 6 + [-0.1, 0.0])["p"] == pytest.approx(0.125)
    # 0.1, 0.2, 0.05: mean 0.116667, SD 0.076376, t(0.975, 2) = 4.302653 -> ± 0.189727; weights 100, 50, 100:
    # weighted (10 + 10 + 5) / 250 = 0.1, SE 1 / sqrt(250) = 0.063246, ± 1.959964 · SE = 0.123959
    pooled = pooled_shift([0.1, 0.2, 0.05], [0.01, 0.02, 0.01])
    assert pooled["mean"]["mean"] == pytest.approx(0.116667, abs=1e-6)
    assert (pooled["mean"]["low"], pooled["mean"]["high"]) == (pytest.approx(-0.073060, abs=1e-5),
                                                               pytest.approx(0.306394, abs=1e-5))
    w = pooled["weighted"]
    assert (w["mean"], w["se"]) == (pytest.approx(0.1), pytest.approx(0.0632456, abs=1e-7))
    assert (w["low"], w["high"]) == (pytest.approx(-0.023959, abs=1e-6), pytest.approx(0.223959, abs=1e-6))
