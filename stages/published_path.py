"""DVC stage published_path@<variant>-<seed>: train one variant the published way (the notebooks'
DataLoader with per-image PIL transforms and their loop) with one seed.

The accuracy check for the speed work: our tensor/batch-augmentation path and this one
should land within seed noise of each other. Its run file has our run files' keys, with
data_path "published".
"""

from __future__ import annotations

import argparse

from mnist_repro.core import cli
from mnist_repro.core.config import load_params
from mnist_repro.parallel import pending
from mnist_repro.training.published_path import rerun_and_write


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("variant")
    ap.add_argument("--seed", type=int, help="torch.manual_seed before the model is built (default train.seed)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data", help="root holding MNIST/raw")
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--history", required=True)
    args = ap.parse_args(argv)
    pending.announce(cpu=True)  # under `dvc repro`: the pipeline's pending training runs and their time
    rerun_and_write(load_params(args.params), args.variant, args.data, seed=args.seed,
                    metrics=args.metrics, history=args.history)


if __name__ == "__main__":
    cli.run(main)
