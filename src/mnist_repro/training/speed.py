"""What makes our training step fast, and the check that the compiled path (train.compile) can
run here. Each lever was measured alone, side by side, by research/speed_levers.py (its record:
research/speed_levers.json; docs/speed.md says what was kept and why).

Memory: each training step allocates its activations and gradients afresh, a few MB each.
glibc's malloc serves such blocks with mmap and gives them back when freed (or trims the
heap top), so every step faults its pages in again from the kernel: thousands of page faults
per step, a third of a small model's CPU step. ``keep_freed_memory`` tells malloc to keep
freed memory for the next step instead; the numbers computed are the same, bit for bit.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys

import torch

from ..core.errors import ParamsError

# glibc's mallopt parameters (malloc.h) and the values kept: every block up to the largest
# mmap threshold glibc accepts on 64-bit (32 MiB) comes from the heap, which is trimmed
# only when more than TRIM_KEEP bytes lie free at its top.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_MAX = 32 << 20
TRIM_KEEP = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse in this process (and in processes it forks
    later); True if it took effect, False where malloc is not glibc's (nothing changes)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # musl's mallopt exists and returns 0: it has no such knobs.
    return mallopt(M_MMAP_THRESHOLD, MMAP_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_KEEP) == 1


# Where torch.compile's default backend (inductor) generates code: C++ on a CPU, triton on a GPU.
INDUCTOR_DEVICES = ("cpu", "cuda", "xpu")


def compile_problem(device: torch.device) -> str | None:
    """Why torch.compile (inductor) cannot train on ``device`` here, or None if it can."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version_info.major}.{sys.version_info.minor} in torch {torch.__version__}"
    if device.type not in INDUCTOR_DEVICES:
        return f"torch.compile's inductor backend generates no code for {device.type} devices"
    if device.type == "cpu":
        from torch._inductor import exc
        from torch._inductor.cpp_builder import get_cpp_compiler

        try:
            get_cpp_compiler()  # what inductor runs before its first kernel: the same search, the same CXX
        except exc.InvalidCxxCompiler:
            return "inductor compiles C++ kernels on a CPU and finds no C++ compiler (g++, or the one $CXX names)"
    elif importlib.util.find_spec("triton") is None:
        return f"inductor generates triton kernels on {device.type} and triton is not installed"
    return None


def check_compile(device: torch.device) -> None:
    """One line naming the param when train.compile cannot work here, before any training starts."""
    problem = compile_problem(device)
    if problem:
        raise ParamsError(f"train.compile: {problem}; install what is missing, or set train.compile: false "
                          "to train eagerly (docs/speed.md)")
