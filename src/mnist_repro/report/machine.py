"""The report's sections about the runs themselves: where they ran, the steps, wall time,
mixed precision against fp32, and the model cards."""

from __future__ import annotations

from statistics import mean

from ..core.config import Params, VariantConfig
from .markdown import duration, markdown_table, plural
from ..core.models import build_model, count_parameters
from .receptive_field import layer_table
from ..compare.reference import Reference
from ..parallel.estimate import makespan
from .inputs import ReportInputs


def describe_machine(run: dict) -> str:
    """Where a run ran, as its run file records it."""
    return (f"{run['device_name']} ({run['device']}), {plural(run['num_processes'], 'process', 'processes')} "
            f"on {plural(run['num_machines'], 'machine')}, mixed precision {run['mixed_precision']}, "
            f"torch {run['torch']}")


def runs_section(inputs: ReportInputs) -> list[str]:
    machines: dict[str, list[str]] = {}
    for name, runs in inputs.ran.items():
        for run in runs:
            machines.setdefault(describe_machine(run), []).append(f"{name} seed {run['seed']}")
    shapes = {(r["epochs"], r["train_images"], r["test_images"]) for runs in inputs.ran.values() for r in runs}
    variants = (f"{len(inputs.ran)} of {len(inputs.runs)} variants run ({len(inputs.not_run)} not run yet)"
                if inputs.not_run else f"{len(inputs.runs)} variants")
    lines = [f"- {variants}, {plural(sum(len(r) for r in inputs.ran.values()), 'run')}; "
             + "; ".join(f"{e} epochs on {tr:,} training and {te:,} test images" for e, tr, te in sorted(shapes))]
    if len(machines) == 1:
        lines.append(f"- Every run on: {next(iter(machines))}")
    else:
        lines += [f"- On {machine}: {', '.join(runs)}" for machine, runs in machines.items()]
    return lines


def steps_section(params: Params, reference: Reference) -> list[str]:
    def notebook(name: str) -> str:
        pub = reference.get(name)
        return f" ([published notebook]({pub.notebook}))" if pub and pub.notebook else ""

    return [f"{i}. `{v.name}`: {v.target}{notebook(v.name)}" for i, v in enumerate(params.variants.values(), 1)]


SLOTS = 2  # one run per core on the 2-core machine the committed runs were made on


def matrix_time(ran: dict) -> str:
    """The same runs on SLOTS slots, longest first: a projection from their wall times."""
    seconds = {f"{name}/{i}": r["wall_seconds"] for name, runs in ran.items() for i, r in enumerate(runs)}
    if not seconds:
        return ""
    projected = makespan(sorted(seconds, key=seconds.get, reverse=True), {}, seconds, SLOTS)
    return (f"The matrix with {SLOTS} slots (`python -m mnist_repro.parallel.matrix run`, one run per core) "
            f"would take about {duration(projected)}, longest runs first: a projection from these wall times "
            "(`mnist_repro.parallel.estimate.makespan`), not a timed matrix run.")


def wall_time_section(inputs: ReportInputs) -> list[str]:
    machines = {describe_machine(r) for runs in inputs.ran.values() for r in runs}
    rows = []
    for name, runs in inputs.runs.items():
        seconds = [r["wall_seconds"] for r in runs]
        # a registered variant's first run is of its first seed, not train.seed's
        first = runs and duration(seconds[0]) + ("" if runs[0]["seed"] == inputs.params.train.seed
                                                 else f" (seed {runs[0]['seed']})")
        rows.append([name, len(runs), first, duration(sum(seconds) / len(seconds)),
                     duration(sum(seconds))] if runs else [name, 0, inputs.how_to_run(name), "–", "–"])
        if len(machines) > 1:
            rows[-1].append(describe_machine(runs[0]) if runs else "–")
    total = sum(r["wall_seconds"] for runs in inputs.ran.values() for r in runs)
    where = f" All on {next(iter(machines))}." if len(machines) == 1 else ""
    # A variant not run yet would make the total look like the whole drill-down's cost.
    unrun = f" ({len(inputs.not_run)} not run yet)" if inputs.not_run else ""
    return [f"Training wall time as each run file records it (`wall_seconds`).{where} "
            f"In total {duration(total)} over {plural(sum(map(len, inputs.ran.values())), 'run')} of "
            f"{plural(len(inputs.ran), 'variant')}{unrun}: the table one run after another. "
            f"{matrix_time(inputs.ran)} Speed comparisons are the benchmark stage's (`metrics/benchmark.json`).",
            "",
            markdown_table(["Variant", "Runs", f"Seed {inputs.params.train.seed}", "Mean per run", "Total"]
                           + ([f"Machine (seed {inputs.params.train.seed})"] if len(machines) > 1 else []),
                           rows, numeric={1, 2, 3, 4})]


def model_cards(params: Params) -> list[str]:
    groups: dict[str, list[VariantConfig]] = {}
    for v in params.variants.values():
        groups.setdefault(v.model, []).append(v)
    headers = ["#", "Layer", "In ch", "Out ch", "k", "s", "p", "n in", "n out", "j in", "j out",
               "RF in", "RF out", "Output (C×H×W)", "Params"]
    lines = [
        "Computed from the models in `src/mnist_repro/core/models.py` (one dummy forward pass for the shapes) with "
        "n_out = ⌊(n_in + 2p − k)/s⌋ + 1, j_out = j_in·s, r_out = r_in + (k − 1)·j_in, from n = 28, j = 1, r = 1. "
        "A conv row's parameters include the block's BatchNorm. A 1×1 convolution never grows the receptive "
        "field; the published README's table, which grows it, has slips.",
        "",
    ]
    for model_name, variants in groups.items():
        model = build_model(model_name, variants[0].dropout)
        rows = layer_table(model)
        body = [[i + 1, r.layer, r.c_in, r.c_out, r.kernel, r.stride, r.padding, r.n_in, r.n_out, r.j_in,
                 r.j_out, r.r_in, r.r_out, "×".join(map(str, r.output_shape)), f"{r.params:,}"]
                for i, r in enumerate(rows)]
        lines += [
            f"### `{model_name}` (variant{'s' if len(variants) > 1 else ''}: "
            f"{', '.join(v.name for v in variants)})",
            "",
            markdown_table(headers, body, numeric=set(range(2, 13)) | {14}),
            "",
            f"Parameters: {sum(r.params for r in rows):,} (the model's count: {count_parameters(model):,}); "
            f"receptive field of the last layer: {rows[-1].r_out}×{rows[-1].r_out} pixels.",
            "",
        ]
    return lines


def precision_section(params: Params, pairs: list[dict]) -> list[str]:
    cfg = params.precision
    if not pairs:
        return ["No mixed-precision runs configured (`precision.seeds` is empty)."]
    rows = [[p["seed"], f"{p['fp32']['best_test_acc']:.2f}", f"{p['mixed']['best_test_acc']:.2f}",
             f"{p['fp32']['final_test_acc']:.2f}", f"{p['mixed']['final_test_acc']:.2f}"] for p in pairs]
    diff_best = mean(p["mixed"]["best_test_acc"] - p["fp32"]["best_test_acc"] for p in pairs)
    diff_final = mean(p["mixed"]["final_test_acc"] - p["fp32"]["final_test_acc"] for p in pairs)
    devices = sorted({p["mixed"]["device_name"] for p in pairs})
    return [f"`{cfg.variant}` trained with `launch.mixed_precision: {cfg.mixed_precision}` (Accelerate's autocast) "
            f"and in fp32, same seeds, on {', '.join(devices)} (`dvc repro precision@<seed>`):", "",
            markdown_table(["seed", "best test fp32", f"best test {cfg.mixed_precision}", "final test fp32",
                            f"final test {cfg.mixed_precision}"], rows, numeric={0, 1, 2, 3, 4}), "",
            f"Mean difference {cfg.mixed_precision} − fp32 over {len(pairs)} seeds: best test {diff_best:+.2f}, "
            f"final test {diff_final:+.2f} points."]
