"""Hand launches: `python -m mnist_repro.training.launch --config_file accelerate.yaml stages/train.py ...`
prints neither Accelerate's "values were not passed" warning nor a traceback after a one-line
error, and accelerate.yaml launches what params.yaml's launch section launches in the pipeline."""

from __future__ import annotations

import re
import sys

import pytest
import yaml
from support.processes import run_cmd
from support.projects import DVC, REPO, init_project, sh

CONFIG = REPO / "accelerate.yaml"


def test_the_config_file_says_what_params_launch_says():
    config = yaml.safe_load(CONFIG.read_text())
    launch = yaml.safe_load((REPO / "params.yaml").read_text())["launch"]
    assert config["num_processes"] == launch["num_processes"]
    assert config["num_machines"] == launch["num_machines"]
    assert config["mixed_precision"] == launch["mixed_precision"]
    assert config["dynamo_config"]["dynamo_backend"].lower() == launch["dynamo_backend"].lower()
    assert (config["distributed_type"] != "NO") == launch["multi_gpu"]


@pytest.mark.slow  # the launcher and the stage, each an interpreter importing torch
def test_a_hand_launch_shows_one_error_line_no_warning_no_traceback(cli_env):
    proc = run_cmd([sys.executable, "-m", "mnist_repro.training.launch", "--config_file", CONFIG,
                    REPO / "stages" / "train.py", "lr_schedular"], {**cli_env, "CUDA_VISIBLE_DEVICES": ""})
    both = proc.stdout + proc.stderr
    assert proc.returncode == 1, both
    assert "were not passed to `accelerate launch`" not in both and "Traceback" not in both, both
    assert [line for line in both.splitlines() if line.startswith("error: ")] == [
        "error: variants.lr_schedular: unknown variant; choose one of "
        + ", ".join(yaml.safe_load((REPO / "params.yaml").read_text())["variants"])], both


@pytest.mark.slow  # two launcher interpreters
def test_more_processes_without_multi_gpu_stop_with_one_line_naming_the_flag(cli_env, tmp_path):
    """`accelerate launch --num_processes 2` without --multi_gpu would run one process (and the run
    file would say 1): refused before the stage starts, whatever else the command says."""
    flags = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    for extra, line in ((["--num_processes", "2"],
                         "error: --num_processes 2 without --multi_gpu starts one process; add --multi_gpu "
                         "(in the pipeline: launch.multi_gpu: true in params.yaml)"),
                        (["--cpu", "--num_processes", "3"],
                         "error: --num_processes 3 with --cpu starts one process; drop --cpu and add --multi_gpu "
                         "(on a host without CUDA that is 3 gloo CPU processes)")):
        proc = run_cmd([sys.executable, "-m", "mnist_repro.training.launch", *flags, *extra, REPO / "stages" / "train.py",
                        "lr_scheduler", "--quick", "--metrics", tmp_path / "m.json"],
                       {**cli_env, "CUDA_VISIBLE_DEVICES": ""})
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert [text for text in (proc.stdout + proc.stderr).splitlines() if text.strip()] == [line]
        assert not (tmp_path / "m.json").exists()


def test_docs_show_what_dvc_prints_for_a_misspelt_set_param_key(cli_env, tmp_path):
    """DVC refuses a typo'd `-S` key before any stage runs; docs/pipeline.md quotes its message."""
    block = re.search(r"```\n\$ (dvc exp run [^\n]+)\n(.*?)```", (REPO / "docs" / "pipeline.md").read_text(), re.S)
    command, shown = block[1].split(), block[2].splitlines()
    root = init_project(tmp_path / "project", cli_env)
    proc = sh([*DVC, *command[1:]], root, cli_env, check=False)
    assert proc.returncode != 0 and "Running stage" not in proc.stdout
    assert [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()] == shown
