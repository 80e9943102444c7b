"""Sharing results without retraining: push a finished pipeline to a DVC remote, clone it
elsewhere, pull, and find nothing to rerun (a copy of conftest's finished_pipeline)."""

from __future__ import annotations

import json

import pytest
from support.projects import DVC, git_clone, git_commit, sh

pytestmark = pytest.mark.slow  # a finished pipeline, pushed, cloned and pulled


def test_a_clone_pulls_the_results_and_has_nothing_to_rerun(finished_pipeline, copy_finished_pipeline, tmp_path):
    origin, env = copy_finished_pipeline("origin"), finished_pipeline["env"]
    sh([*DVC, "remote", "add", "-d", "local", tmp_path / "remote"], origin, env)
    sh([*DVC, "push"], origin, env)
    git_commit(origin, env, "results on a local DVC remote")

    clone = tmp_path / "clone"
    git_clone(origin, clone, env)
    sh([*DVC, "pull"], clone, env)
    status = json.loads(sh([*DVC, "status", "--json"], clone, env).stdout)
    assert status == {}, f"after dvc pull, dvc status says stages would rerun: {status}"
    proc = sh([*DVC, "repro"], clone, env, timeout=600)
    assert "Running stage" not in proc.stdout, proc.stdout[-3000:]
