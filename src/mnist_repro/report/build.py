"""build_report: the report stage's one call (read every input, write every output)."""


from __future__ import annotations

from pathlib import Path

from ..core.files import write_json, write_text
from .inputs import ReportInputs, load_inputs
from .outputs import remove_stale, write_curves, write_figures
from .render import render_report


def build_report(*, params_path, reference_path, table_dir, runs_dir, history_dir, code_dir, errors_dir,
                 precision_dir, confirmation_dir, data_root, report_path, figures_dir, curves_path,
                 search_dir=None, provenance_path=None, compile_check_dir=None) -> str:
    """Read every input (any missing one stops it before a file is written), write the figures,
    the curves, the provenance record (when provenance_path is given) and the report; return the
    report's markdown."""
    inputs = load_inputs(params_path=params_path, reference_path=reference_path, table_dir=table_dir,
                         runs_dir=runs_dir, history_dir=history_dir, code_dir=code_dir, errors_dir=errors_dir,
                         precision_dir=precision_dir, confirmation_dir=confirmation_dir, search_dir=search_dir,
                         compile_check_dir=compile_check_dir)
    report_path, figures_dir = Path(report_path), Path(figures_dir)
    figures = write_figures(inputs, figures_dir, data_root)
    remove_stale(figures_dir, "*.png", figures.values())
    write_curves(inputs, Path(curves_path))
    if provenance_path is not None:
        write_json(provenance_path, inputs.provenance)
    sources = {"reference": Path(reference_path), "table": Path(table_dir), "runs": Path(runs_dir)}
    text = render_report(inputs, figures, report_path.parent, sources)
    write_text(report_path, text)
    return text
