"""Errors a user fixes: each is printed as one line by ``cli.run``, never a traceback.

At the bottom of the import graph (standard library only), so a stage that only
reads files catches them without loading torch or Accelerate.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of every error whose message names the problem and its fix."""


class ParamsError(UserError, ValueError):
    """A params.yaml value (or command-line setting) that no run should start with."""


class DataError(UserError, RuntimeError):
    """MNIST could not be obtained or is not the official data."""


class InputFileError(UserError):
    """A stage's input file is missing, stale or not in the expected form; the message
    names the stage that writes it."""


class DivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite; no metrics are written."""


class SearchError(UserError):
    """A design search's experiments cannot be collected."""
