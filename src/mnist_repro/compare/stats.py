"""Statistics of the comparison: seed spreads, prediction intervals and their verdicts, curve facts.

Pure functions of numbers and per-epoch lists; nothing here reads a file or formats text.
docs/statistics.md states the rules for a reader; in short:

The verdict rule (one published run against n runs of ours)
-----------------------------------------------------------
Our n seeds of a variant give values (best or final test accuracy) with mean m and
sample SD s (ddof 1). The 95% prediction interval for one more run of our code is

    m ± t(0.975, n − 1) · s · sqrt(1 + 1/n)

The published value, one run on the same 10,000 test images, is "consistent" (inside,
ends included: not rejected, not proven equal), "above" or "below" it. With n < 3
there is no interval and the verdict is "too few runs". No binomial term: the seed
spread s is already measured on the same test images.

Our data path against the published data path (the same seeds on both)
------------------------------------------------------------------------
The difference of means (ours − published path) with a Welch confidence interval
(Welch–Satterthwaite df). Equivalence by TOST at 5%: "equivalent" when the 90% CI
lies inside ±margin; else "different" when the 95% CI excludes 0; else
"inconclusive".

Student's t (quantiles, CDF, the noncentral t of the power figures) is scipy.stats';
Welch's df is scipy.stats.ttest_ind(equal_var=False)'s, and equivalence is two one-sided
t tests (TOST) on that df.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats as _scipy_stats
from scipy.optimize import brentq as _brentq
from scipy.stats import t as _t

GAP_AFTER_EPOCH = 3   # the first epochs are warm-up, where one late start dominates every difference
CHANCE_ACC = 20.0     # test accuracy (%) below which an epoch has learnt next to nothing (chance is ~10%)
SWING_EPOCHS = 5      # late epochs whose epoch-to-epoch changes are compared with the interval
TREND_EPOCHS = 3
LEVEL = 0.95          # two-sided level of every interval
MIN_RUNS = 3          # fewer runs of ours: "too few runs", no interval
POWER = 0.80          # the power at which a verdict's detectable shift is stated
TOO_FEW = "too few runs"
VERDICTS = ("consistent", "above", "below")
EQUIVALENCE = ("equivalent", "different", "inconclusive")


def describe(values: list[float]) -> dict:
    """n, mean, sample standard deviation (ddof 1; 0.0 for a single value), min, max."""
    n = len(values)
    if not n:
        raise ValueError("describe: no values")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def seed_summary(runs: list[dict]) -> dict:
    """Spread over one variant's runs (run-file dicts) of its three accuracies."""
    return {"n": len(runs),
            "best_test": describe([r["best_test_acc"] for r in runs]),
            "final_test": describe([r["final_test_acc"] for r in runs]),
            "best_train": describe([r["best_train_acc"] for r in runs])}


# --- Student's t, from scipy.stats --------------------------------------------------------

def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df > 0 degrees of freedom (df need not be an integer)."""
    return float(_t.cdf(t, df))


def t_quantile(p: float, df: float) -> float:
    """The t with t_cdf(t, df) = p (scipy.stats.t.ppf); 0 < p < 1, df > 0."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile: needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    return float(_t.ppf(p, df))


# --- one published run against our seeds ----------------------------------------------------

@dataclass(frozen=True)
class Interval:
    """The prediction interval for one more run of ours; half_width None below MIN_RUNS runs."""
    n: int
    mean: float
    sd: float
    half_width: float | None

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def contains(self, value: float) -> bool:
        return self.half_width is not None and self.low <= value <= self.high

    def verdict(self, published: float) -> str:
        """Where the published value falls: "consistent", "above", "below", or TOO_FEW."""
        if self.half_width is None:
            return TOO_FEW
        return "above" if published > self.high else "below" if published < self.low else "consistent"


def prediction_interval(values: list[float], level: float = LEVEL) -> Interval:
    """mean ± t((1 + level)/2, n − 1) · sd · sqrt(1 + 1/n) over our runs' values."""
    d = describe(values)
    n = d["n"]
    if n < MIN_RUNS:
        return Interval(n, d["mean"], d["sd"], None)
    t = t_quantile((1 + level) / 2, n - 1)
    return Interval(n, d["mean"], d["sd"], t * d["sd"] * math.sqrt(1 + 1 / n))


def also_contains(interval: Interval, published: dict, own: str) -> list[str]:
    """The other variants (name -> published value) whose published value the interval also
    contains: what a "consistent" verdict cannot tell apart from this variant's."""
    return [name for name, value in published.items() if name != own and interval.contains(value)]


def detectable_shift(n: int, sd: float, level: float = LEVEL, power: float = POWER) -> float | None:
    """The smallest shift δ of the published run from our mean that the verdict detects with
    probability `power`: a published value drawn from our spread shifted by δ falls outside
    mean ± t((1 + level)/2, n − 1) · sd · sqrt(1 + 1/n) that often. (published − mean) /
    (sd · sqrt(1 + 1/n)) is then noncentral t with n − 1 df and noncentrality
    δ / (σ · sqrt(1 + 1/n)), σ taken as sd (scipy.stats.nct). None below MIN_RUNS runs."""
    if n < MIN_RUNS:
        return None
    if not sd:
        return 0.0
    df, scale = n - 1, sd * math.sqrt(1 + 1 / n)
    crit = t_quantile((1 + level) / 2, df)

    def outside(nc: float) -> float:
        return float(_scipy_stats.nct.sf(crit, df, nc) + _scipy_stats.nct.cdf(-crit, df, nc)) - power

    high = 1.0
    while outside(high) < 0:
        high *= 2
    return float(_brentq(outside, 0.0, high, xtol=1e-12)) * scale


def sign_test(differences: list[float]) -> dict:
    """Two-sided sign test of differences against 0 (scipy.stats.binomtest, p = 1/2); zeros left out."""
    above, below = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    n = above + below
    return {"above": above, "below": below, "n": n,
            "p": float(_scipy_stats.binomtest(above, n, 0.5).pvalue) if n else 1.0}


def pooled_shift(differences: list[float], variances: list[float], level: float = LEVEL) -> dict:
    """Two pooled estimates of a common shift from per-unit differences: their plain mean with its
    t interval over the units (scipy.stats.ttest_1samp, n − 1 df), and the inverse-variance
    weighted mean with its normal interval (weights 1 / variance)."""
    n = len(differences)
    mean = sum(differences) / n
    plain = {"mean": mean, "low": None, "high": None, "p": None}
    if n > 1:
        res = _scipy_stats.ttest_1samp(differences, 0.0)
        ci = res.confidence_interval(level)
        plain.update(low=float(ci.low), high=float(ci.high), p=float(res.pvalue))
    weights = [1 / v for v in variances]
    weighted = sum(w * d for w, d in zip(weights, differences)) / sum(weights)
    se = 1 / math.sqrt(sum(weights))
    z = float(_scipy_stats.norm.ppf((1 + level) / 2))
    return {"n": n, "mean": plain, "weighted": {"mean": weighted, "se": se, "low": weighted - z * se,
                                                "high": weighted + z * se}}


# --- our data path against the published data path ---------------------------------------

@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with its standard error and Welch–Satterthwaite df; its confidence
    intervals and tests are Student's t on that df (scipy.stats.t)."""
    diff: float
    se: float
    df: float

    def ci(self, level: float = LEVEL) -> tuple[float, float]:
        half = t_quantile((1 + level) / 2, self.df) * self.se if self.se else 0.0
        return self.diff - half, self.diff + half

    def p_greater(self, bound: float) -> float:
        """One-sided p of H0: true difference <= bound (alternative: greater)."""
        if not self.se:
            return 0.0 if self.diff > bound else 1.0
        return float(_t.sf((self.diff - bound) / self.se, self.df))

    def p_less(self, bound: float) -> float:
        """One-sided p of H0: true difference >= bound (alternative: less)."""
        if not self.se:
            return 0.0 if self.diff < bound else 1.0
        return float(_t.cdf((self.diff - bound) / self.se, self.df))

    def p_value(self) -> float:
        """Two-sided p of H0: no difference (Welch's t test)."""
        return min(1.0, 2 * min(self.p_greater(0.0), self.p_less(0.0)))

    def tost(self, margin: float) -> float:
        """p of the two one-sided tests against ±margin: the larger of the two one-sided p's."""
        return max(self.p_greater(-margin), self.p_less(margin))

    def equivalence(self, margin: float) -> str:
        """TOST at 5% (the same as the 90% CI lying within ±margin): "equivalent"; else "different"
        when Welch's two-sided test rejects no difference at 5% (the 95% CI excludes 0); else
        "inconclusive"."""
        alpha = 1 - LEVEL
        if self.tost(margin) < alpha:
            return "equivalent"
        return "different" if self.p_value() < alpha else "inconclusive"


def welch(a: list[float], b: list[float]) -> Difference | None:
    """Difference of means a − b; None when either side has fewer than 2 values. The df is
    scipy.stats.ttest_ind(a, b, equal_var=False)'s (Welch–Satterthwaite); the standard error is
    sqrt(sem(a)² + sem(b)²)."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = sum(a) / len(a) - sum(b) / len(b)
    se = math.hypot(float(_scipy_stats.sem(a)), float(_scipy_stats.sem(b)))
    if not se:  # two spreads of exactly zero leave no df to estimate: the pooled one
        return Difference(diff, 0.0, len(a) + len(b) - 2)
    return Difference(diff, se, float(_scipy_stats.ttest_ind(a, b, equal_var=False).df))


# --- per-epoch curves -----------------------------------------------------------------

def mean_curve(histories: list[list[dict]], key: str = "test_acc") -> list[dict]:
    """Per epoch over seeds: {"epoch", "mean", "min", "max"}; the histories have equal lengths."""
    curve = []
    for epoch_entries in zip(*histories):
        values = [e[key] for e in epoch_entries]
        curve.append({"epoch": epoch_entries[0]["epoch"], "mean": sum(values) / len(values),
                      "min": min(values), "max": max(values)})
    return curve


@dataclass(frozen=True)
class Gap:
    epoch: int
    ours: float         # our seed-mean test accuracy at that epoch
    published: float    # the published log's
    difference: float   # ours - published, percentage points


def largest_gap(ours: list[dict], published_log, after: int = GAP_AFTER_EPOCH) -> Gap | None:
    """The epoch after `after` where our seed-mean curve (mean_curve) is furthest from the
    published log's test accuracy; None when they share no such epoch."""
    published = {e["epoch"]: e["test_acc"] for e in published_log}
    gaps = [Gap(o["epoch"], o["mean"], published[o["epoch"]], o["mean"] - published[o["epoch"]])
            for o in ours if o["epoch"] > after and o["epoch"] in published]
    return max(gaps, key=lambda g: abs(g.difference), default=None)


def stalled_epochs(accs: list[float]) -> int:
    """Leading epochs whose test accuracy stayed near chance: training that had not started."""
    n = 0
    while n < len(accs) and accs[n] < CHANCE_ACC:
        n += 1
    return n


def largest_swing(accs: list[float], last: int = SWING_EPOCHS) -> float:
    """Largest change in test accuracy between consecutive epochs among the last `last`."""
    tail = accs[-last:]
    return max((abs(b - a) for a, b in zip(tail, tail[1:])), default=0.0)


def trend(values: list[float]) -> str:
    steps = [b - a for a, b in zip(values, values[1:])]
    if not steps:
        return "a single epoch"
    if steps and all(s > 0 for s in steps):
        return "rising each epoch"
    if steps and all(s < 0 for s in steps):
        return "falling each epoch"
    return "not monotonic"
