"""The report's section on a design search: what it tried, what each candidate scored on its
validation split, what one change at a time did, and which candidate params.yaml holds (none
while the searched design is no variant of params.yaml: not registered yet)."""

from __future__ import annotations

from ..core.config import Params
from .markdown import markdown_table

# Overrides every experiment of a search shares by construction; the tables leave them out.
SEARCH_FIXED = ("train.holdout", "train.cpu_threads")


def one_change_effects(record: dict) -> list[list]:
    """Pairs of candidates scored on the same validation split whose recipes differ in exactly one
    setting: [setting, from, to, split, mean from, mean to, difference], the largest effect first."""
    rows = []
    cands = record["candidates"]
    for i, a in enumerate(cands):
        for b in cands[i + 1:]:
            if a["validation_images"] != b["validation_images"]:
                continue
            changed = [k for k in a["recipe"] if a["recipe"][k] != b["recipe"].get(k)]
            if len(changed) != 1:
                continue
            lo, hi = sorted((a, b), key=lambda c: str(c["recipe"][changed[0]]))
            rows.append([changed[0], lo["recipe"][changed[0]], hi["recipe"][changed[0]],
                         f"{lo['validation_images']:,}", f"{lo['final_val_mean']:.3f}", f"{hi['final_val_mean']:.3f}",
                         f"{hi['final_val_mean'] - lo['final_val_mean']:+.3f}"])
    return sorted(rows, key=lambda r: -abs(float(r[-1])))


def search_section(name: str, record: dict, params: Params, test_uses: int = 0) -> list[str]:
    """test_uses: how many times the test set was used for this variant's design before its
    confirmation (research/test_set_uses.py's record). The experiments ran the record's stage
    (another variant's, for a design searched with its stage), its overrides keyed by that variant."""
    exps = record["experiments"]
    stage = record.get("stage", f"train@{name}")
    variant = params.variants.get(name)
    recipe = variant and {k: getattr(variant, k) for k in record["candidates"][0]["recipe"]}
    # the first match: a recipe scored on several splits is chosen on the largest, ranked first
    chosen = next((i for i, c in enumerate(record["candidates"]) if c["recipe"] == recipe), None)
    trained = " or ".join(f"{n:,}" for n in sorted({e["train_images"] for e in exps}))
    held = " or ".join(f"{n:,}" for n in sorted({e["validation_images"] for e in exps}))
    uses = (f"The test set was not used by the search itself, but {test_uses} earlier design"
            f"{'s were' if test_uses != 1 else ' was'} run on it before the confirmation (section "
            "\"Confirmation\"). " if test_uses else "")
    lines = [f"{len(exps)} experiments of `{stage}`, each trained on {trained} training images and scored "
             f"on the last {held} (`train.holdout`). {uses}Rule: {record['rule']}. "
             + (f"`params.yaml` has candidate {chosen + 1}." if chosen is not None else
                f"`params.yaml` has no variant `{name}`: the design is not registered yet "
                "(`registration.variants`)." if variant is None else
                "`params.yaml`'s entry matches no candidate: rerun the search or set one of them."), ""]
    rows, keyed = [], f"variants.{stage.split('@', 1)[-1]}."  # an override's key, less the stage variant's entry
    for i, c in enumerate(record["candidates"], 1):
        changed = ", ".join(f"`{k.removeprefix(keyed)}={v}`" for k, v in c["overrides"].items()
                            if k not in SEARCH_FIXED) or "(the baseline's entry)"
        rank = f"{i}{' (chosen)' if i - 1 == chosen else ''}" if c.get("within_budget", True) else "reference"
        rows.append([rank, c["model"], f"{c['params']:,}", changed, f"{c['validation_images']:,}",
                     ", ".join(map(str, c["seeds"])), f"{c['final_val_mean']:.3f}", f"{c['final_val_min']:.2f}"])
    lines += [markdown_table(["Rank", "Model", "Params", "Overrides", "Val. images", "Seeds", "Final val. mean",
                              "Final val. min"], rows, numeric={2, 4, 6, 7}), ""]
    effects = one_change_effects(record)
    if effects:
        lines += ["One change at a time: the candidates scored on the same split whose recipes differ in one "
                  "setting (final validation accuracy, mean over each candidate's seeds), the largest effect "
                  "first. What the search attributes to each setting is this table, nothing more.", "",
                  markdown_table(["Setting", "From", "To", "Val. images", "Mean (from)", "Mean (to)", "Difference"],
                                 effects, numeric={3, 4, 5, 6}), ""]
    lines += ["Every experiment (final and best validation accuracy, best epoch), with the command that ran it "
              "on its baseline commit:", ""]
    lines += [markdown_table(["Experiment", "Baseline", "Final val.", "Best val. (epoch)", "Command"],
                             [[e["experiment"], e["baseline"], f"{e['final_val_acc']:.2f}",
                               f"{e['best_val_acc']:.2f} ({e['best_val_epoch']})", f"`{e['command']}`"]
                              for e in exps], numeric={2})]
    return lines
