"""DVC stage check_params: validate all of params.yaml before any stage that could lose results runs.

Every training stage depends on this stage's output. `dvc repro` runs a stage only
after deleting its previous outputs, so a typo (`-S +train.epoch=3`) or a bad value
(`-S train.epochs=0`) must stop the pipeline here, while every committed metrics
file, history and model is still in place. The output's content never changes, so
a valid edit reruns only the stages whose own params changed.
"""

from __future__ import annotations

import argparse

from mnist_repro.core import cli
from mnist_repro.core.config import load_params
from mnist_repro.core.files import write_text

STAMP = "params.yaml passed mnist_repro.core.config's checks\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True, help="write a fixed stamp here once the params are valid")
    args = ap.parse_args(argv)
    load_params(args.params)
    write_text(args.out, STAMP)


if __name__ == "__main__":
    cli.run(main)
