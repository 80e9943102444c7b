"""DVC stage compare: the comparison table, one metrics file per variant (`dvc metrics show --md`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnist_repro import cli
from mnist_repro.config import load_params
from mnist_repro.files import write_json
from mnist_repro.reference import load_reference
from mnist_repro.run_files import not_run_note, read_published_path, read_runs
from mnist_repro.table import published_values, table_file, table_row


def compare(params_path, reference_path, runs_dir, code_dir, out_dir) -> tuple[dict, dict]:
    """(path -> row of every variant, path -> how to run each one not run yet); reads all, writes nothing."""
    params = load_params(params_path)
    reference = load_reference(reference_path)
    runs = read_runs(params, runs_dir)
    code = read_published_path(params, code_dir)
    others = published_values(reference, params, "best")
    rows = {table_file(out_dir, params, name): table_row(runs[name], reference.get(name), others, code.get(name),
                                                         params.published_path.margin)
            for name in params.variants}
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
        print(not_run.get(path) or f"{path.stem}: n={row['n']}, best test mean {row['best']['mean']} "
              f"± {row['best']['pi']}, published {row['best']['pub']}: {row['best']['v']}; final test mean "
              f"{row['fin']['mean']} ± {row['fin']['pi']}, published {row['fin']['pub']}: {row['fin']['v']}")


if __name__ == "__main__":
    cli.run(main)
