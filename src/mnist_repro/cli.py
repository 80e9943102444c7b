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


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in argv, else None."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def interrupted_line(argv: list[str], resume_option: str | None) -> str:
    """What to do after a Ctrl-C: rerun the same command (under DVC, its stage), from the
    folder named by ``resume_option`` when the stage keeps one."""
    stage = os.environ.get("DVC_STAGE")  # DVC sets it for every stage command it runs
    rerun = f"`dvc repro {stage}` (or the same `dvc exp run`)" if stage else "the same command"
    folder = _option(argv, resume_option) if resume_option else None
    if folder:
        return f"interrupted: rerun {rerun} to resume from the last finished epoch saved in {folder}"
    return f"interrupted: nothing was saved; rerun {rerun} to start again"


def run(main, argv=None, *, resume_option: str | None = None) -> None:
    """Run a stage's ``main(argv)``. A UserError prints ``error: ...``, a Ctrl-C one line on
    how to resume (``resume_option``: the stage's option naming its resume folder); exit
    1 or 130, no traceback."""
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
            print(interrupted_line(argv, resume_option), file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED) from None
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)
