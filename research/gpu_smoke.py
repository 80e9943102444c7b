"""Every small variant, one short epoch on each training path, on a CUDA GPU: do they train, and how fast?

    bash research/gpu_smoke.sh                      # MNIST_MIRROR=<dir of the 4 .gz files>, or --data ROOT
    bash research/gpu_smoke.sh --images 20000 --variants lr_scheduler skeleton

Paths (the benchmark's, mnist_repro.training.benchmark.time_ours): eager (train.compile false), compiled
(train.compile true: torch.compile, inductor), bf16 (eager inside bf16 autocast). For each
variant of the main seed group (params.yaml seeds.variants: every published step but the slow
basic_setup, and under_5k) and each path: a fresh model from train.seed, a warm-up pass (one
full batch and one short one: every graph the compiled path needs), one timed pass over
--images training images, one test pass. Checked: the training loss and the test accuracy are
finite, and the test accuracy beats chance by --min-acc points at least. Printed: steps per
second of the timed pass (steady state) and the warm-up's seconds, per path; one failing path
is reported and the others still run. Exit status 1 if any check failed.

Without a CUDA GPU the GPU parts are skipped, saying why, and each variant trains a few steps
of the eager path on the CPU instead: the script's own plumbing, checked (tests/test_speed.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mnist_repro.training.benchmark import time_ours  # noqa: E402
from mnist_repro.core.config import load_params  # noqa: E402
from mnist_repro.core.data import download_mnist  # noqa: E402
from mnist_repro.training.device_data import load_datasets, steps_per_epoch  # noqa: E402
from mnist_repro.training.launch import describe_device, make_accelerator  # noqa: E402
from mnist_repro.training.speed import compile_problem  # noqa: E402

PATHS = ("eager", "compiled", "bf16")
CPU_IMAGES = 3 * 128 + 64  # without a GPU: three full batches and a short one per variant


def gpu_problem() -> str | None:
    if not torch.cuda.is_available():
        return f"no CUDA GPU here (torch {torch.__version__}: torch.cuda.is_available() is False)"
    return None


def path_problem(path: str, device: torch.device) -> str | None:
    if path == "compiled":
        return compile_problem(device)
    if path == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{describe_device(device)} has no bf16"
    return None


def smoke(variant, cfg, train, test, accelerator, path: str, min_acc: float) -> dict:
    """One path of one variant: its timings and whether it trained."""
    settings = dataclasses.replace(cfg, compile=path == "compiled")
    timed = time_ours(variant, settings, train, test, accelerator, "bf16" if path == "bf16" else "no")
    finite = math.isfinite(timed["train_loss"]) and math.isfinite(timed["test_acc"])
    sane = finite and timed["test_acc"] >= 10 + min_acc  # 10 classes: chance is 10%
    return {**timed, "steps_per_s": timed["steps"] / timed["train_s"], "ok": sane,
            "why": None if sane else ("a non-finite loss or accuracy" if not finite else
                                      f"test accuracy {timed['test_acc']:.1f}% is below {10 + min_acc:.0f}%")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--data", type=Path, help="a root holding MNIST/raw (default: fetched from $MNIST_MIRROR)")
    ap.add_argument("--variants", nargs="+", help="default: params.yaml's seeds.variants")
    ap.add_argument("--images", type=int, default=10240, help="training images of the timed pass (GPU)")
    ap.add_argument("--test-images", type=int, default=2000)
    ap.add_argument("--min-acc", type=float, default=15.0,
                    help="points above chance (10%%) the test accuracy must reach after the short epoch")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    names = args.variants or list(params.seeds.variants)
    accelerator = make_accelerator()
    device = accelerator.device
    print(f"device: {describe_device(device)} ({device.type}); torch {torch.__version__}", flush=True)
    problem = gpu_problem()
    if problem:
        print(f"GPU parts skipped: {problem}. Checking the script's plumbing instead: each variant's eager path, "
              f"{steps_per_epoch(CPU_IMAGES, params.train.batch_size)} steps on the CPU (speed on a CPU is the "
              "benchmark stage's, metrics/benchmark.json).", flush=True)
        paths, images, test_images, min_acc = ("eager",), CPU_IMAGES, 200, -10.0  # a few steps: finite is enough
    else:
        paths, images, test_images, min_acc = PATHS, args.images, args.test_images, args.min_acc
    if args.data is None:
        args.data = Path(tempfile.mkdtemp(prefix="gpu_smoke_"))
        download_mnist(args.data, params.download.mirror, log=lambda msg: None)
    cfg = dataclasses.replace(params.train, train_limit=images, test_limit=test_images)
    train, test = load_datasets(args.data, cfg, device)
    skipped = {p: why for p in paths if (why := path_problem(p, device))}
    for path, why in skipped.items():
        print(f"path {path} skipped: {why}", flush=True)
    failed = []
    print(f"{'variant':<14} {'path':<9} {'steps/s':>8} {'warm-up s':>9} {'train loss':>10} {'test acc':>8}  check")
    for name in names:
        variant = params.variant(name)
        for path in (p for p in paths if p not in skipped):
            try:
                r = smoke(variant, cfg, train, test, accelerator, path, min_acc)
            except Exception as e:  # noqa: BLE001 - one failing path is reported, the others still run
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                failed.append(f"{name} {path}")
                print(f"{name:<14} {path:<9} FAILED: {type(e).__name__}: {first[:200]}", flush=True)
                continue
            if not r["ok"]:
                failed.append(f"{name} {path}")
            print(f"{name:<14} {path:<9} {r['steps_per_s']:>8.1f} {r['warmup_s']:>9.1f} {r['train_loss']:>10.4f} "
                  f"{r['test_acc']:>7.2f}%  {'ok' if r['ok'] else 'FAILED: ' + r['why']}", flush=True)
    print(f"{len(failed)} failed: {', '.join(failed)}" if failed else "every path trained", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
