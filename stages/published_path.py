"""DVC stage published_path: train one variant the published way (PIL transforms in a DataLoader).

The accuracy check for the speed work: our tensor/batch-augmentation path and
this one should land within seed noise of each other.
"""

from __future__ import annotations

import argparse

import torch

from mnist_repro import cli
from mnist_repro.config import load_params
from mnist_repro.files import write_json
from mnist_repro.models import build_model, count_parameters
from mnist_repro.published_path import published_loader, train_published
from mnist_repro.train import build_optimizer, build_scheduler, steps_per_epoch


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("variant")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", default="data", help="root holding MNIST/raw")
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--history", required=True)
    args = ap.parse_args(argv)

    params = load_params(args.params)
    variant, cfg = params.variant(args.variant), params.train
    torch.manual_seed(cfg.seed)  # as the notebooks do, before building the model
    model = build_model(variant.model, variant.dropout)
    kwargs = dict(mean=cfg.mean, std=cfg.std, batch_size=cfg.batch_size, augment=variant.augment)
    train_loader = published_loader(args.data, train=True, limit=cfg.train_limit, **kwargs)
    test_loader = published_loader(args.data, train=False, limit=cfg.test_limit, **kwargs)
    optimizer = build_optimizer(model, variant)
    scheduler = build_scheduler(optimizer, variant, cfg.epochs, steps_per_epoch(len(train_loader.dataset),
                                                                                 cfg.batch_size))
    history = train_published(model, optimizer, scheduler, train_loader, test_loader, cfg.epochs)
    best = max(history, key=lambda h: h["test_acc"])
    write_json(args.history, history)
    write_json(args.metrics, {
        "variant": variant.name, "path": "published DataLoader + PIL transforms",
        "params": count_parameters(model),
        "best_train_acc": round(max(h["train_acc"] for h in history), 2),
        "best_test_acc": round(best["test_acc"], 2), "best_test_epoch": best["epoch"],
        "final_test_acc": round(history[-1]["test_acc"], 2), "epochs": len(history), "seed": cfg.seed,
    })


if __name__ == "__main__":
    cli.run(main)
