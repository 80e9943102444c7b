"""The provenance record (mnist_repro.compare.provenance): when each decision was fixed and how many test-set
results were committed then, on small git histories made here, on a checkout without history, and on
this repository (the committed metrics/provenance.json is what its history gives); and no prose in
README, docs, params.yaml's comments or the report's templates says a decision was made "before" the
results, "pre-registered" or "without the test set" when the record classes it otherwise."""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from support.projects import REPO, git_init, sh

from mnist_repro.compare.provenance import BEFORE, NOT_COMMITTED, Result, build_record, decisions, planned_runs
from mnist_repro.report.decisions import provenance_section, seed_ranges, when

PARAMS = {"train": {"seed": 1}, "defaults": {"optimizer": "sgd", "lr": 0.01},
          "variants": {"a": {"model": "a", "target": "t"}, "b": {"model": "b", "lr": 0.02, "target": "t"}},
          "seeds": {"variants": ["a"], "extra": [2]},
          "published_path": {"variants": ["a"], "seeds": [1], "margin": 0.1},
          "confirmation": {"variant": "b", "seeds": [101], "min_final_test_mean": 99.0},
          "precision": {"variant": "a", "mixed_precision": "bf16", "seeds": [1]}}


class History:
    """A git repository at root whose commits get increasing, given times."""

    def __init__(self, root: Path):
        self.root, self.env, self.tick = root, {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}, 0
        root.mkdir(parents=True, exist_ok=True)
        git_init(root, self.env)

    def params(self, edit=None) -> None:
        raw = json.loads(json.dumps(PARAMS))
        if edit:
            edit(raw)
        (self.root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    def run(self, rel: str, variant: str, seed: int, best: float, final: float, **extra) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"variant": variant, "seed": seed, "best_test_acc": best, "final_test_acc": final,
                                    "test_images": 10000, **extra}))

    def commit(self, message: str) -> str:
        self.tick += 60
        stamp = f"2026-01-01T00:{self.tick // 60:02d}:00+00:00"
        env = {**self.env, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
        sh(["git", "add", "-A"], self.root, env)
        sh(["git", "commit", "-q", "--allow-empty", "-m", message], self.root, env)
        return self.head()

    def head(self) -> str:
        return sh(["git", "rev-parse", "HEAD"], self.root, self.env).stdout.strip()

    def git(self, *args) -> None:
        sh(["git", *args], self.root, self.env)

    def record(self) -> dict:
        return build_record(self.root / "params.yaml", self.root / "metrics")


def by_id(record: dict) -> dict:
    return {e["id"]: e for e in record["decisions"]}


def test_a_decision_before_its_results_and_one_after(tmp_path):
    h = History(tmp_path / "repo")
    h.params()                                                 # seeds 1, 2 of a: fixed before any result
    plan = h.commit("plan")
    h.run("metrics/runs/a/seed_1.json", "a", 1, 99.1, 99.0)
    h.run("metrics/runs/a/seed_2.json", "a", 2, 99.2, 99.1)
    results = h.commit("results of seeds 1 and 2")
    h.params(lambda p: p["seeds"].update(extra=[2, 3]))       # seed 3 added after them
    added = h.commit("add seed 3")
    h.run("metrics/runs/a/seed_3.json", "a", 3, 99.3, 99.2)
    h.commit("result of seed 3")

    d = by_id(h.record())
    for key in ("run:ours/a/1", "run:ours/a/2", "recipe:a", "train.seed"):
        assert (d[key]["commit"], d[key]["class"], d[key]["results_before"]) == (plan, BEFORE, 0), key
    assert (d["run:ours/a/3"]["commit"], d["run:ours/a/3"]["class"]) == (added, "fixed after 2 results")
    assert d["run:ours/a/3"]["result_commits"] == [results] and d["run:ours/a/3"]["own_results_before"] == 0
    assert (d["seeds.extra"]["commit"], d["seeds.extra"]["class"]) == (added, "fixed after 2 results")
    assert d["seeds.extra"]["own_results_before"] == 1          # seed 2's, one of the runs it governs
    # b's recipe and the confirmation count b's results only: none
    assert d["recipe:b"]["class"] == BEFORE and d["confirmation.seeds"]["class"] == BEFORE


def test_a_value_changed_and_changed_back_is_fixed_where_it_came_back(tmp_path):
    h = History(tmp_path / "repo")
    h.params()
    h.commit("margin 0.1")
    h.run("metrics/published_path/runs/a/seed_1.json", "a", 1, 99.0, 98.9)
    seen = h.commit("published-path result")
    h.params(lambda p: p["published_path"].update(margin=0.2))
    h.commit("margin 0.2")
    h.params()
    back = h.commit("margin 0.1 again")
    d = by_id(h.record())
    margin = d["published_path.margin"]
    assert (margin["commit"], margin["class"], margin["result_commits"]) == (back, "fixed after 1 result", [seen])
    assert margin["own_results_before"] == 1                    # a result of its own run (a, seed 1)
    assert d["published_path.seeds"]["class"] == BEFORE          # never changed: fixed in the first commit


def test_what_counts_as_a_result(tmp_path):
    """One result per new (data path, variant, seed, best, final), in any layout the run files had;
    a rewrite with the same numbers, a holdout run and a per-epoch history are not new results."""
    h = History(tmp_path / "repo")
    h.params(lambda p: p["seeds"].update(extra=[]))
    h.commit("plan: seed 1 only")
    h.run("metrics/a.json", "a", 1, 99.0, 98.9, wall_seconds=10)            # an old layout
    first = h.commit("seed 1")
    h.run("metrics/runs/a/seed_1.json", "a", 1, 99.0, 98.9, wall_seconds=12)  # moved, same numbers
    h.run("metrics/runs/a/seed_7.json", "a", 7, 98.0, 97.9, evaluated_on="holdout")
    (h.root / "metrics/history/a").mkdir(parents=True)
    (h.root / "metrics/history/a/seed_1.json").write_text(json.dumps([{"epoch": 1, "test_acc": 99.0}]))
    (h.root / "metrics/table").mkdir()
    (h.root / "metrics/table/1_a.json").write_text(json.dumps({"n": 1, "best": {"mean": 99.0}}))
    h.commit("same run in the new layout, a holdout run, a history, a table row")
    h.run("metrics/runs/a/seed_1.json", "a", 1, 99.1, 98.9)                  # rerun: new numbers
    rerun = h.commit("seed 1 rerun")
    h.run("metrics/consistency/seed_2.json", "b", 2, 99.5, 99.4)              # another variant
    h.run("metrics/precision/seed_1.json", "a", 1, 99.2, 99.0)                # mixed precision: a's result
    h.params()
    added = h.commit("seed 2 of a, and b's result")
    d = by_id(h.record())
    assert (d["run:ours/a/2"]["commit"], d["run:ours/a/2"]["class"]) == (added, "fixed after 3 results")
    assert d["run:ours/a/2"]["result_commits"] == [first, rerun, added]
    assert d["run:precision/a/1"]["class"] == BEFORE            # fixed in the first commit
    assert d["recipe:b"]["class"] == BEFORE                      # b's only result came after it


def test_results_committed_earlier_on_another_branch_count(tmp_path):
    h = History(tmp_path / "repo")
    h.params(lambda p: p["seeds"].update(extra=[]))
    h.commit("plan")
    h.git("checkout", "-q", "-b", "side")
    h.run("metrics/runs/a/seed_1.json", "a", 1, 99.0, 98.9)
    side = h.commit("a result on a branch")
    h.git("checkout", "-q", "main")
    h.params()
    added = h.commit("seed 2, on main, later than the branch's result")
    h.git("checkout", "-q", "side")
    h.run("metrics/runs/a/seed_3.json", "a", 3, 99.0, 98.9)
    h.commit("a result on the branch, later than seed 2")
    h.git("checkout", "-q", "main")
    h.git("merge", "-q", "--no-edit", "side")
    entry = by_id(h.record())["run:ours/a/2"]
    assert (entry["commit"], entry["result_commits"]) == (added, [side])  # not seed 3's later one


def test_a_value_only_the_working_tree_holds_is_not_committed_yet(tmp_path):
    h = History(tmp_path / "repo")
    h.params()
    h.commit("plan")
    h.params(lambda p: p["published_path"].update(margin=0.3))
    d = by_id(h.record())
    assert d["published_path.margin"]["class"] == NOT_COMMITTED and d["published_path.margin"]["commit"] is None
    assert d["published_path.seeds"]["class"] == BEFORE
    assert when(h.record(), "published_path.margin") == "its current value is not committed yet"


@pytest.mark.parametrize("how", ["copy", "empty", "shallow"])
def test_a_checkout_without_history_gets_one_line(tmp_path, how):
    h = History(tmp_path / "origin")
    h.params()
    h.commit("plan")
    h.run("metrics/runs/a/seed_1.json", "a", 1, 99.0, 98.9)
    h.commit("result")
    root = tmp_path / "checkout"
    if how == "shallow":
        sh(["git", "clone", "-q", "--depth", "1", f"file://{h.root}", root], tmp_path, h.env)
    else:
        root.mkdir()
        (root / "params.yaml").write_text((h.root / "params.yaml").read_text())
        if how == "empty":
            git_init(root, h.env)  # a repository with no commit
    record = build_record(root / "params.yaml", root / "metrics")
    assert record["decisions"] == [] and record["history"].startswith("no git history: ")
    assert "\n" not in record["history"]
    assert {"copy": "not the top of a git repository", "empty": "no commit", "shallow": "shallow clone"}[how] \
        in record["history"]
    section = provenance_section(record)
    assert len(section) == 1 and section[0].startswith("No git history: ")
    assert when(record, "published_path.margin").startswith("not known here")


def test_a_params_file_in_a_subdirectory_of_a_repository_is_not_read_as_its_history(tmp_path):
    h = History(tmp_path / "repo")
    (h.root / "project").mkdir()
    h.params()
    (h.root / "project/params.yaml").write_text((h.root / "params.yaml").read_text())
    h.commit("plan")
    record = build_record(h.root / "project/params.yaml", h.root / "project/metrics")
    assert record["decisions"] == [] and "directory is not the top of a git repository" in record["history"]


def test_the_section_names_each_class_and_commit(tmp_path):
    h = History(tmp_path / "repo")
    h.params()
    plan = h.commit("plan")
    h.run("metrics/runs/a/seed_1.json", "a", 1, 99.1, 99.0)
    results = h.commit("seed 1")
    h.params(lambda p: p["seeds"].update(extra=[2, 3, 4]))
    added = h.commit("seeds 3, 4")
    record = h.record()
    text = "\n".join(provenance_section(record))
    s = record["summary"]
    assert s[BEFORE] + s["fixed after results"] + s[NOT_COMMITTED] == s["decisions"] == len(record["decisions"])
    assert f"of {s['decisions']} decisions behind the table, {s[BEFORE]} are `{BEFORE}`" in text
    # a's seeds 3 and 4 share their commit and class: one row
    assert (f"| ours | `a` | 3, 4 | `{added[:7]}` (2026-01-01) | fixed after 1 result | 1 | `{results[:7]}` | 0 |"
            in text)
    assert f"| ours | `a` | 1, 2 | `{plan[:7]}` (2026-01-01) | {BEFORE} | 0 | – | 0 |" in text
    assert f"| `published_path.margin` | 0.1 | `{plan[:7]}` (2026-01-01) | {BEFORE} | 0 | – | 0 |" in text
    assert when(record, "seeds.extra") == (f"fixed after 1 result (results of a; commit `{added[:7]}` (2026-01-01); "
                                           "none of the runs it governs had a committed result)")
    assert seed_ranges([1, 2, 3, 5, 7, 8]) == "1–3, 5, 7, 8"


def test_the_committed_record_is_what_git_history_gives():
    """metrics/provenance.json is the report stage's record of this repository (`dvc repro report` writes it)."""
    record = build_record(REPO / "params.yaml", REPO / "metrics")
    if not record["decisions"]:
        pytest.skip(f"this checkout has no history to read: {record['history']}")
    committed = json.loads((REPO / "metrics/provenance.json").read_text())
    assert committed == json.loads(json.dumps(record)), \
        "metrics/provenance.json is stale: commit params.yaml, then `dvc repro report` rewrites it"


# --- no sentence about when a decision was made contradicts the record -------------------------------

# Phrases that say when a decision was made relative to the results (outside `code spans`).
TIMING = re.compile(r"pre-?regist\w*|without (?:looking at )?the test set|never run before|no seed is added|"
                    r"(?:fixed|set|chosen|written|committed|registered|decided) (?:in advance|beforehand)|"
                    r"\bbefore (?:any |the |these |those |its |their |that )?(?:of (?:its|their|the|these) )?"
                    r"(?:own )?(?:test-set )?(?:runs?|results?|seeds?)\b|"
                    r"(?:chosen|designed|selected|picked) on (?:a|the) validation split", re.IGNORECASE)
# A claim about the decision's own runs only ("before these runs"); any other claim is about every result
# that could have informed it.
OWN = re.compile(r"before (?:any of )?(?:these|those|its|their|that)(?: own)? runs?\b|never run before",
                 re.IGNORECASE)
PROSE = ("README.md", "docs/*.md", "params.yaml", "dvc.yaml", "research/README.md")


def sentences(path: Path) -> list[str]:
    """The prose of a file in sentences: markdown paragraphs (a table row on its own), params.yaml's comments."""
    text = path.read_text()
    if path.suffix == ".yaml":
        text = "\n\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)
    units = []
    for block in re.split(r"\n\s*\n", text):
        rows = [line for line in block.splitlines() if line.lstrip().startswith("|")]
        units += rows
        rest = " ".join(line.strip() for line in block.splitlines() if not line.lstrip().startswith("|"))
        units += re.split(r"(?<=[.;:!?])\s+(?=[A-Z`*(\[])", rest)
    return [u for u in units if u.strip()]


def template_strings() -> list[tuple[str, str]]:
    """(file, string) for every string constant in the report's templates and stage."""
    found = []
    for path in sorted((REPO / "src/mnist_repro/report").glob("*.py")) + [REPO / "stages/report.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append((path.relative_to(REPO).as_posix(), node.value))
    return found


def decisions_named(sentence: str, record: dict) -> list[dict]:
    """The decisions a sentence names in `code spans`: an id (`published_path.margin`), a section
    (`confirmation`: all of its decisions and runs), or a variant's entry (`variants.under_5k`: its recipe)."""
    named = []
    for span in re.findall(r"`([^`]+)`", sentence):
        span = span.removeprefix("params.yaml ").strip()
        section = {"confirmation": "run:confirmation/", "precision": "run:precision/",
                   "published_path": "run:published/"}.get(span, "\0")
        named += [e for e in record["decisions"]
                  if e["id"] == span or e["id"].startswith(span + ".") or e["id"].startswith(section)
                  or (span.startswith("variants.") and e["id"] == "recipe:" + span.removeprefix("variants."))]
    return named


def without_code(sentence: str) -> str:
    return re.sub(r"`[^`]*`", "", sentence)


def contradicts(claim: str, entry: dict) -> bool:
    """Does the record contradict a timing claim about this decision? A claim about its own runs
    ("before these runs") needs none of their results committed then; any other claim ("before the
    results", "pre-registered", "without the test set") needs the class `fixed before any result`."""
    return bool(entry["own_results_before"]) if OWN.search(claim) else entry["class"] != BEFORE


def test_no_prose_says_before_for_a_decision_the_record_classes_otherwise():
    record = json.loads((REPO / "metrics/provenance.json").read_text())
    if not record["decisions"]:
        pytest.skip("the committed record has no history")
    problems = []
    for pattern in PROSE:
        for path in sorted(REPO.glob(pattern)):
            for sentence in sentences(path):
                rel = path.relative_to(REPO).as_posix()
                for claim in TIMING.finditer(without_code(sentence)):
                    named = decisions_named(sentence, record)
                    if not named:
                        problems.append(f"{rel}: '{claim[0]}' names no decision (a params key in `code`) the "
                                        f"record holds: {sentence.strip()[:200]}")
                    for e in named:
                        if contradicts(claim[0], e):
                            problems.append(f"{rel}: '{claim[0]}' about `{e['id']}`, which the record classes "
                                            f"{e['class']} ({e['own_results_before']} of its own runs' results "
                                            f"then; commit {str(e['commit'])[:7]}): {sentence.strip()[:200]}")
    assert not problems, "\n".join(problems)


def test_the_report_templates_leave_timing_to_the_record():
    """The report says when a decision was made only through the record (report/decisions.py's `when`)."""
    found = [(rel, TIMING.search(without_code(s))[0], s[:120]) for rel, s in template_strings()
             if TIMING.search(without_code(s))]
    assert not found, found


@pytest.mark.parametrize("sentence, broken", [
    ("The margin `published_path.margin` was set before these runs.", True),        # 4 of its own results then
    ("Seeds `confirmation.seeds` were committed before any of its own runs.", False),  # none of its own then
    ("The `confirmation` was pre-registered.", True),                                # after 10 results
    ("Each variant trains `train.seed`, fixed before any result.", False),
    ("Seeds were fixed before the runs.", True),                                     # names no decision
    ("The `confirmation` was pre-registered: seeds never run before.", True),        # the first claim fails
    ("Committed outputs persist (DVC does not delete them before the command runs).", None),  # not a claim
])
def test_the_prose_check_itself(sentence, broken):
    """The check above on sentences with a known verdict (None: no timing claim), against a record of the
    shape the repository has."""
    record = {"decisions": [
        {"id": "published_path.margin", "class": "fixed after 7 results", "own_results_before": 4, "commit": "x"},
        {"id": "confirmation.seeds", "class": "fixed after 10 results", "own_results_before": 0, "commit": "x"},
        {"id": "run:confirmation/u/101", "class": "fixed after 10 results", "own_results_before": 0, "commit": "x"},
        {"id": "train.seed", "class": BEFORE, "own_results_before": 0, "commit": "x"}]}
    claims = [m[0] for m in TIMING.finditer(without_code(sentence))]
    if broken is None:
        assert not claims
        return
    named = decisions_named(sentence, record)
    assert claims and (not named or any(contradicts(c, e) for c in claims for e in named)) == broken


def test_the_prose_files_exist():
    assert all(list(REPO.glob(p)) for p in PROSE)


def test_the_data_path_test_is_a_decision_with_its_own_runs():
    """Its variants, seeds and margin are decisions; its runs on both paths are planned runs, its own."""
    current = {"train": {"seed": 1}, "variants": {"a": {}, "b": {}},
               "data_path_test": {"variants": ["a"], "seeds": [201, 202], "margin": 0.1}}
    assert {("ours", "a", 201), ("published", "a", 202)} <= planned_runs(current)
    by_id = {d.id: d for d in decisions(current)}
    seeds = by_id["data_path_test.seeds"]
    result = lambda kind, variant, seed: Result(kind, variant, seed, 99.0, 99.0, "c", 0)  # noqa: E731
    assert seeds.own(result("published", "a", 201)) and not seeds.own(result("ours", "a", 1))
    assert seeds.scope(result("ours", "a", 1)) and not seeds.scope(result("ours", "b", 201))


# --- a registration (params.yaml `registration`, issue 32) ---------------------------------------------

REGISTRATION = {"variants": {"r": {"model": "r", "lr": 0.03, "target": "t"}}, "seeds": [301, 302],
                "min_final_test_mean": 99.0, "min_seeds_at": 1}
REGISTERED = ("registration.seeds", "registration.min_final_test_mean", "registration.min_seeds_at", "recipe:r",
              "run:ours/r/301", "run:ours/r/302")


def test_a_registration_committed_before_any_result_of_its_variant(tmp_path):
    h = History(tmp_path / "repo")
    h.params()
    h.commit("plan")
    h.run("metrics/runs/a/seed_1.json", "a", 1, 99.1, 99.0)           # another variant's result: out of scope
    h.commit("a's result")
    h.params(lambda p: p.update(registration=REGISTRATION))
    registered = h.commit("register r")
    h.run("metrics/runs/r/seed_301.json", "r", 301, 99.2, 99.1)
    h.commit("r's first registered run")
    record = h.record()
    d = by_id(record)
    for key in REGISTERED:
        assert (d[key]["commit"], d[key]["class"], d[key]["own_results_before"]) == (registered, BEFORE, 0), key
    assert d["registration.min_seeds_at"]["value"] == 1 and d["recipe:r"]["value"]["lr"] == 0.03
    assert d["registration.seeds"]["scope"] == "results of r"
    assert ("ours", "r", 302) in planned_runs(json.loads(json.dumps({**PARAMS, "registration": REGISTRATION})))
    assert record["rule"].endswith("registration.*) could have been informed by results of its variants.")
    assert when(record, "registration.seeds").startswith(f"{BEFORE} (results of r; commit `{registered[:7]}`")


def test_a_registration_committed_after_a_result_of_its_variant(tmp_path):
    h = History(tmp_path / "repo")
    h.params()
    h.commit("plan")
    h.run("metrics/runs/r/seed_7.json", "r", 7, 99.3, 99.2)           # r on the test set, outside any plan
    seen = h.commit("a look at r on the test set")
    h.params(lambda p: p.update(registration=REGISTRATION))
    registered = h.commit("register r")
    d = by_id(h.record())
    for key in REGISTERED:
        entry = d[key]
        assert (entry["commit"], entry["class"], entry["result_commits"]) == (registered, "fixed after 1 result",
                                                                                [seen]), key
        # seed 7 is none of its runs; a recipe governs every run of its variant
        assert entry["own_results_before"] == (key == "recipe:r"), key


def test_a_record_without_a_registration_has_the_rule_as_before(tmp_path):
    from mnist_repro.compare.provenance import RULE

    h = History(tmp_path / "repo")
    h.params()
    h.commit("plan")
    record = h.record()
    assert record["rule"] == RULE and not any(e["id"].startswith("registration.") for e in record["decisions"])
