"""DVC stage compare: the comparison table, one metrics file per variant (`dvc metrics show --md`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_repro.core import cli
from mnist_repro.core.config import load_params
from mnist_repro.core.files import write_json
from mnist_repro.compare.reference import load_reference
from mnist_repro.compare.run_files import not_run_note, read_published_path, read_runs
from mnist_repro.compare.table import published_values, table_file, table_row


def compare(params_path, reference_path, runs_dir, published_path_dir, out_dir) -> tuple[dict, dict]:
    """(path -> row of every variant, path -> how to run each one not run yet); reads all, writes nothing."""
    params = load_params(params_path)
    reference = load_reference(reference_path)
    runs = read_runs(params, runs_dir)
    published_path = read_published_path(params, published_path_dir)
    others = published_values(reference, params, "best")
    rows = {table_file(out_dir, params, name): table_row(
        runs[name], reference.get(name), others, published_path.get(name), params.published_path.margin,
        params.registration if params.registered(name) else None) for name in params.variants}
    not_run = {table_file(out_dir, params, name): f"{name}: {not_run_note(params, runs_dir, name)}"
               for name in params.variants if not runs[name]}
    return rows, not_run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--reference", required=True, help="the published numbers (reference/published.json)")
    ap.add_argument("--runs", required=True, help="directory holding <variant>/seed_<s>.json run summaries")
    ap.add_argument("--published-path", required=True,
                    help="directory holding runs/<variant>/seed_<s>.json of the published-path reruns")
    ap.add_argument("--out", required=True, help="directory to write one <step>_<variant>.json row per variant into")
    args = ap.parse_args(argv)

    rows, not_run = compare(args.params, args.reference, args.runs, args.published_path, args.out)
    for stale in set(Path(args.out).glob("*.json")) - set(rows):  # a renamed or removed variant's old row
        stale.unlink()
    for path, row in rows.items():
        write_json(path, row)
    params = load_params(args.params)
    names = {table_file(args.out, params, name): name for name in params.variants}
    print("\n".join(console_table(rows, names, not_run)))


HEADER = ("variant", "n", "best test", "published", "verdict", "final test", "published", "verdict", "data path")
LEGEND = ("±: half-width of the 95% prediction interval for one more run of ours; blank: nothing to compare",
          "data path: ours against the notebooks' data path over the same seeds (equivalence test on best test)")


def console_table(rows: dict, names: dict, not_run: dict) -> list[str]:
    """The table as a person reads it after the stage (at most 120 columns): our mean ± the
    prediction interval's half-width, the published value and the verdict, for the best and
    the final epoch, and the data-path verdict; a cell with nothing to say is blank, a variant
    not run yet is a line saying how to run it. `dvc metrics show --md` prints every column."""
    def mean(cell):
        return f"{cell['mean']:.2f}" + (f" ± {cell['pi']:.2f}" if cell["pi"] is not None else "")

    def cells(path, row):
        published = [f"{row[m]['pub']:.2f}" if row[m]["pub"] is not None else "" for m in ("best", "fin")]
        return [names[path], str(row["n"]), mean(row["best"]), published[0], row["best"]["v"] or "",
                mean(row["fin"]), published[1], row["fin"]["v"] or "", row["pp"]["best"] or ""]

    table = [cells(path, row) for path, row in rows.items() if path not in not_run]
    widths = [max(len(r[i]) for r in [HEADER, *table]) for i in range(len(HEADER))]
    right = {1}  # n: a count, right-aligned

    def line(r):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    return [line(HEADER), *map(line, table), *(not_run[path] for path in rows if path in not_run), *LEGEND]


if __name__ == "__main__":
    cli.run(main)
