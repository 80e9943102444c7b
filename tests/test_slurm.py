"""The Slurm scripts, run by bash without Slurm.

slurm/train.sbatch (one stage over 2 nodes x 4 GPUs) with fake SLURM_* variables and stubs for
scontrol, srun (which runs its command once per node, as Slurm would), accelerate and dvc that
record how they were called: the per-node launch commands are checked, not run.

slurm/matrix.sh, matrix.sbatch and gather.sbatch (the run matrix as a job array) for real on the
sliced pipeline of test_matrix.py, with only sbatch stubbed: the array's two tasks run their
script with SLURM_ARRAY_TASK_ID set, at the same time, then the gather step."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from support.processes import launch_flags
from support.projects import DVC, sh, tree_digests
from test_matrix import TRAINING, assert_clean_and_locked, make_matrix_project, matrix_env

pytestmark = pytest.mark.slow  # trains in subprocesses or runs stages/DVC

SCRIPT = "slurm/train.sbatch"
NODES, GPUS = 2, 4
HOSTS = ("gpu-a17", "gpu-b03")
PORT = 29500

# Each stub appends one line, `<name> <its arguments>`, to $STUB_LOG.
STUBS = {
    "scontrol": """[ "$1 $2" = "show hostnames" ] || exit 2
echo "scontrol $*" >> "$STUB_LOG"
echo "$3" | tr , '\\n'
""",
    # srun's options, then the command: run once per node with that node's Slurm variables.
    "srun": """echo "srun $*" >> "$STUB_LOG"
while [ "${1#--}" != "$1" ]; do shift; done
for node in $(seq 0 $((SLURM_NNODES - 1))); do
  SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" || exit $?
done
""",
    "accelerate": 'echo "accelerate MACHINE_RANK=$MACHINE_RANK $*" >> "$STUB_LOG"\n',
    "dvc": 'echo "dvc $*" >> "$STUB_LOG"\n',
}


def run_script(tmp_path, repo_root, params_overrides: dict, variant="lr_scheduler"):
    """Run the batch script in a project dir holding params.yaml; returns (process, stub log lines)."""
    bin_dir, project, log = tmp_path / "bin", tmp_path / "project", tmp_path / "stubs.log"
    bin_dir.mkdir()
    project.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["launch"].update(params_overrides)
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "GPUS_PER_NODE"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", STUB_LOG=str(log), SLURM_NNODES=str(NODES),
               SLURM_JOB_NODELIST=",".join(HOSTS), SLURM_GPUS_ON_NODE=str(GPUS), SLURM_SUBMIT_DIR=str(project),
               SLURM_JOB_ID="4242")
    proc = subprocess.run(["bash", str(repo_root / SCRIPT), variant], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    return proc, (log.read_text().splitlines() if log.exists() else []), project


JOB_SHAPE = {"multi_gpu": True, "num_processes": NODES * GPUS, "num_machines": NODES, "main_process_port": PORT}


def flags(args: list[str]) -> dict:
    """`--name value` / bare `--name` pairs -> {name: value or True}."""
    parsed, i = {}, 0
    while i < len(args):
        name = args[i].removeprefix("--")
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
            parsed[name], i = args[i + 1], i + 2
        else:
            parsed[name], i = True, i + 1
    return parsed


@pytest.fixture(scope="module")
def job(tmp_path_factory, repo_root):
    proc, log, project = run_script(tmp_path_factory.mktemp("slurm"), repo_root, JOB_SHAPE)
    assert proc.returncode == 0, proc.stderr
    launches = []
    for line in log:
        if line.startswith("accelerate "):
            env, launch, *args = shlex.split(line)[1:]
            assert launch == "launch"
            cut = args.index("stages/train.py")
            launches.append(dict(machine_rank_env=env.removeprefix("MACHINE_RANK="), flags=flags(args[:cut]),
                                 stage=args[cut:]))
    return dict(proc=proc, log=log, launches=launches, project=project)


def test_one_launcher_per_node_with_its_machine_rank(job):
    ranks = [launch["flags"]["machine_rank"] for launch in job["launches"]]
    assert sorted(ranks) == ["0", "1"]
    # MACHINE_RANK, as dvc.yaml's command reads it, is the rank passed on
    assert [launch["machine_rank_env"] for launch in job["launches"]] == ranks


def test_every_node_meets_at_the_first_host_on_the_fixed_port(job):
    for launch in job["launches"]:
        f = launch["flags"]
        assert f["main_process_ip"] == HOSTS[0] and f["main_process_port"] == str(PORT)
        assert f["num_processes"] == str(NODES * GPUS) and f["num_machines"] == str(NODES)
        assert f["multi_gpu"] is True
    assert f"scontrol show hostnames {','.join(HOSTS)}" in job["log"]


def test_launch_flags_are_dvc_yamls_with_the_head_node_slurm_gave(job):
    """The flags `${launch}` unpacks from params.yaml, but for the address (and the rank)."""
    expected = flags(launch_flags(job["project"] / "params.yaml"))
    expected["main_process_ip"] = HOSTS[0]
    for launch in job["launches"]:
        assert {k: v for k, v in launch["flags"].items() if k != "machine_rank"} == expected


def test_stage_arguments_are_dvc_yamls_train_command(job, repo_root):
    """The same outputs as train@lr_scheduler, so `dvc commit` records what the nodes wrote."""
    cmd = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]["train"]["cmd"]
    cmd = cmd.replace("${item.variant}", "lr_scheduler").replace("${train.seed}", "1")
    stage = cmd.split()[cmd.split().index("stages/train.py"):]
    for launch in job["launches"]:
        assert launch["stage"] == stage


def test_inputs_first_then_one_task_per_node_then_commit(job):
    kinds = [line.split()[0] for line in job["log"] if not line.startswith("scontrol")]
    assert kinds == ["dvc", "srun", "accelerate", "accelerate", "dvc"]
    dvc = [line for line in job["log"] if line.startswith("dvc ")]
    assert dvc == ["dvc repro check_params download", "dvc commit --force train@lr_scheduler"]
    srun = next(line for line in job["log"] if line.startswith("srun "))
    assert f"--nodes={NODES}" in srun and "--ntasks-per-node=1" in srun and "--kill-on-bad-exit=1" in srun


@pytest.mark.parametrize("shape,said", [
    ({**JOB_SHAPE, "num_processes": 16}, "num_machines 2, num_processes 16"),
    ({}, "num_machines 1, num_processes 1"),  # the repository's one-machine launch
])
def test_a_job_of_another_shape_than_params_stops_before_anything_starts(tmp_path, repo_root, shape, said):
    proc, log, _ = run_script(tmp_path, repo_root, shape)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: launch: params.yaml says {said} but this job has 2 nodes x 4 GPUs = 8 processes; set "
        "launch.num_machines and launch.num_processes to the job's (with multi_gpu: true and a fixed "
        "main_process_port)")
    assert [line for line in log if not line.startswith("scontrol")] == []  # no dvc, srun or launch


def test_an_unknown_variant_stops_before_anything_starts(tmp_path, repo_root):
    proc, log, _ = run_script(tmp_path, repo_root, JOB_SHAPE, variant="lr_schedular")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: variants.lr_schedular: unknown variant")
    assert [line for line in log if not line.startswith("scontrol")] == []


# --- the run matrix as a job array: slurm/matrix.sh, matrix.sbatch, gather.sbatch ---------------

SBATCH_STUB = """echo "sbatch $*" >> "$STUB_LOG"
case "$*" in *--array*) echo "777;cluster" ;; *) echo 778 ;; esac
"""


@pytest.mark.slow
def test_the_array_runs_as_two_tasks_and_the_gather_step_leaves_status_clean(tmp_path, cpu_env):
    project, bin_dir, log = tmp_path / "project", tmp_path / "bin", tmp_path / "sbatch.log"
    env = matrix_env(project, cpu_env)
    make_matrix_project(project, env)
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/bash\n" + SBATCH_STUB)
    (bin_dir / "sbatch").chmod(0o755)
    env = {**{k: v for k, v in env.items() if not k.startswith("SLURM_")},
           "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}", "STUB_LOG": str(log)}

    # Submission: the upstream stages run now, the array gets the two training stages.
    submit = sh(["bash", "slurm/matrix.sh", "--partition=cpu", "--gpus=0"], project, env, timeout=600)
    array, gather = [shlex.split(line)[1:] for line in log.read_text().splitlines()]
    assert array[:2] == ["--parsable", "--array=0-1"] and array[-3:] == ["--partition=cpu", "--gpus=0",
                                                                           "slurm/matrix.sbatch"]
    assert gather[:3] == ["--parsable", "--dependency=afterany:777", gather[2]] and gather[-1] == "slurm/gather.sbatch"
    stages_file = array[2].removeprefix("--export=ALL,MATRIX_STAGES=")
    assert gather[2] == array[2] and Path(stages_file).read_text().split() == list(TRAINING), submit.stdout
    assert sh([*DVC, "status", "check_params", "download"], project, env).stdout.strip().endswith("up to date.")

    task_env = {**env, "MATRIX_STAGES": stages_file, "SLURM_SUBMIT_DIR": str(project), "SLURM_ARRAY_JOB_ID": "777"}
    # Before the tasks: the gather step refuses and names what to resubmit; it trains nothing.
    early = sh(["bash", project / "slurm" / "gather.sbatch"], tmp_path, task_env, check=False)
    assert early.returncode == 1
    assert early.stderr.strip().splitlines()[-1].startswith(
        f"error: array stage(s) not done: {', '.join(TRAINING)}; see their task logs, then rerun them with "
        "`sbatch --array=0,1 slurm/matrix.sbatch`")
    assert not (project / "metrics" / "runs").exists()

    # The two array tasks at once, each its script with its SLURM_ARRAY_TASK_ID, from elsewhere.
    tasks = [subprocess.Popen(["bash", str(project / "slurm" / "matrix.sbatch")], cwd=tmp_path,
                              env={**task_env, "SLURM_ARRAY_TASK_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) for i in range(2)]
    outputs = [t.communicate(timeout=900)[0].decode(errors="replace") for t in tasks]
    for stage, task, out in zip(TRAINING, tasks, outputs):
        assert task.returncode == 0, out[-4000:]
        assert f"Running stage '{stage}'" in out
    trained = tree_digests(project, "models")

    done = sh(["bash", project / "slurm" / "gather.sbatch"], tmp_path, task_env, timeout=900)
    assert "Running stage 'train@" not in done.stdout + done.stderr          # no retraining ...
    assert tree_digests(project, "models") == trained and len(trained) == 2  # ... the weights untouched
    assert "Running stage 'report'" in done.stdout
    assert_clean_and_locked(project, env)
