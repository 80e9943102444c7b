"""How long pending training runs take, from the wall times of the committed runs.

Every run file under metrics/ (a JSON object with ``wall_seconds``) records what it trained
(variant, data path, precision, epochs, training images) and where (``device_name``: a GPU's
name, or the CPU model and its cores). A pending stage's estimate is the median wall time of
the committed runs of its variant, data path and precision, scaled to the epochs and training
images params.yaml now asks for. Runs on the same device_name are preferred, then runs on
the same CPU model or GPU, then any; the estimate names the device its runs were measured on,
so a guess from another machine reads as one.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from ..core.config import Params

RUN_KEYS = {"variant", "data_path", "mixed_precision", "epochs", "train_images", "device_name", "wall_seconds"}


@dataclass(frozen=True)
class Recipe:
    """What one training stage trains, in its run file's terms."""
    variant: str
    data_path: str          # "ours" or "published" (mnist_repro.training.summary.DATA_PATHS)
    mixed_precision: str


@dataclass(frozen=True)
class Estimate:
    seconds: float
    runs: int               # committed runs it is the median of
    device: str             # the device_name they ran on (the most common one)


def stage_recipes(params: Params) -> dict[str, Recipe]:
    """{stage name: recipe} of every training stage dvc.yaml makes from params.yaml (its
    foreach/matrix groups: train@, seed@, seed_slow@, registered@, confirm@, precision@, published_path@,
    compile_check@, data_path_ours@, data_path_published@)."""
    ours = params.launch.mixed_precision
    found = {params.stage_of(v, s): Recipe(v, "ours", ours) for v in params.variants for s in params.seeds_of(v)}
    found.update({f"confirm@{s}": Recipe(params.confirmation.variant, "ours", ours)
                  for s in params.confirmation.seeds})
    found.update({f"precision@{s}": Recipe(params.precision.variant, "ours", params.precision.mixed_precision)
                  for s in params.precision.seeds})
    found.update({f"published_path@{v}-{s}": Recipe(v, "published", "no")
                  for v in params.published_path.variants for s in params.published_path.seeds})
    # train.compile's other value: timed as the main runs (the committed runs say which they used)
    found.update({f"compile_check@{v}-{s}": Recipe(v, "ours", ours)
                  for v in params.compile_check.variants for s in params.compile_check.seeds})
    for stage, data_path, precision in (("data_path_ours", "ours", ours), ("data_path_published", "published", "no")):
        found.update({f"{stage}@{v}-{s}": Recipe(v, data_path, precision)
                      for v in params.data_path_test.variants for s in params.data_path_test.seeds})
    return found


def committed_runs(root: Path) -> list[dict]:
    """Every run file under root/metrics (a JSON object with RUN_KEYS), in path order."""
    runs = []
    for path in sorted((Path(root) / "metrics").rglob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and RUN_KEYS <= data.keys() and data["wall_seconds"]:
            runs.append(data)
    return runs


def model_of(device_name: str) -> str:
    """"AMD EPYC (1 cores)" -> "AMD EPYC": the CPU model or GPU, whatever its share of cores."""
    return device_name.rsplit(" (", 1)[0]


class Estimator:
    """Estimates for the recipes of one params.yaml on one kind of device (its device_name)."""

    def __init__(self, runs: list[dict], params: Params, device_name: str):
        self.runs, self.params, self.device_name = runs, params, device_name

    def __call__(self, recipe: Recipe) -> Estimate | None:
        same = [r for r in self.runs if (r["variant"], r["data_path"], r["mixed_precision"]) ==
                (recipe.variant, recipe.data_path, recipe.mixed_precision)]
        for pick in (lambda r: r["device_name"] == self.device_name,
                     lambda r: model_of(r["device_name"]) == model_of(self.device_name), lambda r: True):
            chosen = [r for r in same if pick(r)]
            if chosen:
                break
        else:
            return None
        train = self.params.train
        scaled = [r["wall_seconds"] * (train.epochs / r["epochs"]) *
                  ((train.train_limit or r["train_images"]) / r["train_images"]) for r in chosen]
        devices = [r["device_name"] for r in chosen]
        return Estimate(statistics.median(scaled), len(chosen), max(set(devices), key=devices.count))


def duration(seconds: float) -> str:
    """A time a person reads at a glance: 40 s, 12 min, 3.4 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def makespan(order: list[str], waits: dict[str, set], seconds: dict[str, float], slots: int,
             alone=(), busy: list[float] = ()) -> float:
    """Seconds until every stage of `order` is done when each starts, in order, as soon as the
    stages it waits for are done and a slot is free (a stage in `alone` once nothing else runs,
    with every slot), as mnist_repro.parallel.matrix starts them; `busy`: the time left of runs already
    in slots. A projection of the times given, not a measurement."""
    free = [0.0] * max(0, slots - len(busy)) + sorted(busy)
    free.sort()
    done: dict[str, float] = {}
    for stage in order:
        ready = max([done[w] for w in waits.get(stage, ()) if w in done], default=0.0)
        if stage in alone:
            start = max(ready, max(free))
            done[stage] = start + seconds.get(stage, 0.0)
            free = [done[stage]] * len(free)
        else:
            start = max(ready, free[0])
            done[stage] = start + seconds.get(stage, 0.0)
            free[0] = done[stage]
            free.sort()
    return max([*done.values(), *busy], default=0.0)
