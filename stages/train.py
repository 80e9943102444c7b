"""DVC stages train@<variant>, seed@<variant>-<seed>, registered@<variant>-<seed>, precision@<seed>,
confirm@<seed> and compile_check@<variant>-<seed>: train one variant; write its run summary, per-epoch history, and
(main run) weights and misclassified test images.

By hand:  python -m mnist_repro.training.launch stages/train.py lr_scheduler --quick   (prints, writes nothing)
          (mnist_repro.training.launch is `accelerate launch`, same flags, without the launcher's own
          traceback after an error or a Ctrl-C)
In DVC:   dvc.yaml passes params.yaml's launch flags and every output path, so the
          flags that shaped a result are tracked and each path is written in one place.
Resume state (each finished epoch): --resume keeps it in the run's own folder under
$MNIST_REPRO_CHECKPOINTS, else checkpoints/ at the project root (also from inside `dvc exp run
--temp`'s temporary copy, which DVC deletes); --checkpoint DIR keeps it in DIR. Ctrl-C stops
the run with one line saying which epochs are saved, if any, and what the rerun does.
"""

from __future__ import annotations

import argparse

from mnist_repro.training import checkpoint

from mnist_repro.core import cli
from mnist_repro.core.config import load_params
from mnist_repro.parallel import pending
from mnist_repro.training.train import QUICK, train_and_write


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", help="a key under `variants:` (or `registration.variants:`) in params.yaml")
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
    ap.add_argument("--resume", action="store_true", help=(
        f"keep per-epoch resume state in the run's own folder under ${checkpoint.HOME_ENV}, else checkpoints/ "
        "at the DVC project's root (dvc.yaml's stages; it outlives `dvc exp run --temp`)"))
    ap.add_argument("--mixed-precision", help="the precision this run must have instead of "
                    "launch.mixed_precision (the precision@ stages)")
    ap.add_argument("--other-compile", action="store_true", help="train with train.compile's other value "
                    "(the compile_check@ stages)")
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)

    overrides = dict(QUICK) if args.quick else {}
    overrides.update({key: value for key, value in (("epochs", args.epochs), ("train_limit", args.train_limit),
                                                    ("test_limit", args.test_limit)) if value is not None})
    params = load_params(args.params)
    if args.other_compile:
        overrides["compile"] = not params.train.compile
    pending.announce()  # under `dvc repro`: the pipeline's pending training runs and their time, one line
    train_and_write(params, args.variant, args.data, seed=args.seed, train_overrides=overrides,
                    mixed_precision=args.mixed_precision, metrics=args.metrics, history=args.history,
                    model=args.model, errors=args.errors, checkpoint=args.checkpoint, resume=args.resume)


def interrupted(argv, rerun: str) -> str:
    args = parser().parse_args(argv)
    return checkpoint.interrupted_line(rerun, kept=bool(args.checkpoint or args.resume))


if __name__ == "__main__":
    cli.run(main, on_interrupt=interrupted)
