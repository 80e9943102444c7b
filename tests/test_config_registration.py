"""Registered variants (params.yaml `registration`, issue 32): a design fixed in one commit with its own
seeds and criterion, trained on those seeds alone (stage registered@<variant>-<seed>, no train@ run).
The section is optional; with it, config builds its variants as `variants` entries, lists them after
them, and refuses every overlap with another section in one line naming the key. Here: config's
checks (one test per message), check_params on it, and the template docs/under_3k.md gives for the
registration commit, in a copy of the project: DVC expands it to registered@ stages and no train@."""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil

import pytest
import yaml
from support.params import rejected
from support.projects import DVC, REPO, init_project, sh

from mnist_repro.core.config import RegisteredVariant, VariantConfig, load_params, parse_params
from mnist_repro.core.errors import ParamsError

SEEDS = list(range(301, 311))
REGISTRATION = {"variants": {"tiny": {"model": "c8-8-8-8-10", "optimizer": "adam", "lr": 0.02,
                                      "schedule": "one_cycle", "augment": True, "target": "A test's registration"}},
                "seeds": SEEDS, "min_final_test_mean": 99.40, "min_seeds_at": 8}


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="module")
def registered(raw):
    return {**copy.deepcopy(raw), "registration": copy.deepcopy(REGISTRATION)}


def test_params_without_the_section_register_nothing(raw):
    params = parse_params(raw)
    assert params.registration.variants == {} and params.registration.seeds == ()
    assert not any(params.registered(name) for name in params.variants)
    assert params.seeds_of("skeleton")[0] == params.train.seed and params.stage_of("skeleton", 1) == "train@skeleton"


def test_a_registered_variant_follows_the_variants_with_its_own_seeds_and_stages(raw, registered):
    params = parse_params(registered)
    assert list(params.variants) == [*raw["variants"], "tiny"]
    tiny = params.variant("tiny")
    assert isinstance(tiny, RegisteredVariant) and params.registered("tiny") and not params.registered("under_5k")
    # built as a `variants` entry: defaults merged in, the same fields (the checkpoint's fingerprint reads them)
    assert (tiny.momentum, tiny.dropout, tiny.lr) == (raw["defaults"]["momentum"], raw["defaults"]["dropout"], 0.02)
    assert [f.name for f in dataclasses.fields(tiny)] == [f.name for f in dataclasses.fields(VariantConfig)]
    assert params.seeds_of("tiny") == tuple(SEEDS)
    assert params.stage_of("tiny", 305) == "registered@tiny-305"
    with pytest.raises(ParamsError, match=r"^seeds: variant tiny does not train seed 1; its seeds are 301, "):
        params.stage_of("tiny", 1)
    # every other variant as without the section
    plain = parse_params(raw)
    assert {n: (params.seeds_of(n), params.variant(n)) for n in plain.variants} == {
        n: (plain.seeds_of(n), plain.variant(n)) for n in plain.variants}
    reg = params.registration
    assert reg.met([99.5] * 8 + [99.0] * 2) and not reg.met([99.45] * 7 + [99.3] * 3)  # mean 99.45, 7 at it
    assert not reg.met([99.39] * 10)


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["registration"]["variants"].update(skeleton=r["registration"]["variants"]["tiny"]),
     "registration.variants.skeleton: also a variant under variants, which trains train.seed; keep it in one"),
    (lambda r: r["registration"].update(seeds=[1, *SEEDS]),
     "registration.seeds: seed 1 is also in train.seed; a registered variant needs seeds no other run trains"),
    (lambda r: r["registration"].update(seeds=[5, *SEEDS]),   # compile_check trains seed 5 too: the first key named
     "registration.seeds: seed 5 is also in seeds.extra; a registered variant needs seeds no other run trains"),
    (lambda r: r["registration"].update(seeds=[101, *SEEDS]),
     "registration.seeds: seed 101 is also in confirmation.seeds; a registered variant needs seeds no other run "
     "trains"),
    (lambda r: r["registration"].update(seeds=[*SEEDS, 220]),
     "registration.seeds: seed 220 is also in data_path_test.seeds; a registered variant needs seeds no other run "
     "trains"),
    (lambda r: r["registration"].update(seeds=[301]),
     "registration.seeds: 1 seed; list at least 2 (a mean over seeds and its spread)"),
    (lambda r: r["registration"].update(seeds=[301, 301]), "registration.seeds: [301, 301] lists a seed twice"),
    (lambda r: r["registration"].update(min_seeds_at=11),
     "registration.min_seeds_at: must be a count of seeds from 0 to the 10 registration.seeds lists, got 11"),
    (lambda r: r["registration"].update(min_final_test_mean=140),
     "registration.min_final_test_mean: must be a test accuracy in (0, 100] %, got 140.0"),
    (lambda r: r["registration"].update(min_seeds_at=True),
     "registration.min_seeds_at: expected int, got a boolean True"),
    (lambda r: r["registration"].update(seed=[1]),
     "registration.seed: unknown key; allowed keys are variants, seeds, min_final_test_mean, min_seeds_at"),
    (lambda r: r["registration"].pop("min_seeds_at"),
     "registration.min_seeds_at: missing; add it, or remove the section to register no variant"),
    (lambda r: r["registration"].update(variants={}),
     "registration.variants: expected a mapping of at least one variant; remove the section to register none"),
    (lambda r: r.update(registration=[]), "registration: expected a mapping, got list"),
    (lambda r: r["registration"]["variants"]["tiny"].update(lr=0),
     "registration.variants.tiny.lr: must be positive, got 0.0"),
    (lambda r: r["registration"]["variants"]["tiny"].update(name="x"),
     "registration.variants.tiny.name: unknown key; the variant's name is its key under registration.variants"),
    (lambda r: r["registration"]["variants"]["tiny"].update(model="no_such_model"),
     "registration.variants.tiny.model: ..."),  # models.unbuildable's reason follows
    (lambda r: r["seeds"]["variants"].append("tiny"),
     "seeds.variants: 'tiny' is a registered variant (registration.variants), which trains registration.seeds "
     "alone; remove it here"),
    (lambda r: r["data_path_test"]["variants"].append("tiny"),
     "data_path_test.variants: 'tiny' is a registered variant (registration.variants), which trains "
     "registration.seeds alone; remove it here"),
    (lambda r: r["confirmation"].update(variant="tiny"),
     "confirmation.variant: 'tiny' is a registered variant (registration.variants), which trains registration.seeds "
     "alone; remove it here"),
])
def test_registration_errors_name_the_key_and_the_fix(registered, mutate, message):
    msg = rejected(registered, mutate)
    assert "\n" not in msg
    if message.endswith("..."):
        assert msg.startswith(message.removesuffix("...")), msg
    else:
        assert msg == message


def test_check_params_accepts_a_registration_and_refuses_a_bad_one(registered, tmp_path, run_stage, capsys):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(registered, sort_keys=False))
    run_stage("check_params", ["--params", path, "--out", tmp_path / "params.ok"])
    assert (tmp_path / "params.ok").is_file()
    bad = copy.deepcopy(registered)
    bad["registration"]["seeds"] = [1, *SEEDS[1:]]
    path.write_text(yaml.safe_dump(bad, sort_keys=False))
    with pytest.raises(SystemExit):
        run_stage("check_params", ["--params", path, "--out", tmp_path / "again.ok"])
    assert capsys.readouterr().err.strip() == ("error: registration.seeds: seed 1 is also in train.seed; a registered "
                                               "variant needs seeds no other run trains")


# --- the registration commit's template (docs/under_3k.md) ------------------------------------------

def template_blocks() -> tuple[str, str]:
    """The two YAML blocks of docs/under_3k.md's "What comes after the search": params.yaml's, dvc.yaml's."""
    text = (REPO / "docs/under_3k.md").read_text().split("## What comes after the search", 1)[1]
    params, stage = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return params, stage


def with_stage_params(dvc_yaml: str, stages: tuple[str, ...]) -> str:
    """dvc.yaml with `- registration` first under each named stage's params (the template's prose)."""
    lines, out, current = dvc_yaml.splitlines(keepends=True), [], None
    for line in lines:
        out.append(line)
        if re.match(r"^  \w+:", line):
            current = line.strip().rstrip(":")
        if current in stages and re.match(r"^    params:", line):
            out.append("      - registration\n")
    return "".join(out)


@pytest.fixture(scope="module")
def registered_project(tmp_path_factory, cli_env):
    """A copy of the project with the template filled in (a buildable model and a peak for the placeholders),
    committed: params.yaml gains the section, dvc.yaml the stage and the compare and report stages' param."""
    params_block, stage_block = template_blocks()
    root = init_project(tmp_path_factory.mktemp("registered"), cli_env)
    for rel in ("data/params.ok", "data/MNIST.sha256"):  # committed stamps the stages' deps name
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    filled = params_block.replace("<MODEL>", "c8-8-8-8-10").replace("<PEAK>", "0.02")
    (root / "params.yaml").write_text((root / "params.yaml").read_text() + "\n" + filled)
    dvc_yaml = (root / "dvc.yaml").read_text()
    anchor = "  # The confirmation (params.yaml `confirmation`"
    assert dvc_yaml.count(anchor) == 1
    dvc_yaml = dvc_yaml.replace(anchor, stage_block + "\n" + anchor)
    (root / "dvc.yaml").write_text(with_stage_params(dvc_yaml, ("compare", "report")))
    sh(["git", "add", "-A"], root, cli_env)
    sh(["git", "commit", "-q", "-m", "register"], root, cli_env)
    return root


def test_the_template_makes_registered_stages_and_no_train_stage(registered_project, cli_env):
    root = registered_project
    params = load_params(root / "params.yaml")
    assert params.registered("under_3k") and params.seeds_of("under_3k") == tuple(SEEDS)
    stages = sh([*DVC, "stage", "list", "--name-only"], root, cli_env).stdout.split()
    assert [s for s in stages if "under_3k" in s] == [f"registered@under_3k-{s}" for s in SEEDS]
    # the names config gives are DVC's: the matrix, the pending line and the table read them
    from mnist_repro.parallel.estimate import stage_recipes
    from mnist_repro.parallel.pending import Status
    recipes = stage_recipes(params)
    assert {s for s in recipes if s.startswith("registered@")} == {s for s in stages if s.startswith("registered@")}
    status = Status(root)
    assert all(status.pending(f"registered@under_3k-{s}") for s in SEEDS)  # no lock entry yet
    dry = sh([*DVC, "repro", "--dry", "registered@under_3k-301"], root, cli_env).stdout
    assert "Running stage 'registered@under_3k-301'" in dry and "train@under_3k" not in dry
    assert ("stages/train.py under_3k --seed 301 --data data --metrics metrics/runs/under_3k/seed_301.json "
            "--history metrics/history/under_3k/seed_301.json --resume") in " ".join(dry.split())
    # the compare and report stages' params resolve (DVC stops on a params key params.yaml lacks)
    sh([*DVC, "status", "compare", "report"], root, cli_env)
