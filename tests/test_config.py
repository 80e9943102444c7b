"""params.yaml validation: every rejection names the key path that is wrong."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import types

import pytest
import yaml

from mnist_repro.config import Params, ParamsError, load_params, parse_params
from mnist_repro.train import run_training


@pytest.fixture(scope="module")
def raw(repo_root):
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def rejected(raw, mutate) -> str:
    bad = copy.deepcopy(raw)
    mutate(bad)
    with pytest.raises(ParamsError) as info:
        parse_params(bad)
    return str(info.value)


def test_repo_params_load(repo_root):
    params = load_params(repo_root / "params.yaml")
    assert isinstance(params, Params)
    assert params.train.epochs == 15 and params.train.batch_size == 128 and params.train.seed == 1
    assert len(params.variants) == 7
    assert params.variant("lr_scheduler").schedule == "one_cycle"
    assert isinstance(params.variant("basic_setup").lr, float)
    assert params.train.seed not in params.consistency.extra_seeds


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


def test_unknown_variant_key(raw):
    msg = rejected(raw, lambda r: r["variants"]["skeleton"].update(lrr=0.1))
    assert msg.startswith("variants.skeleton.lrr:") and "unknown key" in msg


def test_unknown_published_key(raw):
    msg = rejected(raw, lambda r: r["variants"]["dropout"]["published"].update(best=1))
    assert msg.startswith("variants.dropout.published.best:")


def test_unknown_variant_name(repo_root):
    params = load_params(repo_root / "params.yaml")
    with pytest.raises(ParamsError, match=r"^variants\.lr_schedular: unknown variant.*lr_scheduler"):
        params.variant("lr_schedular")


def test_consistency_variant_must_exist(raw):
    msg = rejected(raw, lambda r: r["consistency"].update(variant="nope"))
    assert msg.startswith("variants.nope:")


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


@pytest.mark.parametrize("key,value", [("lr", 0.0), ("momentum", 1.0), ("dropout", -0.1)])
def test_out_of_range_variant_values(raw, key, value):
    msg = rejected(raw, lambda r: r["variants"]["dropout"].update({key: value}))
    assert msg.startswith(f"variants.dropout.{key}:")


@pytest.mark.parametrize("seeds", [[1, 2], [2, 2], ["2"], 2])
def test_extra_seeds_rejected(raw, seeds):
    msg = rejected(raw, lambda r: r["consistency"].update(extra_seeds=seeds))
    assert msg.startswith("consistency.extra_seeds:")


def test_load_params_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_batch_not_divisible_by_processes_fails_before_any_work(repo_root, tmp_path):
    """run_training checks the global batch against the process count first thing.

    A stand-in accelerator with two processes is enough: the check must come
    before anything else is touched (no data is read: the data root is empty).
    The real two-process launch is in test_distributed.py.
    """
    params = load_params(repo_root / "params.yaml")
    cfg = dataclasses.replace(params.train, batch_size=127)
    fake = types.SimpleNamespace(num_processes=2)
    with pytest.raises(ParamsError, match=r"^train\.batch_size: 127 is not divisible by 2 processes"):
        run_training(params.variant("skeleton"), cfg, tmp_path / "no-data", accelerator=fake)


def test_train_cli_reports_params_error_in_one_line(repo_root, tmp_path, raw, capsys):
    """stages/train.py turns a ParamsError into `error: <key path>: ...` and exit code 1."""
    bad = copy.deepcopy(raw)
    bad["train"]["epoch"] = 3
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(bad))
    spec = importlib.util.spec_from_file_location("train_stage", repo_root / "stages" / "train.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    from mnist_repro import cli
    with pytest.raises(SystemExit) as info:
        cli.run(stage.main, ["skeleton", "--params", str(path), "--data", str(tmp_path)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and err.startswith("error: train.epoch: unknown key")
