"""DVC stages train@<variant> and seed@<variant>-<seed>: train one variant; write its
run summary, per-epoch history, and (main run) weights and misclassified test images.

By hand:  accelerate launch stages/train.py lr_scheduler      (prints, writes nothing)
In DVC:   dvc.yaml passes params.yaml's launch flags and every output path, so the
          flags that shaped a result are tracked and each path is written in one place.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from mnist_repro import cli
from mnist_repro.config import load_params
from mnist_repro.files import atomic_path, write_json
from mnist_repro.train import check_launch, make_accelerator, misclassified, run_training


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", help="a key under `variants:` in params.yaml")
    ap.add_argument("--seed", type=int, help="override train.seed (the extra-seed runs)")
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

    params = load_params(args.params)
    variant = params.variant(args.variant)  # validated before anything heavy starts
    accelerator = make_accelerator()
    if args.metrics:  # a result filed under params.yaml must have its launch settings
        launch = params.launch
        if args.mixed_precision:
            launch = dataclasses.replace(launch, mixed_precision=args.mixed_precision)
        check_launch(launch, accelerator)
    result = run_training(variant, params.train, args.data, seed=args.seed,
                          checkpoint_dir=args.checkpoint, accelerator=accelerator)
    # Every node writes its own copy: `dvc repro` on each node then finds its outputs.
    if accelerator.is_local_main_process:
        if args.errors:
            write_json(args.errors, misclassified(result, params.train, accelerator))
        if args.history:
            write_json(args.history, result.history)
        if args.model:
            with atomic_path(args.model) as tmp:
                torch.save(result.model.state_dict(), tmp)
        if args.metrics:
            write_json(args.metrics, result.metrics)
        accelerator.print(result.metrics)
    accelerator.wait_for_everyone()
    if result.checkpoint:
        result.checkpoint.finish(accelerator)
    accelerator.end_training()


if __name__ == "__main__":
    cli.run(main)
