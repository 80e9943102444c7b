"""Record the earlier uses of the test set for under_5k's design, read from git history.

Before the confirmation runs (params.yaml `confirmation`), under_5k's design
was run on the test set twice: the first design at commit cd54f9d and the search's
second choice at 5d235eb, seeds 1-5 each. This script reads those run files with
`git show <commit>:metrics/runs/<variant>/seed_<s>.json` and writes one committed
record (the report stage reads it; mnist_repro.compare.run_files validates it), so the
report's numbers about them come from committed data, not from memory:

    python research/test_set_uses.py --out metrics/search/test_set_uses.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mnist_repro.core.files import write_json  # noqa: E402

VARIANT = "under_5k"
SEEDS = (1, 2, 3, 4, 5)
USES = (  # (what, commit): in the order they happened
    ("first design", "cd54f9d"),
    ("second design (the search's new choice)", "5d235eb"),
)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def use_record(what: str, commit: str) -> dict:
    full = git("rev-parse", f"{commit}^{{commit}}").strip()
    runs = [json.loads(git("show", f"{full}:metrics/runs/{VARIANT}/seed_{s}.json")) for s in SEEDS]
    model = yaml.safe_load(git("show", f"{full}:params.yaml"))["variants"][VARIANT]["model"]  # as that commit had it
    return {"use": what, "commit": full, "date": git("show", "-s", "--format=%cI", full).strip(),
            "variant": VARIANT, "model": model, "params": runs[0]["params"],
            "runs": [{"seed": r["seed"], "best_test_acc": r["best_test_acc"], "best_test_epoch": r["best_test_epoch"],
                      "final_test_acc": r["final_test_acc"], "test_images": r["test_images"]} for r in runs]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="metrics/search/test_set_uses.json")
    args = ap.parse_args(argv)
    write_json(args.out, {"about": "Earlier uses of the test set for under_5k's design, read from git history by "
                                   "research/test_set_uses.py (git show <commit>:metrics/runs/under_5k/seed_<s>.json)",
                          "uses": [use_record(what, commit) for what, commit in USES]})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
