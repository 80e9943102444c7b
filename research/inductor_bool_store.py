"""Why torch.compile loses on this CPU: inductor's C++ kernels that store a bool tensor are slow here.

    python research/inductor_bool_store.py --out research/inductor_bool_store.json

A training graph stores bool masks (ReLU's backward mask, dropout's keep mask, max-pool's
choice): inductor writes them through ATen's at::vec::VecMask<float, 1>::store(bool*), whose
generic conversion loop g++ does not vectorise because inductor compiles with
-fno-tree-loop-vectorize (torch/_inductor/cpp_builder.py, for g++). This times, on one thread,
one activation-sized tensor (128 x 16 x 24 x 24 floats, lr_scheduler's largest), eager against
compiled, interleaved, --rounds times (order rotating): a bool store (x <= 0), the same mask
stored as uint8, and a float store (x * 2) for contrast. Reported: median microseconds per call
and the ratio compiled / eager for each; and the compiler command inductor builds with.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from mnist_repro.training.launch import describe_device  # noqa: E402
from mnist_repro.training.speed import keep_freed_memory  # noqa: E402

SHAPE = (128 * 16 * 24 * 24,)


def compiler_command() -> str:
    """The g++ command line inductor builds its CPU kernels with (its own builder, asked here)."""
    from torch._inductor import cpu_vec_isa
    from torch._inductor.cpp_builder import CppBuilder, CppTorchOptions

    options = CppTorchOptions(vec_isa=cpu_vec_isa.pick_vec_isa())
    return CppBuilder(name="kernel", sources="kernel.cpp", BuildOption=options, output_dir="/tmp").get_command_line()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=20, help="calls per timing")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    keep_freed_memory()  # no page faults in either: the stores alone are compared
    torch.set_num_threads(1)
    x = torch.randn(SHAPE)
    ops = {"bool store (x <= 0)": lambda t: t <= 0,
           "uint8 store ((x <= 0) as uint8)": lambda t: (t <= 0).to(torch.uint8),
           "float store (x * 2)": lambda t: t * 2}
    fns = {}
    for name, op in ops.items():
        fns[f"{name}, eager"] = op
        fns[f"{name}, compiled"] = torch.compile(op, dynamic=False)
    for fn in fns.values():  # compile, and warm every path once
        fn(x), fn(x)
    names, times = list(fns), {n: [] for n in fns}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(args.calls):
                fns[name](x)
            times[name].append((time.perf_counter() - start) / args.calls)
    rows = {}
    for name in ops:
        eager, compiled = times[f"{name}, eager"], times[f"{name}, compiled"]
        rows[name] = {"eager_us": round(1e6 * statistics.median(eager), 1),
                      "compiled_us": round(1e6 * statistics.median(compiled), 1),
                      "compiled_over_eager": round(statistics.median(c / e for c, e in zip(compiled, eager)), 2)}
        print(f"{name}: eager {rows[name]['eager_us']} us, compiled {rows[name]['compiled_us']} us, "
              f"x{rows[name]['compiled_over_eager']}")
    record = {"what": __doc__.split("\n")[0], "command": " ".join(["python", "research/inductor_bool_store.py",
                                                                   *(argv if argv is not None else sys.argv[1:])]),
              "machine": {"cpu": describe_device(torch.device("cpu")), "machine": platform.machine(),
                          "torch": torch.__version__, "python": platform.python_version()},
              "elements": SHAPE[0], "threads": 1, "rounds": args.rounds, "calls": args.calls,
              "inductor_compiler_command": compiler_command(), "results": rows}
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
