"""Hand launches: `python -m mnist_repro.launch --config_file accelerate.yaml stages/train.py ...`
prints neither Accelerate's "values were not passed" warning nor a traceback after a one-line
error, and accelerate.yaml launches what params.yaml's launch section launches in the pipeline."""

from __future__ import annotations

import sys

import yaml
from conftest import REPO, run_cmd

CONFIG = REPO / "accelerate.yaml"


def test_the_config_file_says_what_params_launch_says():
    config = yaml.safe_load(CONFIG.read_text())
    launch = yaml.safe_load((REPO / "params.yaml").read_text())["launch"]
    assert config["num_processes"] == launch["num_processes"]
    assert config["num_machines"] == launch["num_machines"]
    assert config["mixed_precision"] == launch["mixed_precision"]
    assert config["dynamo_config"]["dynamo_backend"].lower() == launch["dynamo_backend"].lower()
    assert (config["distributed_type"] != "NO") == launch["multi_gpu"]


def test_a_hand_launch_shows_one_error_line_no_warning_no_traceback(cli_env):
    proc = run_cmd([sys.executable, "-m", "mnist_repro.launch", "--config_file", CONFIG,
                    REPO / "stages" / "train.py", "lr_schedular"], {**cli_env, "CUDA_VISIBLE_DEVICES": ""})
    both = proc.stdout + proc.stderr
    assert proc.returncode == 1, both
    assert "were not passed to `accelerate launch`" not in both and "Traceback" not in both, both
    assert [line for line in both.splitlines() if line.startswith("error: ")] == [
        "error: variants.lr_schedular: unknown variant; choose one of "
        + ", ".join(yaml.safe_load((REPO / "params.yaml").read_text())["variants"])], both
