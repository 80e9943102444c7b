"""Is it faster to run the matrix k at a time, one core each, than one run at a time on every core?

    python research/matrix_benchmark.py --out research/matrix_benchmark.json     # the lead's run
    python research/matrix_benchmark.py --variants skeleton --seeds 1 2 --train-limit 256 \
        --test-limit 200 --out /tmp/mb.json                                        # a smoke test

The six small variants x 2 seeds, each run shortened with train limits, are split into groups
of k runs (k = --jobs, default every core). For each group, in ONE process so both modes share
the machine's noise, in alternating order (serial first in even groups, pinned first in odd):
  serial: the k runs one after another, each on every core (torch threads = cores), as a plain
          `dvc repro` runs them;
  pinned: the k runs at once, each pinned to its own core(s) by mnist_repro.parallel.slots, as
          `python -m mnist_repro.parallel.matrix run` runs them.
Each run is dvc.yaml's command (`accelerate launch ... stages/train.py`), timed from start to
exit. The JSON holds every run's time and slot, each mode's total, and the ratio serial/pinned
(> 1: the matrix finishes the same runs sooner). A benchmark, not a test: run it on a quiet host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mnist_repro.core.config import load_params  # noqa: E402
from mnist_repro.core.data import download_mnist  # noqa: E402
from mnist_repro.compare.reference import load_reference  # noqa: E402
from mnist_repro.parallel.slots import Slot, allowed_cores, host_slots  # noqa: E402


def small_variants() -> list[str]:
    """The published steps that train the main seed group: every step but the slow basic_setup."""
    published = load_reference(REPO / "reference" / "published.json").runs
    return [v for v in load_params(REPO / "params.yaml").seeds.variants if v in published]


def quick_params(dest: Path, train_limit: int, test_limit: int, epochs: int) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(epochs=epochs, train_limit=train_limit, test_limit=test_limit, cpu_threads=0)
    dest.write_text(yaml.safe_dump(raw, sort_keys=False))   # cpu_threads 0: threads follow the affinity
    return dest


def run_cmd(variant: str, seed: int, params: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "-q", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "stages" / "train.py"), variant,
            "--seed", str(seed), "--params", str(params), "--data", str(data), "--metrics", str(out)]


def start(run: dict, slot: Slot, params: Path, data: Path, work: Path, env: dict):
    out = work / f"{run['mode']}-{run['variant']}-seed{run['seed']}.json"
    proc = subprocess.Popen(run_cmd(run["variant"], run["seed"], params, data, out), env=slot.env(env),
                            preexec_fn=slot.pin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, out, time.perf_counter()


def finish(run: dict, slot: Slot, proc, out: Path, began: float) -> dict:
    _, err = proc.communicate()
    seconds = time.perf_counter() - began
    if proc.returncode:
        raise SystemExit(f"error: {run['variant']} seed {run['seed']} failed:\n{err.decode()[-3000:]}")
    summary = json.loads(out.read_text())
    return {**run, "slot": slot.label, "threads": len(slot.cores), "seconds": round(seconds, 3),
            "train_seconds": summary.get("wall_seconds"),   # the run's own training + evaluation time
            "final_test_acc": summary.get("final_test_acc")}


def serial(group, every: Slot, params, data, work, env) -> tuple[float, list]:
    began, done = time.perf_counter(), []
    for run in group:
        done.append(finish(run, every, *start(run, every, params, data, work, env)))
    return time.perf_counter() - began, done


def pinned(group, slots, params, data, work, env) -> tuple[float, list]:
    began = time.perf_counter()
    started = [(run, slot, *start(run, slot, params, data, work, env)) for run, slot in zip(group, slots)]
    done = [finish(*s) for s in started]
    return time.perf_counter() - began, done


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=small_variants())
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--train-limit", type=int, default=20000)  # images per epoch (of 60,000): training
    parser.add_argument("--test-limit", type=int, default=5000)    # test images (of 10,000)   outweighs startup
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=len(allowed_cores()), help="pinned runs at once (default: cores)")
    parser.add_argument("--data", type=Path, help="a data root holding MNIST/raw (default: fetched into a tmp dir)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    cores = allowed_cores()
    slots = host_slots(1, gpus=(), cores=cores, cores_per_slot=len(cores) // args.jobs)[:args.jobs]
    every = Slot(f"cpu:all{len(cores)}", cores, ())
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")},
           "HF_HOME": tempfile.mkdtemp(), "PYTHONPATH": str(REPO / "src")}
    work = Path(tempfile.mkdtemp(prefix="matrix_benchmark_"))
    data = args.data or work / "data"
    if args.data is None:
        download_mnist(data, log=lambda msg: None)
    params = quick_params(work / "params.yaml", args.train_limit, args.test_limit, args.epochs)
    runs = [{"variant": v, "seed": s} for v in args.variants for s in args.seeds]
    groups = [runs[i:i + args.jobs] for i in range(0, len(runs), args.jobs)]

    records, totals = [], {"serial": 0.0, "pinned": 0.0}
    for g, group in enumerate(groups):
        order = ("serial", "pinned") if g % 2 == 0 else ("pinned", "serial")
        for mode in order:
            tagged = [{**run, "mode": mode, "group": g} for run in group]
            took, done = (serial(tagged, every, params, data, work, env) if mode == "serial"
                          else pinned(tagged, slots, params, data, work, env))
            totals[mode] += took
            records += done
            print(f"group {g} {mode}: {len(group)} runs in {took:.1f} s", flush=True)

    per_run = {m: sorted(r["seconds"] for r in records if r["mode"] == m) for m in totals}
    result = {
        "what": "the same runs: serial (one at a time, every core) vs pinned (k at once, own cores each)",
        "host": {"cores": len(cores), "machine": platform.machine(), "python": platform.python_version()},
        "settings": {"variants": args.variants, "seeds": args.seeds, "train_limit": args.train_limit,
                     "test_limit": args.test_limit, "epochs": args.epochs, "jobs": args.jobs,
                     "cores_per_pinned_run": len(slots[0].cores)},
        "totals_seconds": {m: round(t, 3) for m, t in totals.items()},
        "ratio_serial_over_pinned": round(totals["serial"] / totals["pinned"], 3),
        "median_run_seconds": {m: s[len(s) // 2] for m, s in per_run.items()},   # start to exit
        "median_train_seconds": {m: sorted(r["train_seconds"] for r in records if r["mode"] == m)[len(per_run[m]) // 2]
                                 for m in totals},                             # without startup
        "runs": records,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"serial {totals['serial']:.1f} s, pinned {totals['pinned']:.1f} s: ratio {result['ratio_serial_over_pinned']}"
          f" -> {args.out}")


if __name__ == "__main__":
    main()
