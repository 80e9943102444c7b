"""Mixed precision against fp32: one variant, the same seeds, trained both ways.

The precision@<seed> stages train ``precision.variant`` under
``precision.mixed_precision``; the fp32 runs of the same seeds are the variant's
train@/seed@ runs. Accuracy is compared run for run; speed is the benchmark's
job (its bf16 row), since these runs shared the machine with other jobs.
Reading here; the report's section renders it (report/machine.py).
"""

from __future__ import annotations

from pathlib import Path

from ..core.config import Params
from ..compare.run_files import RUN_KEYS, checked, read_input, seed_file


def read_precision_runs(params: Params, precision_dir: str | Path, runs_dir: str | Path) -> list[dict]:
    """Per configured seed: {"seed", "fp32": run summary, "mixed": run summary}."""
    cfg, pairs = params.precision, []
    for seed in cfg.seeds:
        mixed_path = Path(precision_dir) / f"seed_{seed}.json"
        how = f"run `dvc repro precision@{seed}`"
        mixed = checked(read_input(mixed_path, how), mixed_path, RUN_KEYS,
                        {"variant": cfg.variant, "seed": seed, "mixed_precision": cfg.mixed_precision}, how)
        fp32_path = seed_file(runs_dir, cfg.variant, seed)
        how = (f"run `dvc repro {params.stage_of(cfg.variant, seed)}` (seed {seed} must be one of "
               f"{cfg.variant}'s seeds in params.yaml)")
        fp32 = checked(read_input(fp32_path, how), fp32_path, RUN_KEYS,
                       {"variant": cfg.variant, "seed": seed, "mixed_precision": "no"}, how)
        pairs.append({"seed": seed, "fp32": fp32, "mixed": mixed})
    return pairs
