"""End to end: the whole `dvc repro` on a slice (conftest's finished_pipeline: a throw-away git +
DVC copy of the project), what it wrote and did not write, its stage logs. Expectations come from
the copy's params.yaml (through mnist_repro.core.config: seeds_of, stage_of) and `dvc stage list`, not
from a fixed list of stages, so a stage added later keeps them valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from support.projects import DVC, lock_outs, sh, tree_digests

from mnist_repro.core.config import load_params

pytestmark = pytest.mark.slow  # every test here reads the one `dvc repro` of conftest's finished_pipeline

TRAINING = ("train@", "seed@", "seed_slow@", "confirm@", "precision@", "compile_check@", "published_path@")
EPOCH_LINE = re.compile(r"\bepoch (\d+)/(\d+)\b")


def params_of(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def expected_stages(root: Path) -> set:
    """The stages params.yaml's lists make dvc.yaml expand to."""
    p = load_params(root / "params.yaml")
    return {"check_params", "download", "benchmark", "compare", "report",
            *(p.stage_of(v, s) for v in p.variants for s in p.seeds_of(v)),
            *(f"confirm@{s}" for s in p.confirmation.seeds),
            *(f"precision@{s}" for s in p.precision.seeds),
            *(f"compile_check@{v}-{s}" for v in p.compile_check.variants for s in p.compile_check.seeds),
            *(f"published_path@{v}-{s}" for v in p.published_path.variants for s in p.published_path.seeds)}


def stage_logs(stdout: str) -> dict:
    """{stage name: the lines `dvc repro` printed while running it}."""
    logs, current = {}, None
    for line in stdout.split("\n"):  # not splitlines(): a progress bar's \r must stay inside its line
        m = re.match(r"Running stage '([^']+)':", line)
        if m:
            current = m[1]
            logs[current] = []
        elif current:
            logs[current].append(line)
    return logs


def within(rel: str, outs: set) -> bool:
    return any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in outs)


RESUME_STATE = "checkpoints/"  # git-ignored resume state, deliberately not a DVC output (docs/pipeline.md)


def allowed_change(root: Path, rel: str, outs: set) -> bool:
    """dvc.lock, a declared output, the resume state, or a .gitignore whose every entry is a
    declared output (DVC's own)."""
    if rel == "dvc.lock" or within(rel, outs) or rel.startswith(RESUME_STATE):
        return True
    if Path(rel).name == ".gitignore" and (root / rel).is_file():
        parent = Path(rel).parent
        entries = [e.strip() for e in (root / rel).read_text().splitlines() if e.strip() and not e.startswith("#")]
        return all((parent / e.lstrip("/")).as_posix() in outs for e in entries)
    return False


def test_repro_runs_every_stage(finished_pipeline):
    work, out = finished_pipeline["work"], finished_pipeline["repro"].stdout
    ran = set(stage_logs(out))
    assert expected_stages(work) <= ran, sorted(expected_stages(work) - ran)
    listed = sh([*DVC, "stage", "list", "--name-only"], work, finished_pipeline["env"]).stdout.split()
    assert set(listed) == ran, f"stages not run: {sorted(set(listed) - ran)}; run but not listed: {sorted(ran - set(listed))}"


def test_outputs_in_the_pipeline_layout(finished_pipeline):
    work = finished_pipeline["work"]
    p, params = params_of(work), load_params(work / "params.yaml")
    tr, seed = p["train"], p["train"]["seed"]
    steps = -(-tr["train_limit"] // tr["batch_size"])
    runs = [(v, s) for v in params.variants for s in params.seeds_of(v)]
    runs += [(f"confirmation/{params.confirmation.variant}", s) for s in params.confirmation.seeds]
    for v, s in runs:
        folder, v = (("metrics/confirmation/runs", v.split("/")[1]) if v.startswith("confirmation/")
                     else (f"metrics/runs/{v}", v))
        m = json.loads((work / f"{folder}/seed_{s}.json").read_text())
        assert (m["variant"], m["seed"], m["epochs"]) == (v, s, tr["epochs"]), m
        assert (m["train_images"], m["test_images"], m["optimizer_steps"]) == (tr["train_limit"], tr["test_limit"],
                                                                              tr["epochs"] * steps), m
        assert m["num_processes"] == p["launch"]["num_processes"], m
        history = json.loads((work / folder.replace("/runs", "/history") / f"seed_{s}.json").read_text())
        assert [h["epoch"] for h in history] == list(range(1, tr["epochs"] + 1))
    for v in p["variants"]:
        assert (work / f"models/{v}.pt").stat().st_size > 0
        assert json.loads((work / f"metrics/errors/{v}.json").read_text())["test_images"] == tr["test_limit"]
    for s in p["precision"]["seeds"]:
        m = json.loads((work / f"metrics/precision/seed_{s}.json").read_text())
        assert (m["variant"], m["seed"]) == (p["precision"]["variant"], s)
        assert m["mixed_precision"] == p["precision"]["mixed_precision"], m
    for v in params.published_path.variants:
        for s in params.published_path.seeds:
            run = json.loads((work / f"metrics/published_path/runs/{v}/seed_{s}.json").read_text())
            assert (run["epochs"], run["seed"], run["data_path"]) == (tr["epochs"], s, "published"), run
    assert json.loads((work / "metrics/benchmark.json").read_text())["variant"] == p["benchmark"]["variant"]


def test_repro_writes_only_its_declared_outputs(finished_pipeline):
    work, before, after = finished_pipeline["work"], finished_pipeline["before"], finished_pipeline["after"]
    outs = lock_outs(work)
    touched = {rel for rel in before.keys() | after.keys() if before.get(rel) != after.get(rel)}
    assert "README.md" in before and after["README.md"] == before["README.md"]
    assert "params.yaml" not in touched
    assert {"dvc.lock"} <= touched
    stray = sorted(rel for rel in touched if not allowed_change(work, rel, outs))
    assert not stray, f"dvc repro created, changed or deleted files outside its declared outputs: {stray}"
    # The same through git: only the lock and declared outputs show as new or modified.
    porcelain = [line[3:] for line in finished_pipeline["porcelain"].splitlines()]
    assert "dvc.lock" in porcelain and "README.md" not in porcelain
    stray = sorted(rel for rel in porcelain if not allowed_change(work, rel, outs))
    assert not stray, f"git status after dvc repro shows files outside its declared outputs: {stray}"


def test_stage_logs_have_no_launch_warning_and_no_progress_bars(finished_pipeline):
    proc = finished_pipeline["repro"]
    both = proc.stdout + proc.stderr
    assert "`--num_processes` was set to a value of `0`" not in both
    assert "were not passed to `accelerate launch`" not in both
    assert "\r" not in both, [line for line in both.split("\n") if "\r" in line][:5]
    epochs = params_of(finished_pipeline["work"])["train"]["epochs"]
    logs = stage_logs(proc.stdout)
    training = [name for name in logs if name.startswith(TRAINING)]
    assert training
    for name in training:
        found = [tuple(map(int, m.groups())) for m in map(EPOCH_LINE.search, logs[name]) if m]
        assert found == [(k, epochs) for k in range(1, epochs + 1)], (name, logs[name])


def test_second_repro_is_a_no_op_and_status_is_clean(finished_pipeline):
    work, env = finished_pipeline["work"], finished_pipeline["env"]
    assert json.loads(sh([*DVC, "status", "--json"], work, env).stdout) == {}
    before = tree_digests(work)
    proc = sh([*DVC, "repro"], work, env)
    assert "Running stage" not in proc.stdout, proc.stdout
    assert tree_digests(work) == before
    assert sh(["git", "status", "--porcelain"], work, env).stdout == ""


def plots(root: Path) -> list:
    from dvc.utils.serialize import load_yaml

    return [(name, spec) for entry in load_yaml(root / "dvc.yaml")["plots"] for name, spec in entry.items()]


def test_every_plotted_file_is_a_pipeline_output(finished_pipeline):
    work = finished_pipeline["work"]
    outs = lock_outs(work)
    for name, spec in plots(work):
        for f in spec["y"]:
            assert within(f, outs) and (work / f).is_file(), f"plot {name}: {f} is not written by dvc repro"
