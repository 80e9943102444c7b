"""Atomic outputs: all or nothing, with the permissions a plain write would give."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import types

import pytest
import torch

from mnist_repro.core.config import load_params
from mnist_repro.core.files import atomic_path, write_json
from mnist_repro.training.checkpoint import run_fingerprint
from mnist_repro.training.launch import cpu_threads_per_process


def test_write_json_is_readable_json_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"acc": 99.4})
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "m.json").read_text()) == {"acc": 99.4}
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"acc": 9')  # half written, then the crash
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_file(tmp_path):
    write_json(tmp_path / "m.json", {"acc": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "m.json") as tmp:
            tmp.write_text("{")
            raise RuntimeError("killed")
    assert json.loads((tmp_path / "m.json").read_text()) == {"acc": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_cpu_threads_share_the_cores(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_threads_per_process(0) == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))
    assert cpu_threads_per_process(0) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(4 * cores))
    assert cpu_threads_per_process(0) == 1
    assert cpu_threads_per_process(3) == 3


def test_thread_count_does_not_block_resume(repo_root):
    params = load_params(repo_root / "params.yaml")
    cfg, variant = params.train, params.variant("lr_scheduler")
    # What run_fingerprint reads of an Accelerator: the launch it runs under.
    fp32 = types.SimpleNamespace(num_processes=1, device=torch.device("cpu"), mixed_precision="no")
    bf16 = types.SimpleNamespace(num_processes=1, device=torch.device("cpu"), mixed_precision="bf16")
    more = dataclasses.replace(cfg, cpu_threads=7)
    assert run_fingerprint(cfg, variant, 1, fp32) == run_fingerprint(more, variant, 1, fp32)
    other = dataclasses.replace(cfg, epochs=cfg.epochs + 1)
    assert run_fingerprint(cfg, variant, 1, fp32) != run_fingerprint(other, variant, 1, fp32)
    assert run_fingerprint(cfg, variant, 1, fp32) != run_fingerprint(cfg, variant, 1, bf16)
