"""Where the report reads and writes (ReportPaths), and everything it reads, read once and checked (any
missing input stops it before a file is written)."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

from ..core.config import Params, VariantConfig, load_params
from .precision import read_precision_runs
from ..compare.provenance import build_record
from ..compare.reference import Reference, load_reference
from ..compare.run_files import (read_confirmation, read_data_path_power, read_data_path_test, read_errors,
                                 read_histories, read_published_path, read_runs, read_searches, read_test_set_uses)
from ..compare.table import read_table
from .compile_check import read_compile_check


def _flag(help: str, default=MISSING):
    """A ReportPaths field: its help is the stage flag's; a field without a default is a required flag."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ReportPaths:
    """The report stage's input and output paths, one field per flag of stages/report.py (--published-path is
    published_path): a new input is a field here and its read in load_inputs. None: an optional input not given."""
    reference: Path = _flag("the published numbers and logs (reference/published.json)")
    table: Path = _flag("the compare stage's directory of per-variant rows")
    runs: Path = _flag("directory holding <variant>/seed_<s>.json run summaries")
    history: Path = _flag("directory holding <variant>/seed_<s>.json per-epoch histories")
    published_path: Path = _flag("directory holding runs/ and history/ of the published-path reruns")
    confirmation: Path = _flag("directory holding runs/ and history/ of the confirmation runs (confirm@<seed>)")
    data_path_test: Path = _flag("directory holding ours/ and published/, each with runs/ and history/, of the "
                                 "confirmatory data-path test (data_path_ours@ and data_path_published@)")
    errors: Path = _flag("directory holding <variant>.json misclassified test images")
    precision: Path = _flag("directory holding the precision@<seed> runs' seed_<s>.json")
    data: Path = _flag("root holding MNIST/raw (the test images drawn)")
    out: Path = _flag("write the markdown report here")
    figures: Path = _flag("write the PNG figures into this directory")
    curves: Path = _flag("write the long-form curves (dvc plots) to this JSON file")
    params: Path = _flag("the project's params.yaml", Path("params.yaml"))
    search: Path | None = _flag("directory holding <variant>.json design-search records (research/search.py) "
                                "and test_set_uses.json (research/test_set_uses.py)", None)
    compile_check: Path | None = _flag("directory holding runs/ and history/ of the compile_check@ runs", None)
    data_path_power: Path | None = _flag("the data-path test's planned power (research/data_path_power.json)", None)
    provenance: Path | None = _flag("write the provenance record (when each decision was fixed, read from git "
                                    "history) to this JSON file", None)

    @classmethod
    def add_arguments(cls, ap: argparse.ArgumentParser) -> None:
        """One flag per field: --<name with dashes>, required unless the field has a default."""
        for f in fields(cls):
            required = f.default is MISSING
            ap.add_argument("--" + f.name.replace("_", "-"), required=required,
                            default=None if required else f.default, help=f.metadata["help"])

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReportPaths:
        return cls(**{f.name: None if (value := getattr(args, f.name)) is None else Path(value)
                      for f in fields(cls)})


@dataclass
class ReportInputs:
    params: Params
    reference: Reference
    table: dict      # variant -> its comparison-table row (table.table_row)
    runs: dict       # variant -> its configured runs' summaries, train.seed first; [] if not run yet
    histories: dict  # variant -> per-seed histories, in the order of runs
    published_path: dict  # variant -> [{"metrics", "history"}] of its published-path reruns; absent if not run
    errors: dict | None  # the last variant's misclassified test images; None if it is not run yet
    precision: list  # per precision seed: its mixed-precision and fp32 runs (precision.read_precision_runs)
    confirmation: list = field(default_factory=list)  # [{"metrics", "history"}] per confirmation seed; [] not run
    searches: dict = field(default_factory=dict)      # variant -> its design search's record
    test_set_uses: list = field(default_factory=list)  # earlier uses of the test set (run_files.read_test_set_uses)
    provenance: dict = field(default_factory=dict)     # when each decision was fixed (provenance.build_record)
    compile_check: dict = field(default_factory=dict)  # variant -> its compile_check@ runs; absent if not run
    data_path_test: dict = field(default_factory=dict)  # "ours"/"published" -> variant -> the runs in so far
    data_path_power: dict | None = None  # the data-path test's planned power; None: not given

    @property
    def final_variant(self) -> VariantConfig:
        """The drill-down's last step; its misclassified digits are shown."""
        return self.params.variants[last_step(self.params)]

    @property
    def ran(self) -> dict:
        """variant -> its runs, for the variants that have any."""
        return {name: runs for name, runs in self.runs.items() if runs}

    @property
    def not_run(self) -> list[str]:
        return [name for name, runs in self.runs.items() if not runs]

    def repro(self, name: str) -> str:
        """What `dvc repro` runs a variant not run yet: its main run's stage, or a registered variant's
        group of stages (its seeds run together)."""
        return "registered" if self.params.registered(name) else self.params.stage_of(name, self.params.train.seed)

    def how_to_run(self, name: str) -> str:
        """What a table shows in place of a variant's numbers while it is not run."""
        return f"not run yet: `dvc repro {self.repro(name)}`"


def last_step(params: Params) -> str:
    """The drill-down's last variant (registered variants come after it, and their stages write no
    misclassified images)."""
    return [name for name in params.variants if not params.registered(name)][-1]


def load_inputs(paths: ReportPaths) -> ReportInputs:
    params = load_params(paths.params)
    runs = read_runs(params, paths.runs)
    return ReportInputs(params=params, reference=load_reference(paths.reference),
                        table=read_table(params, paths.table, runs),
                        runs=runs, histories=read_histories(params, paths.history, runs),
                        published_path=read_published_path(params, paths.published_path),
                        errors=read_errors(params, paths.errors, last_step(params), runs),
                        precision=read_precision_runs(params, paths.precision, paths.runs),
                        confirmation=read_confirmation(params, paths.confirmation),
                        searches=read_searches(params, paths.search) if paths.search else {},
                        test_set_uses=read_test_set_uses(paths.search) if paths.search else [],
                        provenance=build_record(paths.params, paths.runs.parent),
                        compile_check=read_compile_check(params, paths.compile_check) if paths.compile_check
                        else {},
                        data_path_test=read_data_path_test(params, paths.data_path_test),
                        data_path_power=read_data_path_power(paths.data_path_power) if paths.data_path_power
                        else None)
