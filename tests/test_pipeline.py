"""End to end: the whole `dvc repro` on a slice (conftest's finished_pipeline: a throw-away git +
DVC copy of the project), what it wrote and did not write, its stage logs; and dvc.yaml's
hand-written variant lists against params.yaml. Expectations come from the copy's params.yaml and
`dvc stage list`, not from a fixed list of stages, so a stage added later keeps them valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from conftest import DVC, REPO, lock_outs, sh, tree_digests

TRAINING = ("train@", "seed@", "precision@", "published_path@")
EPOCH_LINE = re.compile(r"\bepoch (\d+)/(\d+)\b")


def params_of(root: Path) -> dict:
    return yaml.safe_load((root / "params.yaml").read_text())


def expected_stages(p: dict) -> set:
    """The stages params.yaml's lists make dvc.yaml expand to."""
    return {"check_params", "download", "benchmark",
            *(f"train@{v}" for v in p["variants"]),
            *(f"seed@{v}-{s}" for v in p["seeds"]["variants"] for s in p["seeds"]["extra"]),
            *(f"precision@{s}" for s in p["precision"]["seeds"]),
            *(f"published_path@{v}" for v in p["published_path"]["variants"])}


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


def allowed_change(root: Path, rel: str, outs: set) -> bool:
    """dvc.lock, a declared output, or a .gitignore whose every entry is a declared output (DVC's own)."""
    if rel == "dvc.lock" or within(rel, outs):
        return True
    if Path(rel).name == ".gitignore" and (root / rel).is_file():
        parent = Path(rel).parent
        entries = [e.strip() for e in (root / rel).read_text().splitlines() if e.strip() and not e.startswith("#")]
        return all((parent / e.lstrip("/")).as_posix() in outs for e in entries)
    return False


def test_repro_runs_every_stage(finished_pipeline):
    work, out = finished_pipeline["work"], finished_pipeline["repro"].stdout
    ran = set(stage_logs(out))
    assert expected_stages(params_of(work)) <= ran, sorted(expected_stages(params_of(work)) - ran)
    listed = sh([*DVC, "stage", "list", "--name-only"], work, finished_pipeline["env"]).stdout.split()
    assert set(listed) == ran, f"stages not run: {sorted(set(listed) - ran)}; run but not listed: {sorted(ran - set(listed))}"


def test_outputs_in_the_pipeline_layout(finished_pipeline):
    work = finished_pipeline["work"]
    p = params_of(work)
    tr, seed = p["train"], p["train"]["seed"]
    steps = -(-tr["train_limit"] // tr["batch_size"])
    runs = [(v, seed) for v in p["variants"]] + [(v, s) for v in p["seeds"]["variants"] for s in p["seeds"]["extra"]]
    for v, s in runs:
        m = json.loads((work / f"metrics/runs/{v}/seed_{s}.json").read_text())
        assert (m["variant"], m["seed"], m["epochs"]) == (v, s, tr["epochs"]), m
        assert (m["train_images"], m["test_images"], m["optimizer_steps"]) == (tr["train_limit"], tr["test_limit"],
                                                                              tr["epochs"] * steps), m
        assert m["num_processes"] == p["launch"]["num_processes"], m
        history = json.loads((work / f"metrics/history/{v}/seed_{s}.json").read_text())
        assert [h["epoch"] for h in history] == list(range(1, tr["epochs"] + 1))
        ckpt = "" if s == seed else f"-seed{s}"
        manifests = sorted((work / f"checkpoints/{v}{ckpt}").glob("node-*/run.json"))  # one per node
        assert manifests and all(json.loads(f.read_text())["finished"] is True for f in manifests), (v, s)
    for v in p["variants"]:
        assert (work / f"models/{v}.pt").stat().st_size > 0
        assert json.loads((work / f"metrics/errors/{v}.json").read_text())["test_images"] == tr["test_limit"]
    for s in p["precision"]["seeds"]:
        m = json.loads((work / f"metrics/precision/seed_{s}.json").read_text())
        assert (m["variant"], m["seed"]) == (p["precision"]["variant"], s)
        assert m["mixed_precision"] == p["precision"]["mixed_precision"], m
    for v in p["published_path"]["variants"]:
        assert json.loads((work / f"metrics/published_path/{v}.json").read_text())["epochs"] == tr["epochs"]
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
    """[(name, spec)] of dvc.yaml's top-level plots, read as DVC reads it (a key written twice is
    an error there, not silently dropped as yaml.safe_load would)."""
    from dvc.utils.serialize import load_yaml

    return [(name, spec) for entry in load_yaml(root / "dvc.yaml")["plots"] for name, spec in entry.items()]


def test_plots_name_every_variant_once_and_their_templates_exist():
    """dvc.yaml's top-level plots list every variant by hand: one file per variant, all of one
    pattern (metrics/history/<v>/seed_1.json, ...), nothing else; each template is in .dvc/plots/."""
    variants = list(params_of(REPO)["variants"])
    assert plots(REPO)
    for name, spec in plots(REPO):
        assert isinstance(spec.get("y"), dict), f"plot {name}: y should map each file to its field(s)"
        named = {f: [v for v in variants if v in Path(f).parts or Path(f).stem == v] for f in spec["y"]}
        assert all(len(vs) == 1 for vs in named.values()), f"plot {name}: files naming no single variant: " \
            f"{[f for f, vs in named.items() if len(vs) != 1]}"
        assert sorted(vs[0] for vs in named.values()) == sorted(variants), \
            f"plot {name}: missing {sorted(set(variants) - {vs[0] for vs in named.values()})}"
        patterns = {f.replace(vs[0], "<variant>") for f, vs in named.items()}
        assert len(patterns) == 1, f"plot {name} mixes file patterns: {sorted(patterns)}"
        template = spec.get("template")
        if template:
            path = REPO / ".dvc" / "plots" / (template if Path(template).suffix else f"{template}.json")
            assert path.is_file(), f"plot {name}: template {template} not at {path.relative_to(REPO)}"


def test_every_plotted_file_is_a_pipeline_output(finished_pipeline):
    work = finished_pipeline["work"]
    outs = lock_outs(work)
    for name, spec in plots(work):
        for f in spec["y"]:
            assert within(f, outs) and (work / f).is_file(), f"plot {name}: {f} is not written by dvc repro"
