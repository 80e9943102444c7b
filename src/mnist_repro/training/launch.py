"""Where and how a run is launched: the Accelerator, its checks against params.yaml's
`launch:` section, CPU threads per process, and the device a wall time was measured on.

Launch (params.yaml `launch:` holds these flags for `dvc repro`; by hand):
  1 CPU or GPU:  accelerate launch stages/train.py lr_scheduler
  8 GPUs (DDP):  accelerate launch --multi_gpu --num_processes 8 stages/train.py lr_scheduler
  2 nodes x 8:   accelerate launch --multi_gpu --num_processes 16 --num_machines 2 \
                   --machine_rank $RANK --main_process_ip $HEAD --main_process_port 29500 stages/train.py lr_scheduler
"""

from __future__ import annotations

import os
import platform
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from ..core.config import LaunchConfig
from ..core.errors import ParamsError


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_threads_per_process(requested: int) -> int:
    """`accelerate launch` without --cpu sets OMP_NUM_THREADS=1, which on a CPU-only
    machine leaves every core but one idle; 0 shares the cores among local processes."""
    if requested:
        return requested
    return max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def make_accelerator() -> Accelerator:
    """The Accelerator for `accelerate launch`'s settings (processes, mixed precision).

    Without CUDA, `accelerate launch --multi_gpu --num_processes 2` would otherwise
    start two unrelated single-process runs; cpu=True makes them one gloo job.
    save_on_each_node: a node with its own disk keeps its own resume state.
    """
    cpu = not torch.cuda.is_available()
    if cpu and os.environ.get("ACCELERATE_MIXED_PRECISION") == "fp16":
        # Accelerate gives CPU fp16 no gradient scaler: small gradients would flush to zero.
        raise ParamsError("launch.mixed_precision: fp16 needs a CUDA GPU (no gradient scaler on CPU); "
                          "use bf16 or \"no\" on this machine")
    return Accelerator(cpu=cpu, project_config=ProjectConfiguration(save_on_each_node=True))


def num_machines(accelerator: Accelerator) -> int:
    # torchrun tells each process how many run on its node; the single-process launcher does not.
    return accelerator.num_processes // int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def node_index(accelerator: Accelerator) -> int:
    """Which machine this process runs on (0 on one machine)."""
    return accelerator.process_index // (accelerator.num_processes // num_machines(accelerator))


def check_launch(launch: LaunchConfig, accelerator: Accelerator) -> None:
    """Results filed under params.yaml must come from its launch settings, not from a
    user's Accelerate config or a hand-typed flag that DVC never saw."""
    actual = {"num_processes": accelerator.num_processes, "num_machines": num_machines(accelerator),
              "mixed_precision": accelerator.mixed_precision}
    for key, value in actual.items():
        if getattr(launch, key) != value:
            raise ParamsError(
                f"launch.{key}: params.yaml says {getattr(launch, key)!r} but this run has {value!r}; launch with "
                f"dvc.yaml's command (it passes params.yaml's launch flags) or change launch.{key}")


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU model and its cores: what a wall time was measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({available_cores()} cores)"


def quiet_launch(argv=None) -> int:
    """``accelerate launch`` with the same arguments, minus the launcher's own tracebacks.

    `accelerate launch` answers a stage that exits non-zero with a traceback of its own
    (CalledProcessError, or torch's ChildFailedError report of ~35 lines), and a Ctrl-C
    with a KeyboardInterrupt or SignalException traceback, whatever its flags (--quiet
    covers only one process's failure). Here the stage has already said what happened in
    one line (mnist_repro.core.cli), so this exits with the stage's status and says nothing,
    except for a process killed by a signal, which could not speak for itself.
    A request for N > 1 processes that Accelerate would answer with one (no --multi_gpu)
    stops with one line naming the missing flag.
    Usage: python -m mnist_repro.training.launch <accelerate launch flags> stages/train.py ...
    """
    import logging
    import signal
    import subprocess

    import accelerate.commands.launch as accelerate_launch
    import torch.distributed.run  # noqa: F401  (creates the elastic agent's loggers)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.run")):
            logging.getLogger(name).setLevel(logging.CRITICAL)  # "failed (exitcode: 1)", "death signal", ...
    args = launch_command_parser().parse_args(argv)
    args.quiet = False  # its one-process form would turn the stage's status (130 after a Ctrl-C) into 1
    # One process shares the terminal's process group with its stage: let the stage take the
    # Ctrl-C and keep waiting for its exit status. (torch's launcher of N processes installs
    # its own handler, forwards the signal and raises SignalException.)
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    one_process = accelerate_launch.simple_launcher

    def refuse_fewer(args):  # Accelerate's one-process launcher, once its flags and config are read
        if (args.num_processes or 1) > 1:
            raise ParamsError(fewer_processes(args.num_processes, cpu=bool(args.cpu)))
        one_process(args)

    accelerate_launch.simple_launcher = refuse_fewer
    try:
        launch_command(args)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        return _status(e.returncode, rank=0)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        return _status(failure.exitcode, rank)
    except SignalException as e:
        return 128 + int(e.sigval)
    finally:
        accelerate_launch.simple_launcher = one_process
    return 0


def fewer_processes(n: int, *, cpu: bool) -> str:
    """Why `accelerate launch --num_processes n` would start one process, and the fix."""
    if cpu:
        return (f"--num_processes {n} with --cpu starts one process; drop --cpu and add --multi_gpu "
                f"(on a host without CUDA that is {n} gloo CPU processes)")
    return (f"--num_processes {n} without --multi_gpu starts one process; add --multi_gpu "
            "(in the pipeline: launch.multi_gpu: true in params.yaml)")


def _status(code: int, rank: int) -> int:
    if code >= 0:
        return code
    print(f"error: training process {rank} was killed by {signal_name(-code)}", file=sys.stderr)
    return 128 - code


def signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


if __name__ == "__main__":
    sys.exit(quiet_launch())
