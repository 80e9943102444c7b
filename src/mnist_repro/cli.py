"""What every stage CLI shares: a user's error becomes one clear line, not a traceback.

Imports only ``errors``: a stage that reads files (check_params, compare) loads
neither torch nor Accelerate through it.
"""

from __future__ import annotations

import sys

from .errors import UserError


def run(main, argv=None) -> None:
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
