"""The equivalence rule's words and table cells, shared by the sections that compare our data path with the
notebooks' by it: the published path over the table's seeds (paths.py) and the confirmatory data-path test
(data_path_test.py). The rule itself is stats.Difference.equivalence."""

from __future__ import annotations

from ..compare.stats import LEVEL, Difference
from .markdown import signed

EQUIV = 1 - 2 * (1 - LEVEL)  # TOST at 5% a side is the 90% CI lying inside ±margin
KEYS = {"best test": "best_test_acc", "final test": "final_test_acc"}  # label -> run-file key
DIFFERENCE_HEADERS = ["Difference", f"{LEVEL:.0%} CI", f"{EQUIV:.0%} CI", "df", "Verdict"]


def ci_cell(diff: Difference, level: float) -> str:
    low, high = diff.ci(level)
    return f"[{low:+.2f}, {high:+.2f}]"


def rule_text(margin: float, key: str) -> str:
    """The rule in one sentence, its margin named by its params.yaml key."""
    return (f"Rule (TOST, two one-sided tests at 5%), margin ±{margin:.2f} points from `params.yaml` (`{key}`): "
            f"*equivalent* when the {EQUIV:.0%} CI lies inside ±{margin:.2f}; else *different* when the "
            f"{LEVEL:.0%} CI excludes 0; else *inconclusive*.")


def difference_cells(diff: Difference | None, verdict: str | None) -> list:
    """The DIFFERENCE_HEADERS cells of a difference, ours − published path: its value, both CIs, its df and
    `verdict` (diff.equivalence(margin), or what stands in for one); dashes below 2 seeds a side."""
    if diff is None:
        return ["–", "–", "–", "–", "fewer than 2 seeds"]
    return [signed(diff.diff), ci_cell(diff, LEVEL), ci_cell(diff, EQUIV), f"{diff.df:.1f}", verdict]
