"""DVC stage benchmark: each training path (published, eager, default, mixed precision, compiled) side by side,
each repeat in its own process (mnist_repro.training.benchmark)."""

from __future__ import annotations

import argparse

from mnist_repro.core import cli
from mnist_repro.training.benchmark import benchmark_and_write
from mnist_repro.core.config import load_params


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data", help="root holding MNIST/raw")
    ap.add_argument("--out", required=True, help="benchmark JSON to write")
    args = ap.parse_args(argv)
    benchmark_and_write(load_params(args.params), args.data, args.out)


if __name__ == "__main__":
    cli.run(main)
