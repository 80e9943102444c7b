"""Statistics of the comparison: seed spreads, the noise band and its verdict, curve facts.

Pure functions of numbers and per-epoch lists; nothing here reads a file or formats text.

The verdict rule
----------------
Our runs of a variant (n seeds, the same recipe) give best test accuracies with
mean m and sample standard deviation sd (ddof 1; sd = 0 when n = 1). The
published best test accuracy p is one run, measured on N test images, so it
carries a binomial sampling error se = sqrt(p (1 - p) / N) (p as a fraction, se
in percentage points) on top of the seed-to-seed spread that sd estimates.
The band is

    m ± 2 · sqrt(sd² + se²)

and the verdict says where p falls: "within" the band (ends included),
"above" it or "below" it. N is our runs' test-image count; with one seed the band
is m ± 2·se.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BAND_SIGMAS = 2
GAP_AFTER_EPOCH = 3   # the first epochs are warm-up, where one late start dominates every difference
CHANCE_ACC = 20.0     # test accuracy (%) below which an epoch has learnt next to nothing (chance is ~10%)
SWING_EPOCHS = 5      # late epochs whose epoch-to-epoch changes are compared with the band
TREND_EPOCHS = 3


def describe(values: list[float]) -> dict:
    """n, mean, sample standard deviation (ddof 1; 0.0 for a single value), min, max."""
    n = len(values)
    if not n:
        raise ValueError("describe: no values")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def seed_summary(runs: list[dict]) -> dict:
    """Spread over one variant's runs (train.summarize dicts) of its three accuracies."""
    return {"n": len(runs),
            "best_test": describe([r["best_test_acc"] for r in runs]),
            "final_test": describe([r["final_test_acc"] for r in runs]),
            "best_train": describe([r["best_train_acc"] for r in runs])}


def binomial_se(acc_percent: float, n_images: int) -> float:
    """Standard error, in percentage points, of an accuracy measured on n independent images."""
    p = acc_percent / 100
    return 100 * math.sqrt(p * (1 - p) / n_images)


@dataclass(frozen=True)
class Band:
    mean: float         # of our seeds' best test accuracy
    sd: float           # sample SD of the same, 0 with one seed
    se: float           # binomial SE at the published accuracy over our test-image count
    half_width: float   # BAND_SIGMAS * sqrt(sd² + se²)

    def verdict(self, published: float) -> str:
        if published > self.mean + self.half_width:
            return "above"
        if published < self.mean - self.half_width:
            return "below"
        return "within"


def band(best_tests: list[float], published: float, n_images: int) -> Band:
    """The noise band of our seeds' best test accuracies around which `published` is judged."""
    d = describe(best_tests)
    se = binomial_se(published, n_images)
    return Band(d["mean"], d["sd"], se, BAND_SIGMAS * math.sqrt(d["sd"] ** 2 + se ** 2))


# --- per-epoch curves -----------------------------------------------------------------

def mean_curve(histories: list[list[dict]], key: str = "test_acc") -> list[dict]:
    """Per epoch over seeds: {"epoch", "mean", "min", "max"}; the histories have equal lengths."""
    curve = []
    for epoch_entries in zip(*histories):
        values = [e[key] for e in epoch_entries]
        curve.append({"epoch": epoch_entries[0]["epoch"], "mean": sum(values) / len(values),
                      "min": min(values), "max": max(values)})
    return curve


CURVE_KEYS = ("ours_mean", "ours_min", "ours_max", "published", "published_path")


def plot_curve(ours: list[dict], published_log, code_history) -> list[dict]:
    """Per epoch, for `dvc plots`: {"epoch", "ours_mean", "ours_min", "ours_max", "published"} and
    "published_path" where that rerun exists, in percent, rounded to 2 decimals. The first four are
    always there, null where the series lacks the epoch (not run yet, no published entry): a plot
    naming a field that one variant's file lacks drops that plot for every variant. ours:
    mean_curve output, [] when not run; the others: per-epoch dicts with "test_acc", or None."""
    values: dict[int, dict] = {}
    for o in ours:
        values.setdefault(o["epoch"], {}).update(ours_mean=o["mean"], ours_min=o["min"], ours_max=o["max"])
    for key, log in (("published", published_log), ("published_path", code_history)):
        for e in log or ():
            values.setdefault(e["epoch"], {})[key] = e["test_acc"]
    return [{"epoch": epoch, **{k: round(v[k], 2) if k in v else None for k in CURVE_KEYS
                                if k in v or k != "published_path"}}
            for epoch, v in sorted(values.items())]


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


# --- which side is off ----------------------------------------------------------------

@dataclass(frozen=True)
class Attribution:
    """For a variant outside its band: does the published code, rerun here, side with
    our runs or with the published run? Both judged with the variant's band half-width."""
    code: float
    ours_vs_code: bool        # our seed mean and the published code here differ beyond the band
    published_vs_code: bool   # the published run and the published code here differ beyond it

    @property
    def cause(self) -> str:
        if self.ours_vs_code and not self.published_vs_code:
            return "a bug in ours"
        if self.published_vs_code and not self.ours_vs_code:
            return "the published run's own noise"
        return "undecided"


def attribute(b: Band, published: float, code: float) -> Attribution:
    return Attribution(code, abs(code - b.mean) > b.half_width, abs(code - published) > b.half_width)
