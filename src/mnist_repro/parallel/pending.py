"""Under plain `dvc repro`: one line as each training stage starts, with the training runs the
pipeline still has pending, their time one after another on this kind of machine, and the faster ways.

DVC runs every stage command with ``DVC_STAGE`` (the stage's name) and ``DVC_ROOT`` (the project
root) in its environment (https://dvc.org/doc/user-guide/env; DVC 3.67's
``dvc/stage/run.py:prepare_kwargs``). It tells a stage nothing of what else its `dvc repro` will
run, and `dvc status` cannot run inside a stage (DVC holds a write lock on the running stage's
outputs; docs/pipeline.md), so this module reads what DVC documents instead: dvc.yaml,
params.yaml and dvc.lock (https://dvc.org/doc/user-guide/project-structure/dvcyaml-files), without
DVC's Python internals, as the matrix does.

**An estimate of DVC's own status, not DVC's answer.** A training stage
(estimate.stage_recipes) counts as pending when

- dvc.lock has no entry for it;
- one of its dvc.yaml deps is not in its entry, is missing, or is a file whose MD5 differs from
  the entry's (DVC 3 records ``hash: md5``, the MD5 of the file's bytes);
- one of its dvc.yaml params is not in its entry or has another value in params.yaml
  (read as YAML 1.2, as DVC reads it);
- one of its outputs is missing, or is a file whose MD5 differs from the entry's.

It does not see a change to a stage's command alone (DVC's "changed command": dvc.yaml's cmd is
not rendered here), a cached output missing only from DVC's cache, the contents of a directory
dep or output (present counts as unchanged; the training stages have none), or a stage DVC
would restore from its run cache rather than run. The stage that is starting always counts
(under `dvc repro --force` it may be up to date). dvc.lock is rewritten after each stage, so
the line at each start is the count and time left at that point, across the pipeline; no
"run k of n", since a stage does not know what the `dvc repro` that started it began with.
Nothing here may stop training: any failure to read or estimate prints nothing.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from ..core.config import load_params
from ..core.typed_yaml import Yaml12Loader
from ..training.summary import SLOT_ENV
from .estimate import Estimator, committed_runs, duration, model_of, stage_recipes

WIDTH = 120                 # the line's most columns
# The faster ways, each named in full where the line has room, else shorter (README: "Run the
# matrix in parallel", "Run one variant by hand"): with other runs pending, the matrix, one
# variant's stage and a quick look; for the last one, the quick look only.
FASTER = ("python -m mnist_repro.parallel.matrix run, dvc repro train@<variant>, stages/train.py <variant> --quick",
          "parallel.matrix run, dvc repro train@<variant>, train.py <variant> --quick",
          "parallel.matrix run, dvc repro train@<variant>, --quick",
          "matrix run, dvc repro train@<variant>, --quick",
          "matrix, train@<variant>, --quick",
          "matrix, train@<v>, --quick")
LOOK = ("stages/train.py <variant> --quick (a look, not a result)", "train.py <variant> --quick", "--quick")
INTERPOLATION = re.compile(r"(?<!\\)\$\{\s*([^}\s]+)\s*\}")


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Yaml12Loader's YAML 1.2 scalars on libyaml's parser where PyYAML has it: dvc.lock runs to
    ~13,000 lines, read about 3x faster than with the pure-Python parser."""


_Loader.yaml_implicit_resolvers = Yaml12Loader.yaml_implicit_resolvers


def read_yaml(path: Path):
    with open(path) as f:
        return yaml.load(f, Loader=_Loader)


def lookup(context: Mapping, dotted: str):
    node = context
    for key in dotted.split("."):
        node = node[key]
    return node


def interpolate(text: str, context: Mapping) -> str:
    """``${a.b}`` replaced by its value in context (dvc.yaml's templating, for paths and params keys)."""
    return INTERPOLATION.sub(lambda m: _to_str(lookup(context, m[1])), text)


def _to_str(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _resolve(value, context: Mapping):
    """A matrix/foreach value: a ``${...}`` reference (a mapping gives its keys) or a literal list."""
    if isinstance(value, str):
        match = INTERPOLATION.fullmatch(value.strip())
        value = lookup(context, match[1]) if match else value
    return list(value) if isinstance(value, Mapping) else value


def generated(stages: Mapping, context: Mapping) -> dict[str, tuple[dict, dict]]:
    """{stage name: (its definition, its ``item``)} for dvc.yaml's stages, each matrix and foreach
    group expanded as DVC names its stages (``group@value-value``)."""
    found = {}
    for group, definition in stages.items():
        if "matrix" in definition:
            axes = {key: _resolve(values, context) for key, values in definition["matrix"].items()}
            for combo in itertools.product(*(enumerate(values) for values in axes.values())):
                key = "-".join(f"{axis}{i}" if isinstance(v, (Mapping, list)) else _to_str(v)
                               for axis, (i, v) in zip(axes, combo))
                found[f"{group}@{key}"] = (definition, {axis: v for axis, (_, v) in zip(axes, combo)})
        elif "foreach" in definition:
            items = definition["foreach"]
            items = lookup(context, INTERPOLATION.fullmatch(items.strip())[1]) if isinstance(items, str) else items
            pairs = items.items() if isinstance(items, Mapping) else ((_to_str(v), v) for v in items)
            for key, item in pairs:
                found[f"{group}@{key}"] = (definition.get("do", {}), item)
        else:
            found[group] = (definition, {})
    return found


def _paths(entries) -> list[str]:
    """dvc.yaml's deps or outs: each a path, or a one-key mapping {path: options}."""
    return [next(iter(e)) if isinstance(e, Mapping) else e for e in entries or ()]


class Status:
    """Whether each stage of one project is pending, dvc.lock against the workspace (see above);
    each file hashed once."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.raw = read_yaml(self.root / "params.yaml")
        self.stages = generated(read_yaml(self.root / "dvc.yaml").get("stages", {}), self.raw)
        lock_path = self.root / "dvc.lock"
        self.lock = (read_yaml(lock_path) or {}).get("stages", {}) if lock_path.exists() else {}
        self.params_files = {"params.yaml": self.raw}
        self._md5: dict[str, str | None] = {}

    def md5(self, rel: str) -> str | None:
        """The MD5 of a file's bytes; "" for a directory (not hashed), None when missing."""
        if rel not in self._md5:
            path = self.root / rel
            if path.is_dir():
                self._md5[rel] = ""
            elif path.is_file():
                self._md5[rel] = hashlib.md5(path.read_bytes()).hexdigest()
            else:
                self._md5[rel] = None
        return self._md5[rel]

    def _changed_files(self, paths: list[str], recorded: list) -> bool:
        lock = {entry["path"]: entry.get("md5") for entry in recorded or ()}
        for rel in paths:
            now = self.md5(rel)
            if rel not in lock or now is None or (now and now != lock[rel]):
                return True
        return False

    def _changed_params(self, entries, recorded: Mapping, context: Mapping) -> bool:
        for entry in entries or ():
            for file, keys in (entry.items() if isinstance(entry, Mapping) else [("params.yaml", [entry])]):
                if file not in self.params_files:
                    self.params_files[file] = read_yaml(self.root / file)
                now, then = self.params_files[file], (recorded or {}).get(file)
                if then is None:
                    return True
                if keys is None:            # `file:` alone: every key in it
                    if now != then:
                        return True
                    continue
                for key in (keys if isinstance(keys, list) else [keys]):
                    key = interpolate(key, context)
                    try:
                        if key not in then or lookup(now, key) != then[key]:
                            return True
                    except (KeyError, TypeError):
                        return True
        return False

    def pending(self, name: str) -> bool:
        definition, item = self.stages[name]
        entry = self.lock.get(name)
        if entry is None:
            return True
        context = {**self.raw, "item": item}
        deps = [interpolate(p, context) for p in _paths(definition.get("deps"))]
        outs = [interpolate(p, context) for p in _paths(definition.get("outs"))]
        return (self._changed_files(deps, entry.get("deps"))
                or self._changed_params(definition.get("params"), entry.get("params"), context)
                or self._changed_files(outs, entry.get("outs")))


def pending_runs(root: Path, params=None) -> list[str]:
    """The training stages (estimate.stage_recipes) that count as pending in root, in recipe order."""
    params = params or load_params(Path(root) / "params.yaml")
    status = Status(root)
    return [name for name in stage_recipes(params) if status.pending(name)]


def line(root: Path, stage: str, here: str) -> str | None:
    """The line for training stage `stage` starting on device `here` (a run file's device_name);
    None when `stage` is not a training stage of root's params.yaml."""
    params = load_params(Path(root) / "params.yaml")
    recipes = stage_recipes(params)
    if stage not in recipes:
        return None
    todo = [name for name in pending_runs(root, params) if name != stage] + [stage]
    estimator = Estimator(committed_runs(root), params, here)
    found = {name: estimator(recipes[name]) for name in todo}
    known = [e for e in found.values() if e]
    runs = f"{len(todo)} training run{'s' if len(todo) > 1 else ''} pending ({'this one too' if len(todo) > 1 else 'this one'})"
    if not known:
        heads = [[f"{runs}, untimed (no committed run like {'them' if len(todo) > 1 else 'it'})"]]
    else:
        devices = [e.device for e in known]
        device = max(set(devices), key=devices.count)
        took = duration(sum(e.seconds for e in known))
        unknown = f" ({len(todo) - len(known)} untimed)" if len(known) < len(todo) else ""
        wheres = (["here"] if set(devices) == {here} else
                  [f"on {device}", f"on {model_of(device)}", "elsewhere"])   # a long name last
        heads = [[f"{runs}: ~{took} {serial} {where}{unknown}" for serial in ("one after another", "serially")]
                 for where in wheres]
    ways = FASTER if len(todo) > 1 else LOOK
    for choices in heads:       # the device's full name first, then the longest faster ways that fit
        for faster in ways:
            for head in choices:
                if len(text := f"{head}; faster: {faster}") <= WIDTH:
                    return text
    return f"{heads[-1][-1]}; faster: {ways[-1]}"[:WIDTH]


def this_device(cpu: bool) -> str:
    """The device_name this stage's run file will record: the GPU Accelerate trains this process
    on where CUDA is available (unless `cpu`), else the CPU model and this process's cores."""
    import torch

    from ..training.launch import describe_device

    if not cpu and torch.cuda.is_available():
        return describe_device(torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))))
    return describe_device(torch.device("cpu"))


def announce(*, cpu: bool = False) -> None:
    """Print the line when DVC runs this stage (``DVC_STAGE``), once per run (global rank 0, as
    mnist_repro.core.cli speaks), and not in the matrix's slots (``MNIST_REPRO_SLOT``: the
    matrix says its own plan). Never raises: whatever goes wrong, nothing is printed."""
    stage = os.environ.get("DVC_STAGE")
    if not stage or os.environ.get("RANK", "0") != "0" or os.environ.get(SLOT_ENV):
        return
    try:
        text = line(Path(os.environ.get("DVC_ROOT", ".")), stage, this_device(cpu))
    except Exception:    # an estimate must never stop a training run
        return
    if text:
        print(text, flush=True)
