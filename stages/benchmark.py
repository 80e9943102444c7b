"""DVC stage benchmark: our training path vs the published DataLoader path, side by side."""

from __future__ import annotations

import argparse

from mnist_repro import cli
from mnist_repro.benchmark import run_benchmark
from mnist_repro.config import load_params
from mnist_repro.files import write_json
from mnist_repro.train import make_accelerator


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data", help="root holding MNIST/raw")
    ap.add_argument("--out", required=True, help="benchmark JSON to write")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    bench = params.benchmark
    result = run_benchmark(params.variant(bench.variant), params.train, args.data,
                           bench.steps, bench.repeats, make_accelerator(), bench.mixed_precision)
    write_json(args.out, result)
    print({k: result[k] for k in ("variant", "train", "test", "peak_rss_mib_ours")})


if __name__ == "__main__":
    cli.run(main)
