"""A design search's record (research/search.py): a real holdout experiment read back from DVC
with the overrides that made it, candidates ranked by final validation accuracy, the report
section that names the candidate params.yaml holds, and the search's script (research/under_5k.sh)
queueing at HEAD exactly the experiments the committed record holds."""

from __future__ import annotations

import json
import os
import sys

import pytest
import yaml
from support.projects import DVC, REPO, load_script, sh

from mnist_repro.core.config import load_params
from mnist_repro.report.search import search_section

search = load_script("research/search.py")
overrides, rank = search.overrides, search.rank


def run(name, seed, final, params=4204, holdout=500, **changed):
    return {"experiment": name, "seed": seed, "model": changed.get("variants.v.model", "m"), "params": params,
            "recipe": {"model": changed.get("variants.v.model", "m")}, "final_val_acc": final,
            "validation_images": holdout, "overrides": {"train.holdout": holdout, "train.seed": seed, **changed}}


def test_overrides_are_the_stage_params_that_differ_from_the_baseline():
    base = {"train": {"seed": 1, "holdout": 0}, "variants": {"v": {"lr": 0.05}, "w": {"lr": 0.1}},
            "seeds": {"extra": [2]}}
    exp = {"train": {"seed": 11, "holdout": 500}, "variants": {"v": {"lr": 0.03}, "w": {"lr": 0.2}},
           "seeds": {"extra": [2, 3]}}
    # another variant's entry and the seeds section are not train@v's params: not part of its command
    assert overrides(exp, base, "v") == {"train.seed": 11, "train.holdout": 500, "variants.v.lr": 0.03}


def test_candidates_pool_their_seeds_and_rank_by_mean_final_validation_accuracy():
    records = [run("a1", 1, 99.30), run("a2", 2, 99.10),                        # a: mean 99.20
               run("b1", 1, 99.24, **{"variants.v.model": "b"}),               # b: 99.24, one seed
               run("ref", 1, 99.50, params=6720, **{"variants.v.model": "big"})]
    ranked = rank(records, max_params=5000)
    assert [c["experiments"] for c in ranked] == [["b1"], ["a1", "a2"], ["ref"]]
    assert ranked[1]["seeds"] == [1, 2] and ranked[1]["final_val_mean"] == 99.2 and ranked[1]["final_val_min"] == 99.1
    assert [c["within_budget"] for c in ranked] == [True, True, False]  # over budget: a reference, listed last
    assert "train.seed" not in ranked[1]["overrides"]


def test_candidates_rank_within_their_split_the_largest_first():
    # 99.50 on 500 images and 99.30 on 1,000 are scores on different images: the larger split decides.
    records = [run("small", 1, 99.50), run("large", 1, 99.30, holdout=1000),
               run("large-b", 1, 99.34, holdout=1000, **{"variants.v.model": "b"})]
    ranked = rank(records, max_params=5000)
    assert [(c["experiments"], c["validation_images"]) for c in ranked] == [
        (["large-b"], 1000), (["large"], 1000), (["small"], 500)]


@pytest.mark.slow
def test_a_holdout_experiment_is_recorded_with_its_command(finished_pipeline, copy_finished_pipeline, tmp_path):
    work, env = copy_finished_pipeline(), finished_pipeline["env"]
    out = tmp_path / "search" / "under_5k.json"
    search = [sys.executable, work / "research" / "search.py", "under_5k", "--max-params", "5000", "--out", out]

    # No experiment yet: one line naming what to run, no file.
    proc = sh(search, work, env, check=False)
    assert proc.returncode == 1 and not out.exists()
    assert proc.stderr.strip().splitlines() == [
        "error: no successful holdout experiment of train@under_5k in this clone; "
        "queue them (research/under_5k.sh) and run `dvc queue start`"]

    LR = 0.035  # an override only if params.yaml's under_5k has another peak
    assert load_params(work / "params.yaml").variant("under_5k").lr != LR
    sh([*DVC, "exp", "run", "--temp", "train@under_5k", "-n", "probe", "-S", "train.holdout=100",
        "-S", f"variants.under_5k.lr={LR}"], work, env, timeout=900)
    # An experiment scored on the test set is not part of a search.
    sh([*DVC, "exp", "run", "--temp", "train@under_5k", "-n", "on-test", "-S", "variants.under_5k.lr=0.03"],
       work, env, timeout=900)
    sh(search, work, env)

    record = json.loads(out.read_text())
    (exp,) = record["experiments"]
    head = sh(["git", "rev-parse", "HEAD"], work, env).stdout.strip()
    run_file = json.loads(sh(["git", "show", f"refs/exps/{head[:2]}/{head[2:]}/probe:metrics/runs/under_5k/seed_1.json"],
                             work, env).stdout)
    assert exp["experiment"] == "probe" and exp["baseline"] == head[:7]
    assert exp["overrides"] == {"train.holdout": 100, "variants.under_5k.lr": LR}
    assert exp["command"] == f"dvc exp run train@under_5k -S train.holdout=100 -S variants.under_5k.lr={LR}"
    assert (exp["final_val_acc"], exp["best_val_acc"], exp["validation_images"]) == (
        run_file["final_test_acc"], run_file["best_test_acc"], 100)
    assert run_file["evaluated_on"] == "holdout (last 100 training images)"
    assert exp["recipe"]["lr"] == LR and record["candidates"][0]["within_budget"]

    # The report names no candidate as chosen until params.yaml holds one's recipe.
    params = load_params(work / "params.yaml")
    assert "matches no candidate" in search_section("under_5k", record, params)[0]
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["variants"]["under_5k"]["lr"] = LR
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    section = search_section("under_5k", record, load_params(work / "params.yaml"))
    assert "`params.yaml` has candidate 1." in section[0]
    lines = "\n".join(section).splitlines()
    assert any(line.startswith(f"| 1 (chosen) | {exp['model']} | {exp['params']:,} | `lr={LR}` | 100 |")
               for line in lines)
    assert any(line.startswith("| probe |") and f"`{exp['command']}`" in line for line in lines)


def test_outside_a_dvc_project_it_says_so_in_one_line(tmp_path):
    from mnist_repro.core.errors import SearchError
    with pytest.raises(SearchError, match="is not a DVC project; run this from the project's root or pass --repo"):
        search.collect("under_5k", repo=str(tmp_path))


def test_an_experiments_recipe_is_its_params_as_config_reads_them():
    import copy

    from mnist_repro.core.config import Yaml12Loader
    from mnist_repro.core.errors import ParamsError

    baseline = yaml.load((REPO / "params.yaml").read_text(), Loader=Yaml12Loader)
    params = copy.deepcopy(baseline)
    params["train"]["holdout"], params["variants"]["under_5k"]["lr"] = 100, 0.035
    run = {"seed": 1, "params": 4872, "test_images": 100, "train_images": 59_900, "final_test_acc": 98.0,
           "best_test_acc": 99.0, "best_test_epoch": 1, "final_train_acc": 90.0, "wall_seconds": 1.0}
    line = search.record("probe", "a" * 40, "b" * 40, "under_5k", params, baseline, run)
    head = load_params(REPO / "params.yaml").variant("under_5k")
    assert line["recipe"] == {**{k: getattr(head, k) for k in search.RECIPE_KEYS}, "lr": 0.035}
    assert line["overrides"] == {"train.holdout": 100, "variants.under_5k.lr": 0.035}
    assert line["model"] == head.model and (line["rev"], line["baseline"]) == ("aaaaaaa", "bbbbbbb")
    # The layout before `defaults:` and `confirmation:`: each variant's entry held its whole recipe
    old = copy.deepcopy(params)
    old["variants"] = {name: {**old["defaults"], **entry} for name, entry in old["variants"].items()}
    del old["defaults"], old["confirmation"]
    assert search.record("old", "a" * 40, "b" * 40, "under_5k", old, baseline, run)["recipe"] == line["recipe"]
    # A recipe made before a key existed is not guessed at: collect skips and counts it
    del old["variants"]["under_5k"]["optimizer"]
    with pytest.raises(ParamsError, match=r"variants\.under_5k\.optimizer: missing"):
        search.record("older", "a" * 40, "b" * 40, "under_5k", old, baseline, run)


def test_the_records_experiments_read_back_from_their_baselines_as_recorded():
    """Each experiment of the committed record whose baseline commit is here: that commit's params.yaml
    (older layouts) with the experiment's overrides gives the recorded recipe, or names the key it lacks."""
    import subprocess

    from mnist_repro.core.config import Yaml12Loader
    from mnist_repro.core.errors import ParamsError

    experiments = json.loads((REPO / "metrics/search/under_5k.json").read_text())["experiments"]
    read, skipped = 0, set()
    for e in experiments:
        shown = subprocess.run(["git", "show", f"{e['baseline']}:params.yaml"], cwd=REPO, capture_output=True, text=True)
        if shown.returncode:
            pytest.skip(f"this checkout lacks commit {e['baseline']} (a shallow clone): its params cannot be read")
        params = yaml.load(shown.stdout, Loader=Yaml12Loader)
        for key, value in e["overrides"].items():
            *parents, last = key.split(".")
            node = params
            for k in parents:
                node = node.setdefault(k, {})
            node[last] = value
        try:
            recipe = search.recipe_of(params, "under_5k")
        except ParamsError as err:
            skipped.add(str(err).split(":")[0])
            continue
        assert {k: getattr(recipe, k) for k in search.RECIPE_KEYS} == e["recipe"], e["experiment"]
        read += 1
    # 24 read back exactly; the rest predate the optimizer key (their entries lack it): skipped, not guessed
    assert (read, skipped) == (24, {"variants.under_5k.optimizer"})


def test_a_key_the_baseline_lacks_is_added_with_plus_plus():
    base = {"train": {"seed": 1}, "variants": {"v": {"lr": 0.05}}}
    exp = {"train": {"seed": 11}, "variants": {"v": {"lr": 0.05, "momentum": 0.7}}}
    changed = overrides(exp, base, "v")
    assert search.command("v", changed, base) == "dvc exp run train@v -S train.seed=11 -S ++variants.v.momentum=0.7"


ROUNDS = (1, 2, 3, 4, 7, 8, 9)


def queued(round_: int, tmp_path) -> list[tuple[str, list[str]]]:
    """(name, -S overrides) of each experiment `bash research/under_5k.sh round_` queues, as a
    stand-in `dvc` first on PATH receives them."""
    import subprocess

    bin_dir, log = tmp_path / "bin", tmp_path / f"round{round_}.jsonl"
    bin_dir.mkdir(exist_ok=True)
    # one line per call, its arguments separated by \x1f (a shell, not Python: 63 calls)
    (bin_dir / "dvc").write_text(f"#!/usr/bin/env bash\nprintf '%s\\x1f' \"$@\" >> '{log}'\necho >> '{log}'\n")
    (bin_dir / "dvc").chmod(0o755)
    subprocess.run(["bash", REPO / "research" / "under_5k.sh", str(round_)], check=True,
                   env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    experiments = []
    for line in log.read_text().splitlines():
        args = line.split("\x1f")[:-1]
        assert args[:4] == ["exp", "run", "--queue", "train@under_5k"]
        name, sets, rest = None, [], args[4:]
        while rest:
            flag = rest.pop(0)
            if flag == "-n":
                name = rest.pop(0)
            elif flag == "-S":
                sets.append(rest.pop(0))
            else:
                assert flag.startswith("-S"), flag
                sets.append(flag[2:])
        experiments.append((name, sets))
    return experiments


def test_the_sweep_queues_at_head_exactly_the_recorded_experiments(tmp_path):
    """Every experiment of the committed record, rerun from HEAD's params.yaml by the script:
    DVC's own -S parser applies its overrides, this checkout's config reads the result, and
    the recipe, seed and validation split are the ones the record says it ran with."""
    from dvc.utils.hydra import apply_overrides

    from mnist_repro.core.config import load_params

    record = {e["experiment"]: e for e in json.loads((REPO / "metrics/search/under_5k.json").read_text())["experiments"]}
    made = {}
    for round_ in ROUNDS:
        for name, sets in queued(round_, tmp_path):
            params = tmp_path / f"{name}.yaml"
            params.write_text((REPO / "params.yaml").read_text())
            apply_overrides(params, sets)
            p = load_params(params)
            v = p.variant("under_5k")
            made[name] = {"recipe": {k: getattr(v, k) for k in search.RECIPE_KEYS}, "seed": p.train.seed,
                          "validation_images": p.train.holdout, "model": v.model}
    assert sorted(made) == sorted(record)
    assert made == {name: {k: e[k] for k in ("recipe", "seed", "validation_images", "model")}
                    for name, e in record.items()}

