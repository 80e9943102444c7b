"""params.yaml validation: every rejection names the key path that is wrong."""

from __future__ import annotations

import copy
import dataclasses
import types

import pytest
import yaml
from support.params import rejected

from mnist_repro.core.config import LaunchConfig, Params, load_params, parse_params
from mnist_repro.core.errors import ParamsError
from mnist_repro.training.device_data import check_shares
from mnist_repro.training.launch import check_launch


@pytest.fixture(scope="module")
def raw(repo_root):
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def test_repo_params_load(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert isinstance(params, Params)
    assert params.train.epochs == 15 and params.train.batch_size == 128 and params.train.seed == 1
    assert len(params.variants) == 8
    assert params.variant("lr_scheduler").schedule == "one_cycle"
    assert isinstance(params.variant("basic_setup").lr, float)
    assert params.train.seed not in params.seeds.extra
    assert set(params.seeds.variants) | set(params.published_path.variants) <= set(params.variants)
    assert params.precision.variant in params.variants and params.precision.mixed_precision in ("bf16", "fp16")
    # one process on this machine, as the committed results were made
    assert params.launch == LaunchConfig(multi_gpu=False, num_processes=1, num_machines=1,
                                         main_process_ip="127.0.0.1", main_process_port=0,
                                         mixed_precision="no", dynamo_backend="no")
    assert params.train.holdout == 0 and params.benchmark.steps == 0


def test_unknown_section(raw):
    msg = rejected(raw, lambda r: r.update(trian={"epochs": 1}))
    assert msg.startswith("trian:") and "unknown section" in msg


def test_missing_section(raw):
    msg = rejected(raw, lambda r: r.pop("benchmark"))
    assert msg.startswith("benchmark:") and "missing" in msg


def test_unknown_train_key_typo(raw):
    msg = rejected(raw, lambda r: r["train"].update(epoch=3))
    assert msg.startswith("train.epoch:") and "unknown key" in msg
    assert "epochs" in msg  # the allowed keys are listed


def test_missing_train_key(raw):
    msg = rejected(raw, lambda r: r["train"].pop("seed"))
    assert msg.startswith("train.seed:") and "missing" in msg


def test_variants_state_only_their_differences_from_defaults(raw):
    """Every recipe key a variant leaves out comes from defaults; one it sets wins."""
    params = parse_params(raw)
    for name, own in raw["variants"].items():
        variant = params.variant(name)
        for key, default in raw["defaults"].items():
            assert getattr(variant, key) == own.get(key, default), (name, key)
    changed = copy.deepcopy(raw)
    changed["defaults"]["lr"] = 0.05
    after = parse_params(changed)
    moved = {n for n in raw["variants"] if after.variant(n).lr != params.variant(n).lr}
    assert moved == {n for n, own in raw["variants"].items() if "lr" not in own} and moved


@pytest.mark.parametrize("mutate,expected", [
    (lambda r: r["defaults"].update(lrr=0.1), "defaults.lrr: unknown key; allowed keys are optimizer, lr, "),
    (lambda r: r["defaults"].update(model="skeleton"), "defaults.model: unknown key"),
    (lambda r: r["defaults"].update(lr="fast"), "variants.basic_setup.lr: expected float, got 'fast'"),
    (lambda r: r["defaults"].pop("momentum"),
     "variants.basic_setup.momentum: missing; set it under defaults (every variant) or here"),
    (lambda r: r["variants"]["skeleton"].pop("model"), "variants.skeleton.model: missing; add it to params.yaml"),
    (lambda r: r["variants"]["skeleton"].update(name="x"), "variants.skeleton.name: unknown key"),
    (lambda r: r.update(defaults=[1]), "defaults: expected a mapping, got list"),
])
def test_defaults_and_variants_name_the_bad_key(raw, mutate, expected):
    msg = rejected(raw, mutate)
    assert msg.startswith(expected), msg
    assert "\n" not in msg


def test_seeds_are_fixed_per_variant_train_seed_first(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert params.seeds_of("basic_setup") == (1, 2, 3)
    for name in params.variants:
        if name != "basic_setup":
            assert params.seeds_of(name) == tuple(range(1, 11)), name
    assert params.stage_of("basic_setup", 1) == "train@basic_setup"
    assert params.stage_of("basic_setup", 3) == "seed_slow@basic_setup-3"
    assert params.stage_of("under_5k", 10) == "seed@under_5k-10"
    with pytest.raises(ParamsError, match=r"^seeds: variant basic_setup does not train seed 4; its seeds are 1, 2, 3$"):
        params.stage_of("basic_setup", 4)
    with pytest.raises(ParamsError, match=r"^variants\.nope: unknown variant"):
        params.seeds_of("nope")


def test_dvc_stages_are_exactly_the_runs_params_fix(repo_root, repo_stages):
    """dvc.yaml expands to one training stage per (variant, seed) of seeds_of, nothing more, and the
    run groups' stages to their params' lists: the matrix's cross products add no run."""
    params = load_params(repo_root / "params.yaml")
    names = set(repo_stages)
    training = {n for n in names if n.split("@")[0] in ("train", "seed", "seed_slow", "registered")}
    assert training == {params.stage_of(v, s) for v in params.variants for s in params.seeds_of(v)}
    assert {n for n in names if n.startswith("published_path@")} == {
        f"published_path@{v}-{s}" for v in params.published_path.variants for s in params.published_path.seeds}
    assert {n for n in names if n.startswith("confirm@")} == {f"confirm@{s}" for s in params.confirmation.seeds}
    assert {n for n in names if n.startswith("precision@")} == {f"precision@{s}" for s in params.precision.seeds}
    assert {n for n in names if n.startswith("compile_check@")} == {
        f"compile_check@{v}-{s}" for v in params.compile_check.variants for s in params.compile_check.seeds}


@pytest.mark.parametrize("mutate,expected", [
    (lambda r: r["seeds"]["slow"]["variants"].append("dropout"),
     "seeds.slow.variants: 'dropout' is also in seeds.variants; keep it in one"),
    (lambda r: r["seeds"].update(variants=["dropout", "dropout"]), "seeds.variants: ['dropout', 'dropout'] lists a variant twice"),
    (lambda r: r["seeds"].update(slow=3), "seeds.slow: expected a mapping with variants and extra"),
    (lambda r: r["seeds"]["slow"].update(extras=[2]), "seeds.slow.extras: unknown key"),
    (lambda r: r["published_path"].update(seeds=[1, 1]), "published_path.seeds: [1, 1] lists a seed twice"),
    (lambda r: r["published_path"].update(margin=0), "published_path.margin: must be a positive number"),
    (lambda r: r["published_path"].pop("margin"), "published_path.margin: missing"),
    (lambda r: r["published_path"].update(margin="0.15"), "published_path.margin: expected float"),
    (lambda r: r["confirmation"].update(seeds="101"), "confirmation.seeds: expected a list of integers"),
    (lambda r: r["confirmation"].update(min_final_test_mean=140), "confirmation.min_final_test_mean: must be"),
    (lambda r: r["confirmation"].update(criterion="mean"), "confirmation.criterion: unknown key"),
    (lambda r: r.pop("confirmation"), "confirmation: missing section"),
])
def test_run_groups_name_the_bad_key(raw, mutate, expected):
    msg = rejected(raw, mutate)
    assert msg.startswith(expected), msg


def test_run_groups_as_params_fix_them(repo_root):
    """The registered run groups as params.yaml fixes them (a change to one is a new decision: metrics/provenance.json dates it)."""
    params = load_params(repo_root / "params.yaml")
    assert params.published_path.variants == ("skeleton", "augmentation", "lr_scheduler")
    assert params.published_path.seeds == (1, 2, 3, 4, 5) and params.published_path.margin == 0.15
    assert params.confirmation.variant == "under_5k" and params.confirmation.seeds == tuple(range(101, 111))
    assert params.confirmation.min_final_test_mean == 99.40
    assert not set(params.confirmation.seeds) & set(params.seeds_of("under_5k"))  # never run before


def test_unknown_variant_key(raw):
    msg = rejected(raw, lambda r: r["variants"]["skeleton"].update(lrr=0.1))
    assert msg.startswith("variants.skeleton.lrr:") and "unknown key" in msg


def test_published_numbers_are_not_params(raw):
    """The published results live in reference/published.json; a leftover key is a typo."""
    msg = rejected(raw, lambda r: r["variants"]["dropout"].update(published={"best": 99.4}))
    assert msg.startswith("variants.dropout.published:") and "unknown key" in msg


def test_unknown_variant_name(repo_root):
    params = load_params(repo_root / "params.yaml")
    with pytest.raises(ParamsError, match=r"^variants\.lr_schedular: unknown variant.*lr_scheduler"):
        params.variant("lr_schedular")


@pytest.mark.parametrize("section", ["precision", "benchmark", "confirmation"])
def test_variant_of_a_section_must_exist(raw, section):
    msg = rejected(raw, lambda r: r[section].update(variant="nope"))
    assert msg.startswith(f"{section}.variant: 'nope' is not a variant; choose from basic_setup, ")


@pytest.mark.parametrize("section", ["seeds", "seeds.slow", "published_path"])
def test_variant_lists_name_variants(raw, section):
    def update(**changes):
        return lambda r: (r["seeds"]["slow"] if section == "seeds.slow" else r[section]).update(changes)
    msg = rejected(raw, update(variants=["skeleton", "nope"]))
    assert msg.startswith(f"{section}.variants: 'nope' is not a variant")
    msg = rejected(raw, update(variants="skeleton"))
    assert msg.startswith(f"{section}.variants: expected a list of variant names")


@pytest.mark.parametrize("key,value", [("epochs", 0), ("epochs", -2), ("batch_size", 0),
                                       ("batch_size", -128), ("eval_batch_size", 0)])
def test_non_positive_counts(raw, key, value):
    msg = rejected(raw, lambda r: r["train"].update({key: value}))
    assert msg.startswith(f"train.{key}:") and "positive" in msg


def test_negative_limit(raw):
    msg = rejected(raw, lambda r: r["train"].update(train_limit=-1))
    assert msg.startswith("train.train_limit:")


def test_unknown_schedule(raw):
    msg = rejected(raw, lambda r: r["variants"]["lr_scheduler"].update(schedule="cosine"))
    assert msg.startswith("variants.lr_scheduler.schedule:") and "cosine" in msg and "one_cycle" in msg


def test_unknown_model(raw):
    msg = rejected(raw, lambda r: r["variants"]["skeleton"].update(model="resnet"))
    assert msg.startswith("variants.skeleton.model:") and "resnet" in msg and "fc_after_gap" in msg


@pytest.mark.parametrize("path,value,expected", [
    (("variants", "basic_setup", "lr"), "0.01", "expected float"),
    (("train", "epochs"), 1.5, "expected int"),
    (("train", "batch_size"), True, "boolean"),
    (("variants", "augmentation", "augment"), "yes", "expected bool"),
    (("train", "sync_batchnorm"), 1, "expected bool"),
])
def test_wrong_type(raw, path, value, expected):
    def mutate(r):
        node = r
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    msg = rejected(raw, mutate)
    assert msg.startswith(".".join(path) + ":") and expected in msg


def test_int_is_accepted_where_float_is_expected(raw):
    ok = copy.deepcopy(raw)
    ok["variants"]["skeleton"]["lr"] = 1
    assert parse_params(ok).variant("skeleton").lr == 1.0


@pytest.mark.parametrize("key,value", [("lr", 0.0), ("momentum", 1.0), ("dropout", -0.1),
                                       ("weight_decay", -1e-4), ("weight_decay", 0.5), ("optimizer", "lbfgs")])
def test_out_of_range_variant_values(raw, key, value):
    msg = rejected(raw, lambda r: r["variants"]["dropout"].update({key: value}))
    assert msg.startswith(f"variants.dropout.{key}:")


@pytest.mark.parametrize("key,change", [
    ("variants", {"lr": 0.0}), ("variants", {"optimizer": "nesterov", "momentum": 0.0}),
    ("precision", {"mixed_precision": "no"}), ("benchmark", {"steps": -1}), ("benchmark", {"mixed_precision": "fp32"}),
])
def test_a_section_checks_itself_however_it_is_made(raw, key, change):
    """Each dataclass checks its own values as it is made (__post_init__): a copy made with
    dataclasses.replace, as tests and scripts make them, fails with parse_params's one-line error."""
    def mutate(r):
        (r["variants"]["dropout"] if key == "variants" else r[key]).update(change)
    expected = rejected(raw, mutate)
    made = parse_params(copy.deepcopy(raw))
    section = made.variant("dropout") if key == "variants" else getattr(made, key)
    with pytest.raises(ParamsError) as info:
        dataclasses.replace(section, **change)
    assert str(info.value) == expected and "\n" not in expected


def test_nesterov_needs_momentum(raw):
    msg = rejected(raw, lambda r: r["variants"]["dropout"].update(optimizer="nesterov", momentum=0.0))
    assert msg.startswith("variants.dropout.momentum:") and "Nesterov" in msg


@pytest.mark.parametrize("seeds,expected", [([1, 2], "must exclude train.seed"), ([2, 2], "lists a seed twice"),
                                            (["2"], "expected a list of integers"), (2, "expected a list")])
def test_extra_seeds_rejected(raw, seeds, expected):
    msg = rejected(raw, lambda r: r["seeds"].update(extra=seeds))
    assert msg.startswith("seeds.extra:") and expected in msg
    msg = rejected(raw, lambda r: r["seeds"]["slow"].update(extra=seeds))
    assert msg.startswith("seeds.slow.extra:") and expected in msg


@pytest.mark.parametrize("seeds", [[1, 1], [True], "1"])
def test_precision_seeds_rejected(raw, seeds):
    msg = rejected(raw, lambda r: r["precision"].update(seeds=seeds))
    assert msg.startswith("precision.seeds:")


@pytest.mark.parametrize("key", ["precision.mixed_precision", "benchmark.mixed_precision"])
@pytest.mark.parametrize("value", ["no", "fp32"])
def test_a_mixed_precision_to_compare_with_fp32_must_be_one(raw, key, value):
    section, name = key.split(".")
    msg = rejected(raw, lambda r: r[section].update({name: value}))
    assert msg.startswith(f"{key}: {value!r} is not a mixed precision") and "bf16, fp16" in msg


def test_benchmark_steps_zero_is_one_epoch_and_negative_is_rejected(raw):
    ok = copy.deepcopy(raw)
    ok["benchmark"]["steps"] = 0
    assert parse_params(ok).benchmark.steps == 0
    msg = rejected(raw, lambda r: r["benchmark"].update(steps=-1))
    assert msg.startswith("benchmark.steps: must be 0 (one whole epoch) or a positive count")


def test_holdout_must_leave_training_images(raw):
    msg = rejected(raw, lambda r: r["train"].update(train_limit=600, holdout=600))
    assert msg == "train.holdout: 600 held-out images leave none of the train.train_limit=600 to train on; lower it"
    ok = copy.deepcopy(raw)
    ok["train"].update(train_limit=600, holdout=100)
    assert parse_params(ok).train.holdout == 100


# --- launch: the flags dvc.yaml passes to `accelerate launch` ---------------------------------


def launch(raw, **changes) -> dict:
    return {**raw["launch"], **changes}


@pytest.mark.parametrize("changes,expected", [
    (dict(multi_gpu=False, num_processes=2), "launch.multi_gpu: must be true when launch.num_processes is 2"),
    (dict(multi_gpu=True, num_processes=1), "launch.multi_gpu: must be false when launch.num_processes is 1"),
    (dict(multi_gpu=True, num_processes=2, num_machines=2, main_process_port=0),
     "launch.main_process_port: 0 (a free port per node) cannot work on several machines"),
    (dict(multi_gpu=True, num_processes=3, num_machines=2, main_process_port=29500),
     "launch.num_processes: 3 processes do not split evenly over 2 machines"),
    (dict(num_machines=0), "launch.num_machines: must be at least 1"),
    (dict(main_process_port=70000), "launch.main_process_port: must be 0 (pick a free port) or a TCP port"),
    (dict(mixed_precision="fp8"), "launch.mixed_precision: unknown value 'fp8'"),
    (dict(mixed_precision=False), "launch.mixed_precision: expected str, got a boolean False"),  # a YAML false
])
def test_launch_rejected(raw, changes, expected):
    msg = rejected(raw, lambda r: r.update(launch=launch(r, **changes)))
    assert msg.startswith(expected), msg


def test_two_machines_with_a_fixed_port_are_accepted(raw):
    ok = copy.deepcopy(raw)
    ok["launch"] = launch(raw, multi_gpu=True, num_processes=16, num_machines=2, main_process_port=29500,
                          mixed_precision="bf16")
    assert parse_params(ok).launch.num_machines == 2


def running(processes: int, precision: str = "no"):
    """A stand-in for the Accelerator: what check_launch reads of the running job."""
    return types.SimpleNamespace(num_processes=processes, mixed_precision=precision)


TWO_ON_ONE = dict(multi_gpu=True, num_processes=2)  # params: two processes on one machine


@pytest.mark.parametrize("params,processes,per_node,precision,key,said,has", [
    ({}, 2, 2, "no", "num_processes", "1", "2"),                # params say one process
    (TWO_ON_ONE, 2, 1, "no", "num_machines", "1", "2"),         # one process per node: two machines
    (TWO_ON_ONE, 2, 2, "bf16", "mixed_precision", "'no'", "'bf16'"),
])
def test_check_launch_names_the_setting_that_differs(monkeypatch, params, processes, per_node, precision, key,
                                                     said, has):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(per_node))
    with pytest.raises(ParamsError) as info:
        check_launch(LaunchConfig(**params), running(processes, precision))
    assert str(info.value) == (f"launch.{key}: params.yaml says {said} but this run has {has}; launch with "
                               f"dvc.yaml's command (it passes params.yaml's launch flags) or change launch.{key}")


def test_check_launch_accepts_the_run_params_describe(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    check_launch(LaunchConfig(multi_gpu=True, num_processes=16, num_machines=2, main_process_port=29500,
                              mixed_precision="bf16"), running(16, "bf16"))


def test_load_params_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


@pytest.mark.parametrize("images,batch,processes", [(131, 128, 2), (256, 128, 2), (127, 128, 2), (130, 128, 2)])
def test_shares_with_an_image_for_every_process_are_accepted(images, batch, processes):
    check_shares(images, batch, processes)  # even or uneven splits, a short last batch: all fine


@pytest.mark.parametrize("images,batch,processes,smallest", [(129, 128, 2, 1), (1000, 2, 4, 2), (258, 128, 3, 2)])
def test_a_batch_with_fewer_images_than_processes_is_refused(images, batch, processes, smallest):
    with pytest.raises(ParamsError) as info:
        check_shares(images, batch, processes)
    assert str(info.value).startswith(
        f"train: an epoch of {images} images in batches of {batch} ends on a batch of {smallest}, fewer images "
        f"than the {processes} processes")


def test_train_cli_reports_params_error_in_one_line(tmp_path, raw, capsys, run_stage):
    """stages/train.py turns a ParamsError into `error: <key path>: ...` and exit code 1."""
    bad = copy.deepcopy(raw)
    bad["train"]["epoch"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SystemExit) as info:
        run_stage("train", ["skeleton", "--params", path, "--data", tmp_path])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and err.startswith("error: train.epoch: unknown key")


def test_params_rewritten_by_dvc_exp_run_still_load(repo_root, tmp_path):
    """`dvc exp run -S` rewrites params.yaml with ruamel (YAML 1.2), dropping the quotes of
    "no"; the loader must read what DVC wrote the way DVC reads it."""
    from ruamel.yaml import YAML

    text = (repo_root / "params.yaml").read_text().replace('"no"', "no").replace("lr: 0.015", "lr: 15e-3")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load_params(path)
    assert params.launch.mixed_precision == "no" and params.launch.dynamo_backend == "no"
    assert params.variant("lr_scheduler").lr == 0.015
    ruamel = YAML(typ="safe", pure=True).load(text)
    assert ruamel["launch"]["mixed_precision"] == "no" and ruamel["variants"]["lr_scheduler"]["lr"] == 0.015


def test_the_data_path_test_needs_seeds_its_variants_never_trained(raw):
    raw = copy.deepcopy(raw)
    raw["data_path_test"]["seeds"] = [raw["train"]["seed"]]
    with pytest.raises(ParamsError, match=rf"^data_path_test.seeds: seed {raw['train']['seed']} already trains "
                                          r"these variants' table runs; the test needs seeds never run before$"):
        parse_params(raw)
