"""The speed levers on real code: train.compile stops with one line naming itself where inductor
cannot compile (no C++ compiler, a device it has no backend for), train.keep_freed_memory
changes no number, a compiled run trains and says so in its run file; the compile_check
params and the report's section comparing the compiled path with eager (synthetic run files)."""

from __future__ import annotations

import json

import pytest
import torch
from support.processes import ONE_THREAD, error_lines, run_cmd, train_cmd, without_timing
from torch._inductor import config as inductor

from mnist_repro.training import speed
from mnist_repro.core.config import parse_params
from mnist_repro.core.errors import InputFileError, ParamsError
from mnist_repro.report.compile_check import compile_check_section, expected_power, read_compile_check
from mnist_repro.compare.run_files import RUN_KEYS
from mnist_repro.compare.stats import welch

NO_COMPILER = (None, "no-such-c++")  # inductor's compiler search: conda's gcc (off unless asked), then $CXX
COMPILER_LINE = ("error: train.compile: inductor compiles C++ kernels on a CPU and finds no C++ compiler (g++, "
                 "or the one $CXX names); install what is missing, or set train.compile: false to train eagerly "
                 "(docs/speed.md)")


def test_no_compiler_stops_a_compiled_run_with_one_line(tmp_path, quick_params, mnist_root, run_stage, capsys):
    params = quick_params(tmp_path, overrides={"train.compile": True, **ONE_THREAD})
    with inductor.patch({"cpp.cxx": NO_COMPILER}), pytest.raises(SystemExit) as stop:
        run_stage("train", ["skeleton", "--params", params, "--data", mnist_root,
                            "--metrics", tmp_path / "metrics.json"])
    assert stop.value.code == 1
    assert capsys.readouterr().err.splitlines() == [COMPILER_LINE]
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_no_compiler_on_the_path_of_a_real_launch(tmp_path, quick_params, mnist_root, cli_env):
    """The same through dvc.yaml's launcher, the compiler named by $CXX missing."""
    params = quick_params(tmp_path, overrides={"train.compile": True, **ONE_THREAD})
    proc = run_cmd(train_cmd("skeleton", params, mnist_root, tmp_path / "out"), {**cli_env, "CXX": NO_COMPILER[1]})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [COMPILER_LINE] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_a_device_without_an_inductor_backend_is_named():
    with pytest.raises(ParamsError) as info:
        speed.check_compile(torch.device("meta"))
    assert str(info.value) == ("train.compile: torch.compile's inductor backend generates no code for meta devices; "
                               "install what is missing, or set train.compile: false to train eagerly "
                               "(docs/speed.md)")
    assert speed.compile_problem(torch.device("cpu")) is None  # g++ is here


@pytest.mark.slow
def test_kept_memory_changes_no_number_and_a_compiled_run_says_so(tmp_path, quick_params, mnist_root, cli_env):
    """lr_scheduler (BatchNorm, dropout, augmentation, OneCycleLR), 2 epochs on 500 images: glibc's
    default allocator and the kept one give the same history and weights, bit for bit; the
    compiled path trains too (finite, its loss falling as eager's does, the same again on a rerun)
    and each run file records its settings."""
    runs = {}
    for name, overrides in (("kept", {}), ("default_malloc", {"train.keep_freed_memory": False}),
                            ("compiled", {"train.compile": True}), ("compiled_again", {"train.compile": True})):
        params = quick_params(tmp_path / f"{name}.yaml", epochs=2, train_limit=500,
                              overrides={**ONE_THREAD, **overrides})
        out = tmp_path / name
        proc = run_cmd(train_cmd("lr_scheduler", params, mnist_root, out, launch=False), cli_env)  # the stage alone
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = {"metrics": json.loads((out / "metrics.json").read_text()),
                      "history": json.loads((out / "history.json").read_text()),
                      "weights": torch.load(out / "model.pt")}
    kept, plain, compiled = runs["kept"], runs["default_malloc"], runs["compiled"]
    assert without_timing(kept["history"]) == without_timing(plain["history"])
    assert kept["weights"].keys() == plain["weights"].keys()
    assert all(torch.equal(kept["weights"][k], plain["weights"][k]) for k in kept["weights"])
    assert (kept["metrics"]["keep_freed_memory"], plain["metrics"]["keep_freed_memory"]) == (True, False)
    assert (kept["metrics"]["compile"], compiled["metrics"]["compile"]) == (False, True)
    assert all(torch.isfinite(torch.tensor([h["train_loss"], h["test_loss"]])).all() for h in compiled["history"])
    # it learns as eager does: the same initial weights and batches, its own dropout and augmentation draws
    assert without_timing(compiled["history"]) == without_timing(runs["compiled_again"]["history"])  # reproducible
    losses = [h["train_loss"] for h in compiled["history"]]
    assert losses[1] < losses[0]
    assert all(abs(a - h["train_loss"]) < 0.1 for a, h in zip(losses, kept["history"]))


# --- compile_check: params, and the report's section on synthetic run files ------------------

def raw_params(repo_root) -> dict:
    import yaml

    return yaml.safe_load((repo_root / "params.yaml").read_text())


def test_compile_check_params_name_their_key(repo_root):
    raw = raw_params(repo_root)
    raw["compile_check"]["variants"] = ["lr_scheduler", "no_such_variant"]
    with pytest.raises(ParamsError, match=r"^compile_check\.variants: 'no_such_variant' is not a variant"):
        parse_params(raw)
    raw = raw_params(repo_root)
    raw["compile_check"]["margin"] = 0
    with pytest.raises(ParamsError, match=r"^compile_check\.margin: must be a positive"):
        parse_params(raw)


SEEDS = (1, 2, 3, 4)
# best, final test accuracy per seed: the main runs and the compiled runs of skeleton
MAIN = {1: (98.9, 98.8), 2: (99.0, 98.7), 3: (98.8, 98.9), 4: (99.1, 99.0)}
CHECK = {1: (98.95, 98.8), 2: (99.05, 98.75), 3: (98.85, 98.95), 4: (99.05, 98.95)}


def run_file(seed: int, best: float, final: float, compiled: bool) -> dict:
    base = {k: 0 for k in RUN_KEYS}
    return {**base, "variant": "skeleton", "seed": seed, "best_test_acc": best, "final_test_acc": final,
            "epochs": 2, "compile": compiled}


@pytest.fixture
def check_setup(repo_root, tmp_path):
    raw = raw_params(repo_root)
    raw["compile_check"].update(variants=["skeleton"], seeds=list(SEEDS), margin=0.15)
    params = parse_params(raw)
    root = tmp_path / "compile_check"
    for s, (best, final) in CHECK.items():
        for kind, data in (("runs", run_file(s, best, final, True)), ("history", [{"epoch": 1}, {"epoch": 2}])):
            (root / kind / "skeleton").mkdir(parents=True, exist_ok=True)
            (root / kind / "skeleton" / f"seed_{s}.json").write_text(json.dumps(data))
    main = {"skeleton": [run_file(s, *MAIN.get(s, (99.0, 99.0)), False) for s in params.seeds_of("skeleton")]}
    return params, root, main


def test_the_section_states_the_verdict_of_each_metric(check_setup):
    params, root, main = check_setup
    checks = read_compile_check(params, root)
    assert [c["metrics"]["seed"] for c in checks["skeleton"]] == list(SEEDS)
    lines = compile_check_section(params, main, checks, lambda name: "not run")
    rows = [row for line in lines for row in line.split("\n") if row.startswith("| skeleton")]
    assert len(rows) == 2
    for row, i in zip(rows, (0, 1)):
        diff = welch([CHECK[s][i] for s in SEEDS], [MAIN[s][i] for s in SEEDS])  # compiled − eager, same seeds
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == f"{diff.diff:+.2f}" and cells[7] == diff.equivalence(0.15)
        ups = sum(CHECK[s][i] > MAIN[s][i] for s in SEEDS)
        downs = sum(CHECK[s][i] < MAIN[s][i] for s in SEEDS)
        assert cells[9].startswith(f"{ups}/{downs}, p ")
    assert "compiled − eager" in lines[0] and "`compile_check.margin`" in lines[0]


def test_a_partly_run_check_is_an_error_and_none_is_not_run_yet(check_setup):
    params, root, main = check_setup
    (root / "runs" / "skeleton" / "seed_3.json").unlink()
    with pytest.raises(InputFileError, match=r"seed_3\.json: missing, while 3 of 4 seeds .* compile_check@skeleton-3"):
        read_compile_check(params, root)
    for s in (1, 2, 4):
        (root / "runs" / "skeleton" / f"seed_{s}.json").unlink()
    assert read_compile_check(params, root) == {}
    lines = compile_check_section(params, main, {}, lambda name: "not run")
    assert lines[-1] == "- `skeleton`: not run yet: `dvc repro compile_check@skeleton-1` ... `compile_check@skeleton-4`"


def test_a_seed_no_main_run_shares_is_named(check_setup, repo_root):
    params, root, main = check_setup
    raw = raw_params(repo_root)
    raw["compile_check"].update(variants=["skeleton"], seeds=[1, 99], margin=0.15)
    lines = compile_check_section(parse_params(raw), main, {}, lambda name: "not run")
    assert lines[-1] == ("- `skeleton`: seed 99 of `compile_check.seeds` is not one of its seeds (`seeds:`), "
                         "so no main run shares it")


def test_a_run_of_the_wrong_path_is_stale(check_setup):
    params, root, _ = check_setup
    path = root / "runs" / "skeleton" / "seed_2.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "compile": False}))
    with pytest.raises(InputFileError, match=r"holds \{'compile': False\}, expected \{'compile': True\}: it is stale"):
        read_compile_check(params, root)


def test_power_grows_with_seeds_and_shrinks_with_spread():
    half5, power5 = expected_power(5, 0.1, 0.15)
    half10, power10 = expected_power(10, 0.1, 0.15)
    assert half10 < half5 and power10 > power5
    assert expected_power(10, 1.0, 0.15)[1] == 0  # the CI alone is wider than the margin


@pytest.mark.slow
def test_the_gpu_smoke_script_runs_on_a_cpu_saying_what_it_skips(cli_env):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: run research/gpu_smoke.sh itself, it measures")
    proc = run_cmd(["bash", "research/gpu_smoke.sh", "--variants", "skeleton", "lr_scheduler"], cli_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("GPU parts skipped: no CUDA GPU here")
    rows = [line.split() for line in lines if line.startswith(("skeleton ", "lr_scheduler "))]
    assert [(r[0], r[1], r[-1]) for r in rows] == [("skeleton", "eager", "ok"), ("lr_scheduler", "eager", "ok")]
    assert lines[-1] == "every path trained"
