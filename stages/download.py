"""DVC stage download: MNIST into data/MNIST/raw, verified against the official SHA-256 digests."""

from __future__ import annotations

import argparse

from mnist_repro.core import cli
from mnist_repro.core.config import load_params
from mnist_repro.core.data import MNIST_FILES, download_mnist, sha256_of
from mnist_repro.core.files import write_text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--root", default="data", help="writes <root>/MNIST/raw")
    ap.add_argument("--manifest", help="write each file's SHA-256 here (sha256sum's format): what the "
                    "stages after this one depend on, committed, so a clone has it")
    args = ap.parse_args(argv)
    raw = download_mnist(args.root, load_params(args.params).download.mirror)
    if args.manifest:
        write_text(args.manifest, "".join(f"{sha256_of(raw / name)}  {name}\n" for name in MNIST_FILES))


if __name__ == "__main__":
    cli.run(main)
