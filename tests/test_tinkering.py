"""Trying changes without losing results, as the README promises: its `dvc exp run --temp`
command is an experiment whose table is its own and leaves the workspace as it was, and a bad
`-S` value stops in check_params before DVC touches any stage's outputs. Each test works on its own copy of conftest's finished_pipeline."""

from __future__ import annotations

import hashlib
import json
import re
import shlex

import pytest
import yaml
from conftest import DVC, experiments, sh, tree_digests

from mnist_repro.config import load_params

pytestmark = pytest.mark.slow  # each test runs DVC on a copy of conftest's finished_pipeline

TRY_COMMAND = "dvc exp run --temp --allow-missing -S"
# A typo'd key and an out-of-range value, each with what its error must name.
BAD_OVERRIDES = (("+train.epoch=3", re.compile(r"\btrain\.epoch\b(?!s)")),
                 ("train.epochs=0", re.compile(r"\btrain\.epochs\b.*\b0\b")))
RESULTS = ("metrics/", "models/")  # every metrics/runs, metrics/history file and model among them


def readme_command(root, prefix: str) -> list[str]:
    """The README's line starting with prefix, as argv (a trailing # comment dropped)."""
    lines = [line.strip() for line in (root / "README.md").read_text().splitlines()
             if line.strip().startswith(prefix)]
    if len(lines) != 1:
        pytest.fail(f"README.md should hold exactly one line starting `{prefix}` (the command "
                    f"this test runs literally); found {len(lines)}")
    return shlex.split(lines[0], comments=True)


def set_values(argv: list[str]) -> dict:
    """{dotted key: value} of the command's `-S key=value` options, values read as YAML."""
    pairs = [argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a in ("-S", "--set-param")]
    return {key: yaml.safe_load(value) for key, value in pairs}


def results(root) -> dict:
    found = {rel: digest for rel, digest in tree_digests(root).items() if rel.startswith(RESULTS)}
    assert any(rel.startswith("metrics/runs/") for rel in found) and any(rel.endswith(".pt") for rel in found)
    return found


def test_readme_try_a_change_is_an_experiment_with_its_own_table(finished_pipeline, copy_finished_pipeline):
    """README's try-a-change reruns the runs its -S touches and the table after them, so the
    experiment's table row is made from the experiment's own runs; --temp leaves the workspace."""
    work, env = copy_finished_pipeline(), finished_pipeline["env"]
    argv = readme_command(work, TRY_COMMAND)
    status = sh([*DVC, "status"], work, env).stdout
    before, known = tree_digests(work), set(experiments(work, env))

    sh(argv, work, env, timeout=900)

    new = {name: rev for name, rev in experiments(work, env).items() if name not in known}
    assert len(new) == 1, f"expected one new experiment in dvc exp show, got {sorted(new)}"
    (name, rev), = new.items()
    assert not rev.get("error"), rev["error"]
    exp_params = rev["data"]["params"]["params.yaml"]["data"]
    for dotted, value in set_values(argv).items():
        node = exp_params
        for key in dotted.split("."):
            node = node[key]
        assert node == value, f"experiment {name}: {dotted} is {node!r}, the command set {value!r}"
    # Every run of the changed variant was retrained with the set values: the experiment's dvc.lock
    # records the run's stage with them and with the files the experiment holds, and the run's
    # history (per-epoch values as computed, e.g. the schedule's lr) differs from the workspace's.
    # Its summary may not: at this size (1 epoch, 2 steps) its rounded numbers can coincide.
    # The experiment's table row is the mean of those runs.
    variant = next(iter(set_values(argv))).split(".")[1]
    text = lambda path: sh(["git", "show", f"{rev['rev']}:{path}"], work, env).stdout  # noqa: E731
    show = lambda path: json.loads(text(path))  # noqa: E731
    lock = yaml.safe_load(text("dvc.lock"))["stages"]
    params = load_params(work / "params.yaml")
    seeds = sorted(int(p.stem.split("_")[1]) for p in (work / "metrics" / "runs" / variant).glob("seed_*.json"))
    assert seeds == sorted(params.seeds_of(variant)), seeds
    for seed in seeds:
        entry = lock[params.stage_of(variant, seed)]
        recorded = entry["params"]["params.yaml"][f"variants.{variant}"]
        assert all(recorded[dotted.split(".", 2)[2]] == value for dotted, value in set_values(argv).items()), \
            f"seed {seed} of {variant}: the experiment's dvc.lock records {recorded}"
        outs = {out["path"]: out["md5"] for out in entry["outs"]}
        for kind in ("runs", "history"):
            rel = f"metrics/{kind}/{variant}/seed_{seed}.json"
            assert hashlib.md5(text(rel).encode()).hexdigest() == outs[rel], f"{rel} is not the run dvc.lock records"
        history = f"metrics/history/{variant}/seed_{seed}.json"
        assert show(history) != json.loads((work / history).read_text()), \
            f"seed {seed} of {variant} was not retrained in the experiment"
    runs = [show(f"metrics/runs/{variant}/seed_{s}.json") for s in seeds]
    row_path = next((work / "metrics" / "table").glob(f"*_{variant}.json")).relative_to(work)
    row = show(row_path.as_posix())
    assert row["n"] == len(runs)
    assert row["best"]["mean"] == round(sum(r["best_test_acc"] for r in runs) / len(runs), 2), row

    after = tree_digests(work)
    assert after == before, sorted(r for r in before.keys() | after.keys() if before.get(r) != after.get(r))
    assert sh([*DVC, "status"], work, env).stdout == status


def test_bad_params_stop_in_check_params_and_lose_nothing(finished_pipeline, copy_finished_pipeline):
    work, env = copy_finished_pipeline(), finished_pipeline["env"]
    kept, params = results(work), (work / "params.yaml").read_bytes()
    for temp in ([], ["--temp"]):
        for override, names_key in BAD_OVERRIDES:
            proc = sh([*DVC, "exp", "run", *temp, "-S", override], work, env, timeout=600, check=False)
            said = proc.stdout + proc.stderr
            what = f"dvc exp run {' '.join(temp)} -S {override}"
            assert proc.returncode != 0, f"{what} succeeded:\n{said[-3000:]}"
            assert names_key.search(said), f"{what}: the error does not name the key:\n{said[-3000:]}"
            ran = re.findall(r"Running stage '([^']+)'", proc.stdout)
            assert ran == ["check_params"], f"{what} ran {ran}, not only check_params"
            assert results(work) == kept, f"{what} deleted or changed results"
            if temp:
                assert (work / "params.yaml").read_bytes() == params, f"{what} changed params.yaml"
            else:
                sh(["git", "checkout", "--", "params.yaml"], work, env)  # the next run starts clean
