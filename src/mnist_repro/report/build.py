"""build_report: the report stage's one call (read every input, write every output)."""


from __future__ import annotations

from ..core.files import write_json, write_text
from .inputs import ReportPaths, load_inputs
from .outputs import remove_stale, write_curves, write_figures
from .render import render_report


def build_report(paths: ReportPaths) -> str:
    """Read every input (any missing one stops it before a file is written), write the figures,
    the curves, the provenance record (when paths.provenance is given) and the report; return the
    report's markdown."""
    inputs = load_inputs(paths)
    figures = write_figures(inputs, paths.figures, paths.data)
    remove_stale(paths.figures, "*.png", figures.values())
    write_curves(inputs, paths.curves)
    if paths.provenance is not None:
        write_json(paths.provenance, inputs.provenance)
    sources = {"reference": paths.reference, "table": paths.table, "runs": paths.runs}
    text = render_report(inputs, figures, paths.out.parent, sources)
    write_text(paths.out, text)
    return text
