"""Adding a variant touches params.yaml alone (README "Add a variant"): an entry with its model,
its target and only its differences from `defaults:` becomes its own training stage, trains,
and gets its own row in the table, with no edit to dvc.yaml, the tests or the code (a
width-named model needs no builder). Added to a project whose pipeline has run (a copy of
conftest's finished_pipeline), as a user adds one: only the new stage and check_params run."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from support.projects import DVC, project_env, sh

pytestmark = pytest.mark.slow  # runs DVC and trains one stage, in a copy of the finished pipeline

NEW = "wider_c"
ENTRY = {"model": "c8-8-10-10-12", "lr": 0.02, "schedule": "one_cycle", "augment": True,
         "target": "A test's variant: a width-named model under the published OneCycle recipe"}


def test_a_variant_added_to_params_yaml_alone_trains_and_gets_its_row(copy_finished_pipeline, cpu_env, run_stage):
    work = copy_finished_pipeline()
    env = project_env(work, cpu_env)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["variants"][NEW] = ENTRY
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert sh(["git", "status", "--porcelain"], work, env).stdout == " M params.yaml\n"

    stages = sh([*DVC, "stage", "list", "--name-only"], work, env).stdout.split()
    assert f"train@{NEW}" in stages, stages

    proc = sh([*DVC, "repro", f"train@{NEW}"], work, env, timeout=900)
    assert re.findall(r"^Running stage '([^']+)':", proc.stdout, re.M) == ["check_params", f"train@{NEW}"]

    run = json.loads((work / "metrics" / "runs" / NEW / "seed_1.json").read_text())
    assert run["variant"] == NEW and run["epochs"] == params["train"]["epochs"]
    assert run["train_images"] == params["train"]["train_limit"]
    from mnist_repro.core.models import build_model, count_parameters
    assert run["params"] == count_parameters(build_model(ENTRY["model"], 0.0))
    assert f"train@{NEW}" not in sh([*DVC, "status", f"train@{NEW}"], work, env).stdout  # recorded in dvc.lock

    run_stage("compare", ["--params", work / "params.yaml", "--reference", work / "reference/published.json",
                          "--runs", work / "metrics/runs", "--published-path", work / "metrics/published_path",
                          "--out", work / "metrics/table"])
    row_file, = (work / "metrics" / "table").glob(f"*_{NEW}.json")
    assert row_file.name.startswith(f"{len(params['variants'])}_"), row_file.name  # its position in params.yaml
    row = json.loads(row_file.read_text())
    assert row["n"] == 1 and row["params"] == run["params"]
    assert row["best"]["mean"] == run["best_test_acc"] and row["best"]["pub"] is None  # no published run
