"""DVC stage train@<variant>: train one variant; write its metrics, history and weights.

By hand:  accelerate launch stages/train.py lr_scheduler      (prints, writes nothing)
In DVC:   dvc.yaml passes every output path, so they are written in one place only.
"""

from __future__ import annotations

import argparse

import torch

from mnist_repro import cli
from mnist_repro.config import load_params
from mnist_repro.io import atomic_path, write_json
from mnist_repro.train import make_accelerator, run_training


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variant", help="a key under `variants:` in params.yaml")
    ap.add_argument("--seed", type=int, help="override train.seed (the consistency runs)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data", help="root holding MNIST/raw")
    ap.add_argument("--metrics", help="write the summary metrics JSON here")
    ap.add_argument("--history", help="write the per-epoch history JSON here")
    ap.add_argument("--model", help="write the trained state_dict here")
    ap.add_argument("--checkpoint", help="directory for per-epoch resume state")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    variant = params.variant(args.variant)  # validated before anything heavy starts
    accelerator = make_accelerator()
    result = run_training(variant, params.train, args.data, seed=args.seed,
                          checkpoint_dir=args.checkpoint, accelerator=accelerator)
    if accelerator.is_main_process:
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
