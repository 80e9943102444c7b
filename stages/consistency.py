"""DVC stage consistency: one variant's best and final test accuracy over train.seed and the extra seeds."""

from __future__ import annotations

import argparse

from mnist_repro import cli
from mnist_repro.config import load_params
from mnist_repro.consistency import collect_runs, summarize_seeds
from mnist_repro.io import write_json


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--main", required=True, help="metrics JSON of the main run (train.seed)")
    ap.add_argument("--runs", required=True, help="directory holding seed_<s>.json for each extra seed")
    ap.add_argument("--out", required=True, help="write the summary JSON here")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    variant = params.consistency.variant
    runs = collect_runs(args.main, args.runs, variant, params.train.seed, params.consistency.extra_seeds)
    summary = summarize_seeds(runs, variant)
    write_json(args.out, summary)
    best, final = summary["best_test_acc"], summary["final_test_acc"]
    print(f"{variant} over {summary['n']} seeds: best test {best['mean']} ± {best['std']}, "
          f"final test {final['mean']} ± {final['std']}; reaching {summary['target_acc']}%: "
          f"{summary['reached_target_final']}/{summary['n']} final, {summary['reached_target_best']}/{summary['n']} best")


if __name__ == "__main__":
    cli.run(main)
