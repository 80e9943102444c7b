"""What a run file says: the per-run summary of a history, how and where the run ran,
and the evaluation images the trained model gets wrong.

One summary for every data path: our training stage writes ``data_path: "ours"``,
the published notebooks' rerun (published_path.py) ``"published"``, with the same keys,
so every reader of run files shares its code.
"""

from __future__ import annotations

import os

import torch

from .config import TrainConfig
from .device_data import prepare_images
from .launch import describe_device, num_machines

DATA_PATHS = ("ours", "published")  # tensors on the device / the notebooks' DataLoader + PIL transforms
SLOT_ENV = "MNIST_REPRO_SLOT"      # the slot (GPU or core set) the matrix runner pinned this run to


def summarize(history: list, *, variant: str, params: int, seed: int, wall_seconds: float, launch: dict,
              data_path: str = "ours") -> dict:
    """The per-run summary: published-style percentages with two decimals, and how it ran."""
    assert data_path in DATA_PATHS, data_path
    best = max(history, key=lambda h: h["test_acc"])  # first epoch reaching the best
    return {
        "variant": variant,
        "params": params,
        "best_train_acc": round(max(h["train_acc"] for h in history), 2),
        "best_test_acc": round(best["test_acc"], 2),
        "best_test_epoch": best["epoch"],
        "final_test_acc": round(history[-1]["test_acc"], 2),
        "final_train_acc": round(history[-1]["train_acc"], 2),
        "min_test_loss": round(min(h["test_loss"] for h in history), 4),
        "epochs": len(history),
        "optimizer_steps": sum(h["steps"] for h in history),
        "train_images": history[-1]["train_images"],
        "test_images": history[-1]["test_images"],
        "seed": seed,
        "data_path": data_path,
        **launch,
        "wall_seconds": round(wall_seconds, 1),
    }


def launch_record(accelerator=None, *, sync_batchnorm: bool = False, holdout: int = 0) -> dict:
    """What a result depends on beyond params: where and how it ran. No accelerator: one
    plain process on the CPU (the published data path)."""
    device = accelerator.device if accelerator else torch.device("cpu")
    return {
        "evaluated_on": f"holdout (last {holdout} training images)" if holdout else "test",
        "num_processes": accelerator.num_processes if accelerator else 1,
        "num_machines": num_machines(accelerator) if accelerator else 1,
        "device": device.type,
        "device_name": describe_device(device),
        "mixed_precision": accelerator.mixed_precision if accelerator else "no",
        "sync_batchnorm": sync_batchnorm,
        "slot": os.environ.get(SLOT_ENV),
        "torch": torch.__version__,
    }


@torch.no_grad()
def misclassified(result, cfg: TrainConfig, accelerator) -> dict:
    """Every evaluation image the trained model (a train.RunResult) gets wrong (index, true
    and predicted label), computed where the model lives so the report only reads files.
    Call it on one process after training."""
    model, data = result.model, result.evaluation
    model.eval()
    wrong = []
    for idx in torch.arange(len(data), device=accelerator.device).split(cfg.eval_batch_size):
        with accelerator.autocast():
            predicted = model(prepare_images(data.images[idx], cfg, augment=False)).argmax(1)
        miss = predicted != data.labels[idx]
        wrong += [{"index": i, "label": t, "predicted": p} for i, t, p in zip(
            idx[miss].tolist(), data.labels[idx][miss].tolist(), predicted[miss].tolist())]
    return {"variant": result.metrics["variant"], "seed": result.metrics["seed"],
            "evaluated_on": result.metrics["evaluated_on"], "test_images": len(data), "misclassified": wrong}
