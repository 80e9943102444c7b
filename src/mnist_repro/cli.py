"""What every stage CLI shares: known failures become one clear line, not a traceback."""

from __future__ import annotations

import sys

from .config import ParamsError
from .data import DataError
from .train import DivergedError

EXPECTED = (ParamsError, DataError, DivergedError)


def run(main, argv=None) -> None:
    try:
        main(argv)
    except EXPECTED as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
