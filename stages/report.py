"""DVC stage report: metrics/report.md, its figures, the long-form curves file for `dvc plots` and the
provenance record, rendered from the comparison table, the run files and git history."""

from __future__ import annotations

import argparse

from mnist_repro.core import cli
from mnist_repro.report.build import build_report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--reference", required=True, help="the published numbers and logs (reference/published.json)")
    ap.add_argument("--table", required=True, help="the compare stage's directory of per-variant rows")
    ap.add_argument("--runs", required=True, help="directory holding <variant>/seed_<s>.json run summaries")
    ap.add_argument("--history", required=True, help="directory holding <variant>/seed_<s>.json per-epoch histories")
    ap.add_argument("--published-path", required=True,
                    help="directory holding runs/ and history/ of the published-path reruns")
    ap.add_argument("--confirmation", required=True,
                    help="directory holding runs/ and history/ of the confirmation runs (confirm@<seed>)")
    ap.add_argument("--errors", required=True, help="directory holding <variant>.json misclassified test images")
    ap.add_argument("--precision", required=True, help="directory holding the precision@<seed> runs' seed_<s>.json")
    ap.add_argument("--search", help="directory holding <variant>.json design-search records (research/search.py) "
                    "and test_set_uses.json (research/test_set_uses.py)")
    ap.add_argument("--compile-check", help="directory holding runs/ and history/ of the compile_check@ runs")
    ap.add_argument("--data", required=True, help="root holding MNIST/raw (the test images drawn)")
    ap.add_argument("--out", required=True, help="write the markdown report here")
    ap.add_argument("--figures", required=True, help="write the PNG figures into this directory")
    ap.add_argument("--curves", required=True, help="write the long-form curves (dvc plots) to this JSON file")
    ap.add_argument("--provenance", help="write the provenance record (when each decision was fixed, read from "
                    "git history) to this JSON file")
    args = ap.parse_args(argv)

    build_report(params_path=args.params, reference_path=args.reference, table_dir=args.table, runs_dir=args.runs,
                 history_dir=args.history, code_dir=args.published_path, errors_dir=args.errors,
                 precision_dir=args.precision, confirmation_dir=args.confirmation, search_dir=args.search,
                 data_root=args.data, report_path=args.out, figures_dir=args.figures, curves_path=args.curves,
                 provenance_path=args.provenance, compile_check_dir=args.compile_check)
    print(f"wrote {args.out}, figures in {args.figures}, the curves to {args.curves}"
          + (f" and the provenance record to {args.provenance}" if args.provenance else ""))


if __name__ == "__main__":
    cli.run(main)
