"""DVC stage download: MNIST into data/MNIST/raw, verified against the official SHA-256 digests."""

from __future__ import annotations

import argparse

from mnist_repro import cli
from mnist_repro.config import load_params
from mnist_repro.data import download_mnist


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default="data", help="writes <root>/MNIST/raw")
    args = ap.parse_args(argv)
    download_mnist(args.root, load_params(args.params).download.mirror)


if __name__ == "__main__":
    cli.run(main)
