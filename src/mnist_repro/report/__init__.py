"""The reproduction report: metrics/report.md, its figures and the long-form curves file, rendered from files.

Rendering only. The side-by-side numbers and verdicts are the compare stage's table
(metrics/table, what `dvc metrics show --md` prints), the statistics come from
stats.py, the published numbers and per-epoch logs from reference/published.json,
and the machine from the run files, so the report describes where the runs ran,
not where it is rendered. Nothing is typed by hand and nothing depends on the date,
so the same inputs give the same report.

inputs.py holds the stage's paths (ReportPaths, one field per stage flag) and reads
everything, git history included (mnist_repro.compare.provenance: when each decision was
fixed); one module per group of sections (verdicts, across, paths, confirmation, decisions,
search, epochs, machine); outputs.py writes the figures and curves; render.py assembles the
markdown; build.py is the stage's one call.
"""
