"""research/same_results.py: the check that a refactor changed no training result, before a
`dvc commit` of the training stages."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml
from support.projects import REPO, git_clone, git_commit, load_script

same_results = load_script("research/same_results.py")


def test_weights_digest_reads_values_not_layout(tmp_path):
    conv = torch.nn.Conv2d(3, 4, 1)
    torch.save(conv.state_dict(), tmp_path / "a.pt")
    torch.save(conv.to(memory_format=torch.channels_last).state_dict(), tmp_path / "b.pt")
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] += 1e-7
    torch.save(conv.state_dict(), tmp_path / "c.pt")
    digest = same_results.weights_digest
    assert digest(tmp_path / "a.pt") == digest(tmp_path / "b.pt") != digest(tmp_path / "c.pt")


def test_compare_names_the_first_epoch_that_differs():
    rows = [{"epoch": 1, "test_acc": 90.0}, {"epoch": 2, "test_acc": 95.0}]
    run = {"history": rows, "weights": "w"}
    assert same_results.compare(run, dict(run)) == "identical"
    moved = {"history": [rows[0], {"epoch": 2, "test_acc": 95.01}], "weights": "w"}
    assert same_results.compare(run, moved) == "history differs (from epoch 2)"
    assert same_results.compare(run, {"history": rows, "weights": "v"}) == "weights differ"
    assert same_results.without_timing([{"epoch": 1, "seconds": 3.2}]) == [{"epoch": 1}]


@pytest.mark.slow
def test_a_change_of_recipe_differs_and_no_change_is_identical(tmp_path, cli_env, mnist_root):
    """In a clone: HEAD against itself is identical (exit 0); a commit that changes lr_scheduler's
    lr differs from its parent for that variant (exit 1), on both data paths."""
    clone = tmp_path / "clone"
    git_clone(REPO, clone, cli_env)
    raw = yaml.safe_load((clone / "params.yaml").read_text())
    raw["variants"]["lr_scheduler"]["lr"] = 0.02
    (clone / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git_commit(clone, cli_env, "a recipe change")
    script = [sys.executable, "research/same_results.py", "--variants", "lr_scheduler", "--train-limit", "256",
              "--test-limit", "100", "--data", str(mnist_root)]
    same = subprocess.run([*script[:2], "HEAD", *script[2:]], cwd=clone, env=cli_env, capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    assert "lr_scheduler   identical" in same.stdout
    assert "published_path:lr_scheduler identical" in same.stdout  # its notebooks' data path too
    changed = subprocess.run([*script[:2], "HEAD~1", *script[2:]], cwd=clone, env=cli_env, capture_output=True,
                             text=True)
    assert changed.returncode == 1, changed.stderr
    assert "lr_scheduler   history differs (from epoch 1)" in changed.stdout
    assert "published_path:lr_scheduler history differs (from epoch 1)" in changed.stdout
