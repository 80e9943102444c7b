"""Does a change leave every training result as it was? Train every variant briefly at two
revisions, on this machine with the same thread count, and compare the per-epoch histories
(all but the epochs' seconds) and the trained weights' digests; and the published_path.variants
on the notebooks' data path (stages/published_path.py), whose histories are compared.

    python research/same_results.py BASE [--head HEAD] [--out same_results.json]

Each revision is checked out with `git worktree add` into a temporary folder and trained by its
own code (`stages/train.py` of that revision, its own `params.yaml`, PYTHONPATH at its `src/`),
each variant for --epochs on the first --train-limit / --test-limit images, one process, the
thread count fixed by --threads (results depend on it: docs/reproducibility.md). Exit status 0
when every variant's history and weights are byte-identical at the two revisions, 1 otherwise.

Where every variant is identical, a refactor changed no result, and `dvc commit` of the training
stages records them at the new code (DVC's documented way after a change that does not affect
outputs); cite this script's output in that commit. Where any differs, the stages rerun.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TIMING = ("seconds",)


def git(*args, cwd=REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def weights_digest(path: Path) -> str:
    """sha256 over the state_dict's names, dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in torch.load(path, map_location="cpu", weights_only=True).items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())  # C order, whatever the memory format
    return digest.hexdigest()


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


def train_at(tree: Path, variant: str, data: Path, out: Path, args) -> dict:
    """One short run of `variant` by the code and params of the worktree `tree`."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(args.threads),
           "CUDA_VISIBLE_DEVICES": ""}
    params = yaml.safe_load((tree / "params.yaml").read_text())
    params["train"]["cpu_threads"] = args.threads  # the same thread count at both revisions
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "stages/train.py", variant, "--params", str(out / "params.yaml"), "--data", str(data),
           "--epochs", str(args.epochs), "--train-limit", str(args.train_limit),
           "--test-limit", str(args.test_limit), "--seed", str(args.seed),
           "--history", str(out / "history.json"), "--model", str(out / "model.pt")]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{variant} at {tree.name}: training failed ({proc.stderr.strip().splitlines()[-1:]})")
    return {"history": without_timing(json.loads((out / "history.json").read_text())),
            "weights": weights_digest(out / "model.pt")}


def published_at(tree: Path, variant: str, data: Path, out: Path, args) -> dict:
    """One short run of `variant` on the notebooks' data path (stages/published_path.py) of `tree`;
    it saves no weights, so its history (with every epoch's losses and accuracies) is the result."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": str(args.threads),
           "CUDA_VISIBLE_DEVICES": ""}
    params = yaml.safe_load((tree / "params.yaml").read_text())
    params["train"].update(cpu_threads=args.threads, epochs=args.epochs, train_limit=args.train_limit,
                           test_limit=args.test_limit)
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, "stages/published_path.py", variant, "--params", str(out / "params.yaml"),
           "--data", str(data), "--seed", str(args.seed), "--metrics", str(out / "run.json"),
           "--history", str(out / "history.json")]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"published path {variant} at {tree.name}: failed ({proc.stderr.strip().splitlines()[-1:]})")
    return {"history": without_timing(json.loads((out / "history.json").read_text())), "weights": None}


def compare(base: dict, head: dict) -> str:
    if base == head:
        return "identical"
    if base["history"] != head["history"]:
        first = next((b["epoch"] for b, h in zip(base["history"], head["history"]) if b != h), None)
        return f"history differs (from epoch {first})"
    return "weights differ"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", help="the revision before the change (a commit, tag or branch)")
    ap.add_argument("--head", default="HEAD", help="the revision after it (default HEAD)")
    ap.add_argument("--variants", nargs="*", help="default: every variant in both revisions' params.yaml")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=1024, help="first N training images")
    ap.add_argument("--test-limit", type=int, default=500, help="first N test images")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same at both revisions")
    ap.add_argument("--data", default="data", help="root holding MNIST/raw (dvc repro download fills data/)")
    ap.add_argument("--out", help="write the comparison as JSON here")
    args = ap.parse_args(argv)
    data = Path(args.data).resolve()
    if not (data / "MNIST" / "raw").is_dir():
        raise SystemExit(f"{data}/MNIST/raw: not found; run `dvc repro download` first or pass --data")
    revisions = {"base": git("rev-parse", args.base), "head": git("rev-parse", args.head)}
    results = {}
    with tempfile.TemporaryDirectory(prefix="same_results-") as tmp:
        trees = {}
        try:
            for side, rev in revisions.items():
                trees[side] = Path(tmp) / side
                git("worktree", "add", "--detach", str(trees[side]), rev)
            names = [set(yaml.safe_load((trees[s] / "params.yaml").read_text())["variants"]) for s in trees]
            variants = args.variants or [v for v in yaml.safe_load((trees["head"] / "params.yaml").read_text())
                                         ["variants"] if all(v in n for n in names)]
            for variant in variants:
                runs = {side: train_at(tree, variant, data, Path(tmp) / "runs" / side / variant, args)
                        for side, tree in trees.items()}
                results[variant] = {"verdict": compare(runs["base"], runs["head"]),
                                    "weights": {side: run["weights"] for side, run in runs.items()}}
                print(f"{variant:14} {results[variant]['verdict']}")
            published = yaml.safe_load((trees["head"] / "params.yaml").read_text()).get("published_path", {})
            for variant in [v for v in published.get("variants", []) if v in variants]:
                runs = {side: published_at(tree, variant, data, Path(tmp) / "published" / side / variant, args)
                        for side, tree in trees.items()}
                results[f"published_path:{variant}"] = {"verdict": compare(runs["base"], runs["head"])}
                print(f"{'published_path:' + variant:14} {results[f'published_path:{variant}']['verdict']}")
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    same = all(r["verdict"] == "identical" for r in results.values())
    record = {"base": revisions["base"], "head": revisions["head"], "identical": same, "variants": results,
              "settings": {k: getattr(args, k) for k in ("epochs", "train_limit", "test_limit", "seed", "threads")},
              "torch": torch.__version__}
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print("every variant identical" if same else "results differ: the training stages must rerun")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
