"""DVC stage report: metrics/report.md, its figures, the long-form curves file for `dvc plots` and the
provenance record, rendered from the comparison table, the run files and git history."""

from __future__ import annotations

import argparse

from mnist_repro.core import cli
from mnist_repro.report.build import build_report
from mnist_repro.report.inputs import ReportPaths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ReportPaths.add_arguments(ap)  # one flag per input or output path, with its help
    paths = ReportPaths.from_args(ap.parse_args(argv))
    build_report(paths)
    print(f"wrote {paths.out}, figures in {paths.figures}, the curves to {paths.curves}"
          + (f" and the provenance record to {paths.provenance}" if paths.provenance else ""))


if __name__ == "__main__":
    cli.run(main)
