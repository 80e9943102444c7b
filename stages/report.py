"""DVC stage report: the side-by-side markdown report, its figures, and the README's results block."""

from __future__ import annotations

import argparse

from mnist_repro import cli
from mnist_repro.report import build_report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics", required=True, help="directory holding <variant>.json for every variant")
    ap.add_argument("--history", required=True, help="directory holding <variant>.json per-epoch histories")
    ap.add_argument("--consistency", required=True, help="the consistency stage's summary JSON")
    ap.add_argument("--model", required=True, help="state_dict of the last variant in params.yaml")
    ap.add_argument("--data", required=True, help="root holding MNIST/raw (the test set)")
    ap.add_argument("--out", required=True, help="write the markdown report here")
    ap.add_argument("--figures", required=True, help="write the PNG figures into this directory")
    ap.add_argument("--readme", help="replace the results block of this README (between its marker lines)")
    args = ap.parse_args(argv)

    build_report(params_path=args.params, metrics_dir=args.metrics, history_dir=args.history,
                 consistency_path=args.consistency, model_path=args.model, data_root=args.data,
                 report_path=args.out, figures_dir=args.figures, readme_path=args.readme)
    print(f"wrote {args.out} and figures in {args.figures}" + (f"; updated {args.readme}" if args.readme else ""))


if __name__ == "__main__":
    cli.run(main)
