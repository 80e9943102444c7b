"""How many seeds the confirmatory data-path test needs (issue 29, item 4): the power of its
registered rule, simulated from the spread of the runs already committed.

The rule is the table's own (`mnist_repro.compare.stats`): Welch's difference of mean final-epoch
test accuracy, ours − the published data path, and `Difference.equivalence(margin)` —
"equivalent" when TOST at 5% (the 90% interval inside ±margin). Power here is the chance of
"equivalent" when the two paths do not differ, each path's runs drawn normal with the SD its
committed runs show (metrics/runs and metrics/published_path/runs, final_test_acc), for n seeds a
side. The record names every SD with its n, so a reader can redo the sum.

    python research/data_path_power.py --margin 0.10 --out research/data_path_power.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from mnist_repro.compare.stats import welch
from mnist_repro.core.files import write_json

REPO = Path(__file__).resolve().parents[1]
METRIC = "final_test_acc"


def committed(root: Path, variant: str) -> dict[int, float]:
    return {json.loads(p.read_text())["seed"]: json.loads(p.read_text())[METRIC]
            for p in sorted((root / variant).glob("seed_*.json"))}


def power(sd_ours: float, sd_published: float, n: int, margin: float, reps: int, rng) -> float:
    hits = 0
    for _ in range(reps):
        d = welch(list(rng.normal(0.0, sd_ours, n)), list(rng.normal(0.0, sd_published, n)))
        hits += d.equivalence(margin) == "equivalent"
    return hits / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", nargs="+", default=["augmentation", "lr_scheduler"])
    ap.add_argument("--margin", type=float, required=True, help="percentage points of test accuracy")
    ap.add_argument("--n", type=int, nargs="+", default=list(range(6, 31, 2)), help="seeds a side to try")
    ap.add_argument("--reps", type=int, default=4000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    record = {"about": __doc__.split("\n\n")[0].replace("\n", " "), "metric": METRIC, "margin": args.margin,
              "reps": args.reps, "variants": {}}
    for variant in args.variants:
        ours = committed(REPO / "metrics/runs", variant)
        published = committed(REPO / "metrics/published_path/runs", variant)
        sd_o, sd_p = statistics.stdev(ours.values()), statistics.stdev(published.values())
        curve = {n: power(sd_o, sd_p, n, args.margin, args.reps, rng) for n in args.n}
        record["variants"][variant] = {
            "ours": {"seeds": sorted(ours), "sd": round(sd_o, 4)},
            "published_path": {"seeds": sorted(published), "sd": round(sd_p, 4)},
            "power_equivalent_if_no_difference": {str(n): p for n, p in curve.items()}}
        print(f"{variant}: sd ours {sd_o:.3f} (n={len(ours)}), published path {sd_p:.3f} (n={len(published)}); "
              + ", ".join(f"n={n}: {p:.2f}" for n, p in curve.items()))
    write_json(args.out, record)


if __name__ == "__main__":
    main()
