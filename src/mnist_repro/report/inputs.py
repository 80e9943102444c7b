"""Everything the report reads, read once and checked (any missing input stops it before a file is written)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.config import Params, VariantConfig, load_params
from .precision import read_precision_runs
from ..compare.provenance import build_record
from ..compare.reference import Reference, load_reference
from ..compare.run_files import (read_confirmation, read_errors, read_histories, read_published_path, read_runs,
                         read_searches, read_test_set_uses)
from ..compare.table import read_table
from .compile_check import read_compile_check


@dataclass
class ReportInputs:
    params: Params
    reference: Reference
    table: dict      # variant -> its comparison-table row (table.table_row)
    runs: dict       # variant -> its configured runs' summaries, train.seed first; [] if not run yet
    histories: dict  # variant -> per-seed histories, in the order of runs
    code: dict       # variant -> [{"metrics", "history"}] of its published-path reruns; absent if not run
    errors: dict | None  # the last variant's misclassified test images; None if it is not run yet
    precision: list  # per precision seed: its mixed-precision and fp32 runs (precision.read_precision_runs)
    confirmation: list = field(default_factory=list)  # [{"metrics", "history"}] per confirmation seed; [] not run
    searches: dict = field(default_factory=dict)      # variant -> its design search's record
    test_set_uses: list = field(default_factory=list)  # earlier uses of the test set (run_files.read_test_set_uses)
    provenance: dict = field(default_factory=dict)     # when each decision was fixed (provenance.build_record)
    compile_check: dict = field(default_factory=dict)  # variant -> its compile_check@ runs; absent if not run

    @property
    def final_variant(self) -> VariantConfig:
        """The drill-down's last step; its misclassified digits are shown."""
        return list(self.params.variants.values())[-1]

    @property
    def ran(self) -> dict:
        """variant -> its runs, for the variants that have any."""
        return {name: runs for name, runs in self.runs.items() if runs}

    @property
    def not_run(self) -> list[str]:
        return [name for name, runs in self.runs.items() if not runs]

    def how_to_run(self, name: str) -> str:
        """What a table shows in place of a variant's numbers while it is not run."""
        return f"not run yet: `dvc repro {self.params.stage_of(name, self.params.train.seed)}`"


def load_inputs(*, params_path, reference_path, table_dir, runs_dir, history_dir, code_dir, errors_dir,
                precision_dir, confirmation_dir, search_dir=None, compile_check_dir=None) -> ReportInputs:
    params = load_params(params_path)
    runs = read_runs(params, runs_dir)
    return ReportInputs(params=params, reference=load_reference(reference_path),
                        table=read_table(params, table_dir, runs),
                        runs=runs, histories=read_histories(params, history_dir, runs),
                        code=read_published_path(params, code_dir),
                        errors=read_errors(params, errors_dir, list(params.variants)[-1], runs),
                        precision=read_precision_runs(params, precision_dir, runs_dir),
                        confirmation=read_confirmation(params, confirmation_dir),
                        searches=read_searches(params, search_dir) if search_dir else {},
                        test_set_uses=read_test_set_uses(search_dir) if search_dir else [],
                        provenance=build_record(params_path, Path(runs_dir).parent),
                        compile_check=read_compile_check(params, compile_check_dir) if compile_check_dir else {})
