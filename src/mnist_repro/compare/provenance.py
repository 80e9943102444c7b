"""When each decision behind the table was fixed, read from git history: metrics/provenance.json.

A decision is a value in params.yaml the table rests on: each run's seed, each variant's recipe
(`defaults` + `variants.<name>`, the model it names included), the published path's variants,
seeds and margin, the data-path test's variants, seeds and margin, the confirmation's variant,
seeds and criterion, the precision seeds, and a registration's (params.yaml `registration`, when
present) seeds and criterion, its variants' recipes and runs. For each, the record names the commit that fixed it and counts the test-set results that were
already committed then, so "decided before the results" is a fact the record states, not a
sentence someone wrote.

- **Fixed in**: the first commit where the value took its current form and kept it: the
  earliest commit C whose params.yaml gives the current value, and so does every commit
  between C and HEAD (its descendants that HEAD contains). A value changed and changed back
  is fixed where it came back. A value only the working tree holds is "not committed yet".
- **A test-set result**: a JSON run file under the results directory (metrics/; the per-epoch
  history files left aside) of one run (variant, seed, best and final test accuracy),
  evaluated on the test set (not a holdout), at any place the layout has kept run files
  (today metrics/runs/, metrics/published_path/, metrics/confirmation/, metrics/precision/;
  earlier a <variant>.json at the top, and consistency/ and published_code/ folders). Its data path is
  read from the path: published (published_*), confirmation, precision (mixed precision),
  else ours. Each new (data path, variant, seed, best, final) counts once, in the commit that
  first holds it; a rerun that changes the numbers is a new result, one that rewrites the
  same numbers is not.
- **Already committed then**: in an ancestor of the fixing commit, in the fixing commit itself,
  or in any commit of the history committed earlier (a branch's results were there to see).
- **Results that could have informed it** (`scope`): for a run's seed and a variant's recipe,
  the results of that variant (any data path, any seed); for `train.seed`, every result; for
  `seeds.*`, the results of the group's variants; for `published_path.*`, the results on the
  published data path; for `data_path_test.*`, the results of its variants (either path); for
  `confirmation.*` and `precision.*`, the results of their variant; for `registration.*`, the
  results of the registered variants (a registered variant's recipe and runs: of that variant, as
  any variant's). Separately, `own_results_before` counts the results of the runs the decision governs
  (a run's own result, the margin's own published-path runs ...).
- **Class**: `fixed before any result` when no result in scope was committed then, else
  `fixed after k results`.

Old layouts of params.yaml are read for what they planned: `consistency.{variant,extra_seeds}`
as extra seeds, `published_code.variants` and a `published_path` without `seeds` as
published-path runs of `train.seed`; a recipe setting an older file lacks is read as today's
`defaults` value (settings were added with the value that kept the old behaviour).

Without history (no git, a shallow clone, no commit, params.yaml outside the repository's
root) the record says so in one line and holds no decisions. Git is read with `git` in
subprocesses; everything after reading is a pure function of the history.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import yaml

from ..core.config import RECIPE_KEYS
from ..core.typed_yaml import Yaml12Loader

BEFORE = "fixed before any result"
NOT_COMMITTED = "not committed yet"
KINDS = ("ours", "published", "confirmation", "precision")  # data path of a run: the record's `kind`
RULE = ("A decision is fixed in the first commit where its params.yaml value took its current form and kept it "
        "up to HEAD. A test-set result is a committed run file evaluated on the test set (any layout it "
        "had under the results directory; histories aside), one per new (data path, variant, seed, best, final); "
        "it counts when committed in an ancestor of the fixing commit, in that commit, or earlier in time. "
        "It could have informed: a run's seed or a variant's recipe, when of that variant; train.seed, always; "
        "seeds.*, when of the group's variants; published_path.*, when on the published data path; "
        "data_path_test.*, when of its variants; confirmation.* and precision.*, when of their variant.")
# Added to RULE when params.yaml has a registration, so that a record without one reads as before.
RULE_REGISTRATION = (" The registration's settings (registration.*) could have been informed by results of its "
                     "variants.")
REGISTRATION_KEYS = ("seeds", "min_final_test_mean", "min_seeds_at")  # its decisions besides recipes and runs


def after(k: int) -> str:
    return f"fixed after {k} result{'s' if k != 1 else ''}"


# --- reading git -------------------------------------------------------------------------------

class NoHistory(Exception):
    """This checkout has no history to read; the message is the record's one line."""


def _git(root: Path, *args: str, stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], input=stdin, capture_output=True, text=True,
                              check=False)
    except OSError as exc:  # no git at all
        raise NoHistory(f"git cannot run here ({exc.strerror})") from exc
    if proc.returncode:
        raise NoHistory(f"git {args[0]} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    return proc.stdout


def _batch(root: Path, specs: list[str]) -> dict[str, str | None]:
    """`git cat-file --batch` of "<rev>:<path>" specs: spec -> text, None when missing."""
    if not specs:
        return {}
    proc = subprocess.run(["git", "-C", str(root), "cat-file", "--batch"], input="\n".join(specs).encode() + b"\n",
                          capture_output=True, check=False)
    if proc.returncode:
        raise NoHistory(f"git cat-file failed: {proc.stderr.decode(errors='replace').strip()}")
    out, pos, found = proc.stdout, 0, {}
    for spec in specs:
        end = out.index(b"\n", pos)
        header = out[pos:end].decode()
        pos = end + 1
        if header.endswith(" missing") or header.endswith(" ambiguous"):
            found[spec] = None
            continue
        size = int(header.rsplit(" ", 1)[1])
        found[spec] = out[pos:pos + size].decode(errors="replace")
        pos += size + 1
    return found


@dataclass(frozen=True)
class Result:
    kind: str
    variant: str
    seed: int
    best: float
    final: float
    commit: str
    time: int


@dataclass
class History:
    """The commits HEAD holds (parents, committer time), params.yaml at each, and every test-set result."""
    parents: dict                      # sha -> tuple of parent shas
    time: dict                         # sha -> committer time (unix seconds)
    date: dict                         # sha -> committer date (ISO 8601)
    order: list                        # shas, oldest first (topological)
    params: dict                       # sha -> params.yaml as a dict, None where absent or unreadable
    results: list = field(default_factory=list)
    _ancestry: dict = field(default_factory=dict, repr=False)

    def ancestors(self, sha: str) -> set:
        """sha and every commit it descends from."""
        if sha not in self._ancestry:
            seen, todo = set(), [sha]
            while todo:
                c = todo.pop()
                if c not in seen:
                    seen.add(c)
                    todo.extend(self.parents.get(c, ()))
            self._ancestry[sha] = seen
        return self._ancestry[sha]


def _load_yaml(text: str | None):
    if text is None:
        return None
    try:
        raw = yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError:
        return None
    return raw if isinstance(raw, dict) else None


def result_of(path: str, text: str | None, commit: str, time: int) -> Result | None:
    """The test-set result a committed file holds, or None (not a run file, or not on the test set)."""
    try:
        run = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None
    if not isinstance(run, dict) or run.get("evaluated_on", "test") != "test":
        return None
    variant, seed = run.get("variant"), run.get("seed")
    best, final = run.get("best_test_acc"), run.get("final_test_acc")
    if not isinstance(variant, str) or type(seed) is not int or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (best, final)):
        return None
    parts = PurePosixPath(path).parts
    kind = ("confirmation" if "confirmation" in parts else "precision" if "precision" in parts
            else "published" if any(p.startswith("published") for p in parts) else "ours")
    return Result(kind, variant, seed, float(best), float(final), commit, time)


def read_history(root: str | Path, params_rel: str = "params.yaml", results_rel: str = "metrics") -> History:
    """Everything the record needs from the repository at root (its top level); NoHistory says why not."""
    root = Path(root).resolve()
    if not (root / ".git").exists():
        raise NoHistory("the project's directory is not the top of a git repository (a tarball or a copy)")
    if _git(root, "rev-parse", "--is-shallow-repository").strip() == "true":
        raise NoHistory("this is a shallow clone: its history is cut off")
    try:
        _git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}")
    except NoHistory as exc:
        raise NoHistory("the repository has no commit yet") from exc
    parents, time, date, order = {}, {}, {}, []
    for line in _git(root, "log", "--topo-order", "--reverse", "--format=%H %ct %cI %P", "HEAD").splitlines():
        sha, ct, ci, *ps = line.split()
        parents[sha], time[sha], date[sha] = tuple(ps), int(ct), ci
        order.append(sha)
    blobs = _batch(root, [f"{c}:{params_rel}" for c in order])
    params = {c: _load_yaml(blobs[f"{c}:{params_rel}"]) for c in order}
    # every version of every JSON file under the results directory, oldest first (merges add nothing new)
    log = _git(root, "log", "--full-history", "--no-merges", "--topo-order", "--reverse", "--no-renames",
               "--diff-filter=AM", "--name-only", "--format=%x00%H", "HEAD", "--", results_rel)
    files = []
    for chunk in log.split("\0")[1:]:
        sha, *paths = chunk.strip().splitlines()
        files += [(sha, p) for p in paths if p.endswith(".json") and "history" not in PurePosixPath(p).parts]
    texts = _batch(root, [f"{c}:{p}" for c, p in files])
    seen, results = set(), []
    rank = {c: i for i, c in enumerate(order)}
    for c, p in sorted(files, key=lambda cp: (time[cp[0]], rank[cp[0]])):
        r = result_of(p, texts[f"{c}:{p}"], c, time[c])
        if r is not None and (key := (r.kind, r.variant, r.seed, r.best, r.final)) not in seen:
            seen.add(key)
            results.append(r)
    return History(parents, time, date, order, params, results)


# --- what params.yaml planned, in any layout ------------------------------------------------------

def _get(raw, dotted: str, default=None):
    for key in dotted.split("."):
        if not isinstance(raw, dict) or key not in raw:
            return default
        raw = raw[key]
    return raw


def _list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def planned_runs(raw: dict | None) -> set:
    """{(kind, variant, seed)} every run a params.yaml plans, in its own layout."""
    if not isinstance(raw, dict):
        return set()
    variants = _get(raw, "variants", {})
    variants = list(variants) if isinstance(variants, dict) else []
    seed = _get(raw, "train.seed")
    runs = {("ours", v, seed) for v in variants} if isinstance(seed, int) else set()
    for group in (_get(raw, "seeds"), _get(raw, "seeds.slow")):
        runs |= {("ours", v, s) for v in _list(_get(group, "variants")) for s in _list(_get(group, "extra"))}
    legacy = _get(raw, "consistency")  # the first layout: one variant's extra seeds
    runs |= {("ours", _get(legacy, "variant"), s) for s in _list(_get(legacy, "extra_seeds"))}
    for section in ("published_code", "published_path"):
        seeds = _get(raw, f"{section}.seeds", [seed])
        runs |= {("published", v, s) for v in _list(_get(raw, f"{section}.variants")) for s in _list(seeds)}
    for section, kind in (("confirmation", "confirmation"), ("precision", "precision")):
        runs |= {(kind, _get(raw, f"{section}.variant"), s) for s in _list(_get(raw, f"{section}.seeds"))}
    runs |= {(kind, v, s) for kind in ("ours", "published") for v in _list(_get(raw, "data_path_test.variants"))
             for s in _list(_get(raw, "data_path_test.seeds"))}
    runs |= {("ours", v, s) for v in registered(raw) for s in _list(_get(raw, "registration.seeds"))}
    return runs


def registered(raw: dict | None) -> list:
    """The registered variants' names a params.yaml holds (registration.variants), [] without one."""
    entries = _get(raw, "registration.variants", {})
    return list(entries) if isinstance(entries, dict) else []


RECIPE = ("model", *RECIPE_KEYS)


def recipe(raw: dict | None, name: str, fallback: dict) -> dict | None:
    """Variant `name`'s recipe in a params.yaml (its `defaults` merged in; a setting it lacks is
    fallback's, today's `defaults`), from `variants` or `registration.variants`; None when it has no
    such variant."""
    entry = _get(raw, f"variants.{name}")
    if not isinstance(entry, dict):
        entry = _get(raw, f"registration.variants.{name}")
    if not isinstance(entry, dict):
        return None
    defaults = _get(raw, "defaults", {})
    merged = {**fallback, **(defaults if isinstance(defaults, dict) else {}), **entry}
    return {k: merged.get(k) for k in RECIPE}


# --- the decisions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    id: str                                  # "run:ours/skeleton/7", "recipe:under_5k", "published_path.margin"
    what: str                                # what it is, for a reader
    value: object                            # its current value (JSON)
    holds: Callable[[dict | None], bool]     # does a params.yaml give the current value?
    scope: Callable[[Result], bool]          # could this result have informed it?
    own: Callable[[Result], bool]            # is this result one of the runs it governs?
    scope_text: str


def _same(dotted: str, value) -> Callable:
    return lambda raw: _get(raw, dotted) == value


def decisions(current: dict) -> list[Decision]:
    """Every decision behind the table, as the current params.yaml (a dict) holds it."""
    out = []
    fallback = _get(current, "defaults", {}) or {}
    variants = list(_get(current, "variants", {}) or {}) + registered(current)
    seed = _get(current, "train.seed")
    of = lambda names: lambda r: r.variant in names  # noqa: E731
    on_published = lambda r: r.kind == "published"  # noqa: E731

    out.append(Decision("train.seed", "the seed every variant's main run trains", seed, _same("train.seed", seed),
                        lambda r: True, lambda r: r.kind == "ours" and r.seed == seed, "every result"))
    for group, label in (("seeds", "the extra-seed group"), ("seeds.slow", "the slow group")):
        names, extra = _list(_get(current, f"{group}.variants")), _list(_get(current, f"{group}.extra"))
        for key, value in (("variants", names), ("extra", extra)):
            out.append(Decision(f"{group}.{key}", f"{label}'s {key}", value, _same(f"{group}.{key}", value), of(names),
                                lambda r, n=names, e=extra: r.kind == "ours" and r.variant in n and r.seed in e,
                                f"results of {', '.join(names) or 'no variant'}"))
    published_path = {k: _get(current, f"published_path.{k}") for k in ("variants", "seeds", "margin")}
    published_path_own = lambda r: (r.kind == "published"  # noqa: E731
                                    and r.variant in _list(published_path["variants"])
                                    and r.seed in _list(published_path["seeds"]))
    for key, what in (("variants", "the variants rerun on the published data path"),
                      ("seeds", "the published data path's seeds"), ("margin", "the equivalence margin (points)")):
        value = published_path[key]
        out.append(Decision(f"published_path.{key}", what, value, _same(f"published_path.{key}", value),
                            on_published, published_path_own, "results on the published data path"))
    test = {k: _get(current, f"data_path_test.{k}") for k in ("variants", "seeds", "margin")}
    test_variants = _list(test["variants"])
    for key, what in (("variants", "the data-path test's variants"), ("seeds", "the data-path test's seeds"),
                      ("margin", "the data-path test's margin (points)")):
        out.append(Decision(f"data_path_test.{key}", what, test[key], _same(f"data_path_test.{key}", test[key]),
                            of(test_variants),
                            lambda r: r.variant in test_variants and r.seed in _list(test["seeds"]),
                            f"results of {', '.join(test_variants) or 'no variant'}"))
    for section, kind, keys in (("confirmation", "confirmation", ("variant", "seeds", "min_final_test_mean")),
                                ("precision", "precision", ("variant", "mixed_precision", "seeds"))):
        name, seeds = _get(current, f"{section}.variant"), _list(_get(current, f"{section}.seeds"))
        for key in keys:
            value = _get(current, f"{section}.{key}")
            out.append(Decision(f"{section}.{key}", f"the {section}'s {key.replace('_', ' ')}", value,
                                _same(f"{section}.{key}", value), of([name]),
                                lambda r, k=kind, n=name, s=seeds: r.kind == k and r.variant == n and r.seed in s,
                                f"results of {name}"))
    names = registered(current)
    if names:
        seeds = _list(_get(current, "registration.seeds"))
        for key in REGISTRATION_KEYS:
            value = _get(current, f"registration.{key}")
            out.append(Decision(f"registration.{key}", f"the registration's {key.replace('_', ' ')}", value,
                                _same(f"registration.{key}", value), of(names),
                                lambda r: r.kind == "ours" and r.variant in names and r.seed in seeds,
                                f"results of {', '.join(names)}"))
    for name in variants:
        value = recipe(current, name, fallback)
        out.append(Decision(f"recipe:{name}", f"variants.{name} over defaults (model {value['model']})", value,
                            lambda raw, n=name, v=value: recipe(raw, n, fallback) == v, of([name]), of([name]),
                            f"results of {name}"))
    for kind, name, s in sorted(planned_runs(current), key=lambda r: (KINDS.index(r[0]), variants.index(r[1])
                                                                       if r[1] in variants else 99, r[2])):
        run = (kind, name, s)
        out.append(Decision(f"run:{kind}/{name}/{s}", f"{kind} run of {name}, seed {s}", s,
                            lambda raw, r=run: r in planned_runs(raw), of([name]),
                            lambda r, k=kind, n=name, sd=s: (r.kind, r.variant, r.seed) == (k, n, sd),
                            f"results of {name}"))
    return out


def fixed_at(history: History, holds: Callable[[dict | None], bool]) -> str | None:
    """The commit where the value took its current form and kept it up to HEAD; None if HEAD lacks it."""
    good = {c for c in history.order if holds(history.params[c])}
    bad = [c for c in history.order if c not in good]
    tainted = set()  # every commit with a descendant (or itself) that lacks the value
    todo = list(bad)
    while todo:
        c = todo.pop()
        if c not in tainted:
            tainted.add(c)
            todo.extend(history.parents.get(c, ()))
    valid = [c for c in history.order if c in good and c not in tainted]  # oldest first
    return min(valid, key=lambda c: history.time[c], default=None)


def committed_then(history: History, commit: str) -> list[Result]:
    """The results already committed when `commit` was: in it, an ancestor, or any earlier commit."""
    ancestry, t = history.ancestors(commit), history.time[commit]
    return [r for r in history.results if r.commit in ancestry or r.time < t]


def classify(history: History, decision: Decision) -> dict:
    """The record's entry for one decision."""
    entry = {"id": decision.id, "what": decision.what, "value": decision.value, "scope": decision.scope_text}
    commit = fixed_at(history, decision.holds)
    if commit is None:
        return {**entry, "commit": None, "date": None, "class": NOT_COMMITTED, "results_before": 0,
                "result_commits": [], "own_results_before": 0}
    then = committed_then(history, commit)
    informing = [r for r in then if decision.scope(r)]
    commits = [c for c in history.order if c in {r.commit for r in informing}]
    return {**entry, "commit": commit, "date": history.date[commit],
            "class": after(len(informing)) if informing else BEFORE, "results_before": len(informing),
            "result_commits": commits, "own_results_before": sum(decision.own(r) for r in then)}


def record_of(history: History | None, current: dict, why: str = "") -> dict:
    """metrics/provenance.json: every decision's entry, or one line saying why there is no history."""
    about = ("When each decision behind the table was fixed, and how many test-set results were committed then "
             "(mnist_repro.compare.provenance, from git history).")
    if history is None:
        return {"about": about, "history": f"no git history: {why}; when each decision was fixed cannot be read",
                "rule": RULE, "decisions": [], "summary": {}}
    entries = [classify(history, d) for d in decisions(current)]
    summary = {BEFORE: sum(e["class"] == BEFORE for e in entries),
               "fixed after results": sum(e["class"].startswith("fixed after") for e in entries),
               NOT_COMMITTED: sum(e["class"] == NOT_COMMITTED for e in entries)}
    rule = RULE + (RULE_REGISTRATION if registered(current) else "")
    return {"about": about, "history": "read from git", "rule": rule, "decisions": entries,
            "summary": {"decisions": len(entries), **summary}}


def build_record(params_path: str | Path, results_dir: str | Path) -> dict:
    """The record for the project whose params.yaml is params_path (the repository's top level)."""
    params_path = Path(params_path).resolve()
    root = params_path.parent
    current = _load_yaml(params_path.read_text()) or {}
    try:
        results_rel = Path(results_dir).resolve().relative_to(root).as_posix()
    except ValueError:
        return record_of(None, current, "the results directory is outside the project's directory")
    try:
        history = read_history(root, params_path.name, results_rel)
    except NoHistory as exc:
        return record_of(None, current, str(exc))
    return record_of(history, current)
