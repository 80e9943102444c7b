"""The published numbers, read from reference/published.json and nowhere else.

The file holds the write-up's results table (params, best train, best test per
variant, with where each came from) and the per-epoch logs its notebooks printed.
Both are data about one run elsewhere, so they live beside the code rather than in
params.yaml: no setting here changes a run. A variant without an entry simply has
no published numbers (an eighth variant, say); a malformed entry is one line naming
the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import InputFileError
from .run_files import read_input

TABLE_KEYS = {"params": int, "best_train": float, "best_test": float}
LOG_KEYS = ("epoch", "train_acc", "test_loss", "test_acc")


@dataclass(frozen=True)
class PublishedRun:
    """One variant's published run: the table's numbers and the notebook's per-epoch log."""
    name: str
    params: int
    best_train: float   # as the table prints it, typos included (the log shows them)
    best_test: float
    notebook: str
    log: tuple          # per-epoch dicts: epoch, train_acc, test_loss, test_acc, ...

    @property
    def log_best_test(self) -> dict:
        """The log's epoch with the highest test accuracy (the first, on a tie, as ours)."""
        return max(self.log, key=lambda e: e["test_acc"])

    @property
    def log_best(self) -> float:
        """The log's best test accuracy: the published best test, from one source (the log)."""
        return self.log_best_test["test_acc"]

    @property
    def log_final_test(self) -> float:
        return self.log[-1]["test_acc"]

    @property
    def log_best_train(self) -> float:
        return max(e["train_acc"] for e in self.log)


@dataclass(frozen=True)
class Reference:
    target_acc: float       # the write-up's goal, percent test accuracy
    table_source: str
    log_source: str
    runs: dict              # variant name -> PublishedRun

    def get(self, name: str) -> PublishedRun | None:
        return self.runs.get(name)


def _number(value, kind, key: str, path: Path):
    ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or (kind is float and not 0 <= value <= 100):
        want = "an integer" if kind is int else "a percentage in [0, 100]"
        raise InputFileError(f"{path}: {key}: expected {want}, got {value!r}")
    return value


def _log(entries, key: str, path: Path) -> tuple:
    if not isinstance(entries, list) or not entries:
        raise InputFileError(f"{path}: {key}: expected a non-empty list of per-epoch entries")
    for i, entry in enumerate(entries):
        missing = [k for k in LOG_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            raise InputFileError(f"{path}: {key}[{i}]: lacks {', '.join(missing)}")
        if entry["epoch"] != i + 1:
            raise InputFileError(f"{path}: {key}[{i}]: epoch {entry['epoch']!r}, expected {i + 1} (epochs in order)")
        _number(entry["test_acc"], float, f"{key}[{i}].test_acc", path)
    return tuple(entries)


def parse_reference(raw, path: Path) -> Reference:
    if not isinstance(raw, dict):
        raise InputFileError(f"{path}: expected a JSON object")
    for key in ("target", "table_source", "table", "log_source", "logs"):
        if key not in raw:
            raise InputFileError(f"{path}: {key}: missing")
    table, logs = raw["table"], raw["logs"]
    if not isinstance(table, dict) or not isinstance(logs, dict) or set(table) != set(logs):
        # A table row without its log (or the reverse) could not be checked against it.
        raise InputFileError(f"{path}: table and logs must be objects naming the same variants "
                             f"(table: {sorted(table) if isinstance(table, dict) else table!r}, "
                             f"logs: {sorted(logs) if isinstance(logs, dict) else logs!r})")
    runs = {}
    for name, row in table.items():
        if not isinstance(row, dict):
            raise InputFileError(f"{path}: table.{name}: expected an object")
        values = {}
        for key, kind in TABLE_KEYS.items():
            if key not in row:
                raise InputFileError(f"{path}: table.{name}.{key}: missing")
            values[key] = _number(row[key], kind, f"table.{name}.{key}", path)
        runs[name] = PublishedRun(name=name, notebook=str(row.get("notebook", "")),
                                  log=_log(logs[name], f"logs.{name}", path), **values)
    target = raw["target"]
    if not isinstance(target, dict) or "test_acc" not in target:
        raise InputFileError(f"{path}: target.test_acc: missing")
    return Reference(target_acc=_number(target["test_acc"], float, "target.test_acc", path),
                     table_source=str(raw["table_source"]), log_source=str(raw["log_source"]), runs=runs)


def load_reference(path: str | Path) -> Reference:
    path = Path(path)
    return parse_reference(read_input(path, f"it is committed with the repository (git checkout -- {path})"), path)
