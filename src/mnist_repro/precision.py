"""Mixed precision against fp32: one variant, the same seeds, trained both ways.

The precision@<seed> stages train ``precision.variant`` under
``precision.mixed_precision``; the fp32 runs of the same seeds are the variant's
train@/seed@ runs. Accuracy is compared run for run; speed is the benchmark's
job (its bf16 row), since these runs shared the machine with other jobs.
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean

from .config import Params
from .run_files import RUN_KEYS, checked, read_input, seed_file, seed_stage


def read_precision_runs(params: Params, precision_dir: str | Path, runs_dir: str | Path) -> list[dict]:
    """Per configured seed: {"seed", "fp32": run summary, "mixed": run summary}."""
    cfg, pairs = params.precision, []
    for seed in cfg.seeds:
        mixed_path = Path(precision_dir) / f"seed_{seed}.json"
        how = f"run `dvc repro precision@{seed}`"
        mixed = checked(read_input(mixed_path, how), mixed_path, RUN_KEYS,
                         {"variant": cfg.variant, "seed": seed, "mixed_precision": cfg.mixed_precision}, how)
        fp32_path = seed_file(runs_dir, cfg.variant, seed)
        how = (f"run `dvc repro {seed_stage(params, cfg.variant, seed)}` (seed {seed} must be train.seed or in "
               f"seeds.extra, with {cfg.variant} in seeds.variants)")
        fp32 = checked(read_input(fp32_path, how), fp32_path, RUN_KEYS,
                        {"variant": cfg.variant, "seed": seed, "mixed_precision": "no"}, how)
        pairs.append({"seed": seed, "fp32": fp32, "mixed": mixed})
    return pairs


def precision_section(params: Params, pairs: list[dict]) -> list[str]:
    cfg = params.precision
    if not pairs:
        return ["No mixed-precision runs configured (`precision.seeds` is empty)."]
    rows = [f"| {p['seed']} | {p['fp32']['best_test_acc']:.2f} | {p['mixed']['best_test_acc']:.2f} | "
            f"{p['fp32']['final_test_acc']:.2f} | {p['mixed']['final_test_acc']:.2f} |" for p in pairs]
    diff_best = mean(p["mixed"]["best_test_acc"] - p["fp32"]["best_test_acc"] for p in pairs)
    diff_final = mean(p["mixed"]["final_test_acc"] - p["fp32"]["final_test_acc"] for p in pairs)
    devices = sorted({p["mixed"]["device_name"] for p in pairs})
    return [
        f"`{cfg.variant}` trained with `launch.mixed_precision: {cfg.mixed_precision}` (Accelerate's autocast) "
        f"and in fp32, same seeds, on {', '.join(devices)} (`dvc repro precision@<seed>`):",
        "",
        f"| seed | best test fp32 | best test {cfg.mixed_precision} | final test fp32 | final test "
        f"{cfg.mixed_precision} |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"Mean difference {cfg.mixed_precision} − fp32 over {len(pairs)} seeds: best test {diff_best:+.2f}, "
        f"final test {diff_final:+.2f} points.",
    ]
