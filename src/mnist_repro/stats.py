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

t-quantiles are computed exactly (Student-t CDF through the regularized incomplete
beta function, inverted by bisection), so non-integer df work; no scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GAP_AFTER_EPOCH = 3   # the first epochs are warm-up, where one late start dominates every difference
CHANCE_ACC = 20.0     # test accuracy (%) below which an epoch has learnt next to nothing (chance is ~10%)
SWING_EPOCHS = 5      # late epochs whose epoch-to-epoch changes are compared with the interval
TREND_EPOCHS = 3
LEVEL = 0.95          # two-sided level of every interval
MIN_RUNS = 3          # fewer runs of ours: "too few runs", no interval
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


# --- Student's t, exactly -----------------------------------------------------------------

def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for num in (m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
                    -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence at a={a}, b={b}, x={x}")


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df > 0 degrees of freedom (df need not be an integer)."""
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with t_cdf(t, df) = p, by bisection to machine precision; 0 < p < 1."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile: needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(200):
        mid = (low + high) / 2
        if mid in (low, high):
            break
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


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


# --- our data path against the published data path ---------------------------------------

@dataclass(frozen=True)
class Difference:
    """mean(a) − mean(b) with Welch's confidence intervals (Welch–Satterthwaite df)."""
    diff: float
    se: float
    df: float

    def ci(self, level: float = LEVEL) -> tuple[float, float]:
        half = t_quantile((1 + level) / 2, self.df) * self.se if self.se else 0.0
        return self.diff - half, self.diff + half

    def equivalence(self, margin: float) -> str:
        """TOST at 5%: "equivalent" when the 90% CI lies within ±margin; else "different"
        when the 95% CI excludes 0; else "inconclusive"."""
        low, high = self.ci(1 - 2 * (1 - LEVEL))
        if -margin < low and high < margin:
            return "equivalent"
        low, high = self.ci(LEVEL)
        return "different" if low > 0 or high < 0 else "inconclusive"


def welch(a: list[float], b: list[float]) -> Difference | None:
    """Difference of means a − b; None when either side has fewer than 2 values."""
    if len(a) < 2 or len(b) < 2:
        return None
    da, db = describe(a), describe(b)
    va, vb = da["sd"] ** 2 / da["n"], db["sd"] ** 2 / db["n"]
    se = math.sqrt(va + vb)
    # Welch–Satterthwaite; two spreads of exactly zero leave no df to estimate: the pooled one
    df = (va + vb) ** 2 / (va ** 2 / (da["n"] - 1) + vb ** 2 / (db["n"] - 1)) if se else da["n"] + db["n"] - 2
    return Difference(da["mean"] - db["mean"], se, df)


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
