"""What a run file says: one epoch's row of a history, the per-run summary of a history, how
and where the run ran (each session of a resumed run a segment of its own), the evaluation
images the trained model gets wrong, and the few aligned lines a run prints at its end (the
JSON stays in the run file).

One summary for every data path: our training stage writes ``data_path: "ours"``,
the published notebooks' rerun (published_path.py) ``"published"``, with the same keys,
so every reader of run files shares its code.
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

import torch

from ..core.config import TrainConfig
from .device_data import prepare_images
from .launch import describe_device, num_machines

DATA_PATHS = ("ours", "published")  # tensors on the device / the notebooks' DataLoader + PIL transforms
SLOT_ENV = "MNIST_REPRO_SLOT"      # the slot (GPU or core set) the matrix runner pinned this run to
WIDTH = 120                        # columns: no line a run prints by default is wider (tests/test_resume.py)


def timestamp(seconds: float) -> str:
    """A time.time() as UTC ISO 8601 to the second: when a segment started or ended."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def segment(first_epoch: int, last_epoch: int, *, started: float, ended: float, device_name: str,
            override: str | None = None) -> dict:
    """One session of a run: the epochs it trained, on how many torch threads per process, in
    which slot and on which device, from when to when (time.time()); ``override`` records a
    resume allowed across a thread-count change."""
    return {"epochs": [first_epoch, last_epoch], "threads": torch.get_num_threads(),
            "slot": os.environ.get(SLOT_ENV), "device_name": device_name,
            "started": timestamp(started), "ended": timestamp(ended),
            **({"override": override} if override else {})}


def history_row(epoch: int, tr: dict, te: dict, seconds: float) -> dict:
    """One epoch of a history, the same on both data paths (train.py, published_path.py):
    ``tr`` the training pass's loss, acc, lr, steps and images, ``te`` the test pass's
    loss, acc and images, ``seconds`` the two passes' wall time (kept to two decimals)."""
    return {"epoch": epoch, "train_loss": tr["loss"], "train_acc": tr["acc"],
            "test_loss": te["loss"], "test_acc": te["acc"], "lr": tr["lr"], "steps": tr["steps"],
            "train_images": tr["images"], "test_images": te["images"], "seconds": round(seconds, 2)}


def summarize(history: list, *, variant: str, params: int, seed: int, wall_seconds: float, launch: dict,
              data_path: str = "ours", segments: list | None = None) -> dict:
    """The per-run summary: published-style percentages with two decimals, and how it ran.
    ``segments`` (oldest first) default to one session that ends now and trained every epoch."""
    assert data_path in DATA_PATHS, data_path
    best = max(history, key=lambda h: h["test_acc"])  # first epoch reaching the best
    if segments is None:
        now = time.time()
        segments = [segment(1, len(history), started=now - wall_seconds, ended=now,
                            device_name=launch["device_name"])]
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
        "segments": segments,
    }


def summary_lines(metrics: dict, run_file=None) -> list[str]:
    """What a person reads at a run's end: a few aligned lines, none wider than WIDTH columns
    (a long run-file path aside); every number is the run file's."""
    segments = metrics["segments"]
    threads = sorted({s["threads"] for s in segments})
    slots = list(dict.fromkeys(s["slot"] for s in segments if s["slot"]))
    sessions = f" ({len(segments)} sessions)" if len(segments) > 1 else ""
    precision = "fp32" if metrics["mixed_precision"] == "no" else metrics["mixed_precision"]
    kind = metrics["evaluated_on"].split(" ")[0]  # test, or holdout (train.holdout)
    rows = [(f"{kind} accuracy", f"final {metrics['final_test_acc']:.2f}%",
             f"best {metrics['best_test_acc']:.2f}% (epoch {metrics['best_test_epoch']})"),
            ("train accuracy", f"final {metrics['final_train_acc']:.2f}%", f"best {metrics['best_train_acc']:.2f}%"),
            (f"{kind} loss", f"min {metrics['min_test_loss']:.4f}", f"on {metrics['test_images']:,} images"),
            ("ran on", f"{metrics['device']}, {precision}",
             f"{_plural(metrics['num_processes'], 'process', 'processes')} x "
             f"{'/'.join(map(str, threads))} thread{'' if threads == [1] else 's'}"
             + (f", slot {', '.join(slots)}" if slots else ""))]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return [f"{metrics['variant']} seed {metrics['seed']}: {_plural(metrics['epochs'], 'epoch')} in "
            f"{_duration(metrics['wall_seconds'])}{sessions}",
            *(f"  {a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows),
            f"  run file: {run_file}" if run_file else "  no run file written (no --metrics)"]


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def launch_record(accelerator=None, *, sync_batchnorm: bool = False, holdout: int = 0, compiled: bool = False,
                  kept_memory: bool = False) -> dict:
    """What a result depends on beyond params: where and how it ran. No accelerator: one
    plain process on the CPU (the published data path). ``compiled``: train.compile;
    ``kept_memory``: whether train.keep_freed_memory took effect (speed.keep_freed_memory)."""
    device = accelerator.device if accelerator else torch.device("cpu")
    return {
        "evaluated_on": f"holdout (last {holdout} training images)" if holdout else "test",
        "num_processes": accelerator.num_processes if accelerator else 1,
        "num_machines": num_machines(accelerator) if accelerator else 1,
        "device": device.type,
        "device_name": describe_device(device),
        "mixed_precision": accelerator.mixed_precision if accelerator else "no",
        "sync_batchnorm": sync_batchnorm,
        "compile": compiled,
        "keep_freed_memory": kept_memory,
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
