"""DVC stages train@<variant>, seed@<variant>-<seed>, precision@<seed> and confirm@<seed>: train
one variant; write its run summary, per-epoch history, and (main run) weights and misclassified
test images.

By hand:  python -m mnist_repro.launch stages/train.py lr_scheduler --quick   (prints, writes nothing)
          (mnist_repro.launch is `accelerate launch`, same flags, without the launcher's own
          traceback after an error or a Ctrl-C)
In DVC:   dvc.yaml passes params.yaml's launch flags and every output path, so the
          flags that shaped a result are tracked and each path is written in one place.
Ctrl-C stops it with one line on how to resume (rerun the same command: it resumes from
the last finished epoch saved under --checkpoint).
"""

from __future__ import annotations

import argparse

from mnist_repro import cli
from mnist_repro.config import load_params
from mnist_repro.train import QUICK, train_and_write


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", help="a key under `variants:` in params.yaml")
    ap.add_argument("--seed", type=int, help="override train.seed (the extra-seed and confirmation runs)")
    ap.add_argument("--epochs", type=int, help="override train.epochs for this run")
    ap.add_argument("--train-limit", type=int, help="override train.train_limit: train on the first N images")
    ap.add_argument("--test-limit", type=int, help="override train.test_limit: test on the first N images")
    ap.add_argument("--quick", action="store_true", help=(
        f"a quick look, not a result: {QUICK['epochs']} epoch on the first {QUICK['train_limit']:,} training "
        f"and {QUICK['test_limit']:,} test images (--epochs and the limits still override it)"))
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data", help="root holding MNIST/raw")
    ap.add_argument("--metrics", help="write the run summary JSON here")
    ap.add_argument("--history", help="write the per-epoch history JSON here")
    ap.add_argument("--model", help="write the trained state_dict here")
    ap.add_argument("--errors", help="write the misclassified evaluation images (index, label, prediction) here")
    ap.add_argument("--checkpoint", help="directory for per-epoch resume state")
    ap.add_argument("--mixed-precision", help="the precision this run must have instead of "
                    "launch.mixed_precision (the precision@ stages)")
    args = ap.parse_args(argv)

    overrides = dict(QUICK) if args.quick else {}
    overrides.update({key: value for key, value in (("epochs", args.epochs), ("train_limit", args.train_limit),
                                                    ("test_limit", args.test_limit)) if value is not None})
    train_and_write(load_params(args.params), args.variant, args.data, seed=args.seed, train_overrides=overrides,
                    mixed_precision=args.mixed_precision, metrics=args.metrics, history=args.history,
                    model=args.model, errors=args.errors, checkpoint=args.checkpoint)


if __name__ == "__main__":
    cli.run(main, resume_option="--checkpoint")
