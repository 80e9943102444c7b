"""What every stage CLI shares: a user's error or a Ctrl-C becomes one clear line, not a traceback.

Imports only ``errors`` and the standard library: a stage that reads files (check_params,
compare) loads neither torch nor Accelerate through it. Under a multi-process launch every
process runs the stage; only global rank 0 prints (the others exit with the same code,
silently), so a refused run says its error once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from .errors import UserError

INTERRUPTED = 130  # the shell's exit status for a command ended by SIGINT (128 + 2)


def _speaks() -> bool:
    return os.environ.get("RANK", "0") == "0"  # set by torch's launcher; absent in one process


def rerun_command() -> str:
    """How to run the interrupted stage again: under `dvc exp run` (DVC names the experiment) the
    same command, under `dvc repro` or the matrix its stage, by hand the same command."""
    stage = os.environ.get("DVC_STAGE")  # DVC sets it for every stage command it runs
    if stage and os.environ.get("DVC_EXP_NAME"):
        return "the same `dvc exp run`"
    return f"`dvc repro {stage}`" if stage else "the same command"


def interrupted_line(argv: list[str], rerun: str) -> str:
    """A stage that keeps no state: a Ctrl-C loses nothing written, and the rerun starts again."""
    return f"interrupted: nothing was saved; rerun {rerun} to start again"


def run(main, argv=None, *, on_interrupt=interrupted_line) -> None:
    """Run a stage's ``main(argv)``. A UserError prints ``error: ...``, a Ctrl-C one line,
    ``on_interrupt(argv, rerun_command())`` (a stage that keeps resume state says what the
    rerun resumes from); exit 1 or 130, no traceback."""
    argv = sys.argv[1:] if argv is None else argv
    interrupted = []

    def on_sigint(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    # A rank blocked in a collective when a peer exits raises the backend's error, not
    # KeyboardInterrupt: remembering the signal tells an interrupt from a failure.
    previous = signal.getsignal(signal.SIGINT)
    ours = previous is signal.default_int_handler and threading.current_thread() is threading.main_thread()
    if ours:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        main(argv)
    except UserError as e:
        if _speaks():
            print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except BaseException as e:
        if not (interrupted or isinstance(e, KeyboardInterrupt)):
            raise
        if _speaks():
            print(on_interrupt(argv, rerun_command()), file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED) from None
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)
