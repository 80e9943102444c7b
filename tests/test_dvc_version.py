"""DVC's Python internals are read in a few places only, and only on the DVC versions pyproject.toml
pins: the tests read the expanded stages (dvc.repo.Repo(...).index.stages in conftest's repo_stages,
for test_deps, test_config and test_compare), dvc.yaml's interpolation (dvc.parsing in the tests' launch flags), DVC's YAML reader
and Hydra overrides (test_pipeline, test_plots, test_search); research/search.py reads experiments
through dvc.repo.Repo. The library and the matrix use DVC's command line only (test_matrix checks
that). A DVC outside the pin fails here, with what to check, instead of somewhere deep in a test."""

from __future__ import annotations

import re

from packaging.requirements import Requirement
from packaging.version import Version

from support.projects import REPO


def pinned_dvc() -> Requirement:
    text = (REPO / "pyproject.toml").read_text()
    (line,) = re.findall(r'^\s*"(dvc[^"]*)"', text, flags=re.M)
    return Requirement(line)


def test_dvc_is_a_version_the_internals_were_checked_on():
    import dvc

    pin = pinned_dvc()
    assert pin.specifier, "pyproject.toml must pin dvc to the versions its internals were checked on"
    assert Version(dvc.__version__) in pin.specifier, (
        f"DVC {dvc.__version__} is installed; pyproject.toml pins {pin}. The tests and research/search.py "
        "read DVC internals (this file's docstring lists them): check them on this version, then move the pin")


def test_the_pin_admits_no_other_minor_release():
    """A pin that admits the next minor release (or the one before) would let an untested DVC in."""
    import dvc

    pin, here = pinned_dvc(), Version(dvc.__version__)
    for other in (f"{here.major}.{here.minor + 1}.0", f"{here.major}.{max(here.minor - 1, 0)}.999"):
        assert other == f"{here.major}.0.999" or Version(other) not in pin.specifier, f"{pin} admits {other}"
