"""The report's section on the compiled path against eager: is it the same experiment?

The compile_check@<variant>-<seed> stages train params.yaml's compile_check.seeds of each of
compile_check.variants with train.compile's other value (--other-compile); the variant's main runs
of the same seeds are the other path. Compared two ways, both on best and final test accuracy:
the table's machinery (Welch's difference of means, its CIs and TOST against
compile_check.margin, as the published-data-path section) and seed for seed (the same
initial weights and batch order: the mean of the per-seed differences, its t interval, and
the sign test). Reading here (read_compile_check), rendering below (compile_check_section).
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist, stdev

from ..core.config import Params
from .markdown import markdown_table, names, pct, signed
from ..compare.run_files import RUN_KEYS, _runs_and_histories, seed_file
from ..compare.stats import LEVEL, sign_test, t_quantile, welch

KEYS = {"best test": "best_test_acc", "final test": "final_test_acc"}


def path_name(compiled: bool) -> str:
    return f"`train.compile: {str(compiled).lower()}` ({'compiled' if compiled else 'eager'})"


def read_compile_check(params: Params, check_dir: str | Path) -> dict:
    """variant -> [{"metrics", "history"}] per compile_check.seeds, for compile_check.variants;
    a variant with none of its files is absent (not run yet), one with some is an error."""
    cfg, root, out = params.compile_check, Path(check_dir), {}
    for name in cfg.variants:
        paths = [(s, seed_file(root / "runs", name, s), seed_file(root / "history", name, s),
                  {"variant": name, "seed": s, "compile": not params.train.compile}, f"compile_check@{name}-{s}")
                 for s in cfg.seeds]
        runs = _runs_and_histories(paths, f"compile_check@{name}", (*RUN_KEYS, "compile"))
        if runs:
            out[name] = runs
    return out


def expected_power(n: int, sd: float, margin: float) -> tuple[float, float]:
    """(half-width of TOST's 90% CI, probability of "equivalent" when the paths do not differ)
    for n seeds a path with spread sd on both (normal approximation of the difference)."""
    se = sd * (2 / n) ** 0.5
    half = t_quantile(LEVEL, 2 * n - 2) * se  # TOST at 5% a side: the 90% CI, t's 95% quantile
    room = margin - half
    return half, max(0.0, 2 * NormalDist().cdf(room / se) - 1) if se else float(room > 0)


def _ci(low: float | None, high: float | None) -> str:
    return "–" if low is None else f"[{low:+.2f}, {high:+.2f}]"


def paired_ci(differences: list[float]) -> tuple[float | None, float | None]:
    """The t interval (LEVEL) of the mean of per-seed differences; (None, None) below 2 seeds."""
    n = len(differences)
    if n < 2:
        return None, None
    mean, half = sum(differences) / n, t_quantile((1 + LEVEL) / 2, n - 1) * stdev(differences) / n ** 0.5
    return mean - half, mean + half


def compile_check_section(params: Params, runs: dict, checks: dict, how_to_run) -> list[str]:
    """runs: variant -> its main runs (run_files.read_runs); checks: read_compile_check's;
    how_to_run(name): what to run while a variant's main run is missing."""
    cfg = params.compile_check
    if not cfg.variants or not cfg.seeds:
        return ["No compile check configured (`compile_check.variants` or `compile_check.seeds` is empty)."]
    compiled = not params.train.compile  # the check runs' path
    other, default = path_name(compiled), path_name(params.train.compile)
    equiv = 1 - 2 * (1 - LEVEL)
    lines = [f"{names(cfg.variants)} trained with {other}, seeds {', '.join(map(str, cfg.seeds))} "
             f"(`dvc repro compile_check`), against their main runs of the same seeds with {default}, the default. "
             f"Difference: {'compiled − eager' if compiled else 'eager − compiled'}. Across seeds: Welch's CI and "
             f"TOST against ±{cfg.margin:.2f} points (`compile_check.margin`): *equivalent* when the {equiv:.0%} CI "
             f"lies inside the margin; else *different* when the {LEVEL:.0%} CI excludes 0; else *inconclusive*. "
             f"Seed for seed (same initial weights and batch order): the mean per-seed difference, its {LEVEL:.0%} "
             "t interval, and the sign test. *TOST power*: the chance of *equivalent* if the paths do not differ, "
             "at this n and the main runs' spread.", ""]
    rows, not_run = [], []
    for name in cfg.variants:
        main = {r["seed"]: r for r in runs.get(name, [])}
        strangers = [s for s in cfg.seeds if s not in params.seeds_of(name)]
        if strangers:
            not_run.append(f"- `{name}`: seed {strangers[0]} of `compile_check.seeds` is not one of its seeds "
                           f"(`seeds:`), so no main run shares it")
            continue
        if name not in checks or not all(s in main for s in cfg.seeds):
            not_run.append(f"- `{name}`: " + (f"not run yet: `dvc repro compile_check@{name}-{cfg.seeds[0]}` ... "
                                             f"`compile_check@{name}-{cfg.seeds[-1]}`" if name not in checks
                                             else how_to_run(name)))
            continue
        check = {c["metrics"]["seed"]: c["metrics"] for c in checks[name]}
        for label, key in KEYS.items():
            ours = [check[s][key] for s in cfg.seeds]
            base = [main[s][key] for s in cfg.seeds]
            diff = welch(ours, base)
            per_seed = [a - b for a, b in zip(ours, base)]
            sign = sign_test(per_seed)
            half, power = expected_power(len(base), stdev(base), cfg.margin) if len(base) > 1 else (None, None)
            rows.append([name, label, pct(sum(base) / len(base)), pct(sum(ours) / len(ours)),
                         *([signed(diff.diff), _ci(*diff.ci(LEVEL)), _ci(*diff.ci(equiv)),
                            diff.equivalence(cfg.margin)] if diff else ["–", "–", "–", "fewer than 2 seeds"]),
                         _ci(*paired_ci(per_seed)), f"{sign['above']}/{sign['below']}, p {sign['p']:.2f}",
                         "–" if power is None else f"{power:.0%} (±{half:.2f})"])
    if rows:
        lines += [markdown_table(["Variant", "Metric", f"{'Eager' if compiled else 'Compiled'} (default) mean",
                                  f"{'Compiled' if compiled else 'Eager'} mean", "Difference", f"{LEVEL:.0%} CI",
                                  f"{equiv:.0%} CI", "Verdict", f"Per-seed {LEVEL:.0%} CI", "Seeds up/down (sign)",
                                  "TOST power"], rows, numeric={2, 3, 4}), ""]
    if not_run:
        lines += ["Not compared yet:", "", *not_run]
    return lines
