"""A population trained with its step captured as a CUDA graph against the same population trained
eagerly (needs a CUDA device).

For each task, norm (with SGD; with AdamW too for each task's first norm) and population size K: K
members (seeds × learning rates; of several, the last diverges at lr 1e4, so the freezing of a
diverged member is replayed too; one alone updates its parameters as one flat tensor) trained twice
from the same initial weights, with ``runtime.cuda_graph`` true and false; the histories (test errors, training losses), statuses,
divergence steps and final parameters and buffers must agree. A replay launches the same kernels in
the same order, so they should agree to the last bit; the table shows the largest differences.

    PYTHONPATH=. python scripts/check_capture.py --out reports/bench/capture_check_cuda.md
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

import torch
from bench_args import command_line, count, presets
from bench_population import configs

from normbench import available_norms
from normbench.argtypes import known_device, writable_file
from normbench.experiment.build import prepare_data, prepare_model
from normbench.population.train import fit_population
from normbench.runtime import Runtime, resolve_device, use_deterministic_kernels

TOLERANCE = 1e-6


def train(cfgs, data, cpu_data, runtime: Runtime, graph: bool):
    models = [prepare_model(cfg, cpu_data, runtime) for cfg in cfgs]
    results = fit_population(cfgs, models, data, dataclasses.replace(runtime, cuda_graph=graph))
    return results, models


def largest_difference(a, b) -> float:
    return max(
        (float((x.double() - y.double()).abs().nan_to_num(0.0).max()) for x, y in zip(a, b, strict=True)),
        default=0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=presets("task"), default=["mnist1d_mlp", "mnist1d_cnn"])
    parser.add_argument(
        "--norms", nargs="+", choices=available_norms(), default=["batchnorm", "groupnorm", "batchrenorm"]
    )
    parser.add_argument("--members", nargs="+", type=count, default=[1, 5])
    parser.add_argument("--steps", type=count, default=120)
    parser.add_argument("--device", type=known_device, default="cuda")
    parser.add_argument("--out", type=writable_file, default=Path("reports/bench/capture_check_cuda.md"))
    args = parser.parse_args()
    runtime = Runtime(resolve_device(args.device))
    if runtime.device.type != "cuda":
        parser.error(f"--device {args.device}: capturing a CUDA graph needs a CUDA device")
    use_deterministic_kernels(runtime.device)
    rows, failures = [], 0
    cases = [(t, n, "sgd") for t, n in itertools.product(args.tasks, args.norms)]
    cases += [(t, args.norms[0], "adamw") for t in args.tasks]  # its bias corrections count on the device
    cases = [(*case, k) for case in cases for k in args.members]
    for task, norm, optim, k in cases:
        cfgs = configs(task, norm, 16, k, args.steps, args.device)
        for cfg in cfgs:
            if optim == "adamw":
                cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = "adamw", cfg.optim.lr / 100, 1e-2
        if k > 1:
            cfgs[-1].optim.lr = 1e4  # diverges: frozen, in the graph as out of it
        cpu_data = prepare_data(cfgs[0], runtime)
        data = cpu_data.to(runtime.device)
        (eager, eager_models), (graphed, graphed_models) = (
            train(cfgs, data, cpu_data, runtime, g) for g in (False, True)
        )
        same_runs = [(r.status, r.steps, r.diverged_at_step) for r in eager] == [
            (r.status, r.steps, r.diverged_at_step) for r in graphed
        ]
        history = max(
            abs(p[key] - q[key])
            for r, s in zip(eager, graphed, strict=True)
            for p, q in zip(r.history, s.history, strict=True)
            for key in ("train_loss", "test_error")
        )
        state = largest_difference(
            [t for m in eager_models for t in m.state_dict().values()],
            [t for m in graphed_models for t in m.state_dict().values()],
        )
        ok = same_runs and all(r.captured for r in graphed) and history <= TOLERANCE and state <= TOLERANCE
        failures += not ok
        statuses = " ".join(r.status[0] for r in graphed)
        rows.append(
            f"| {task} | {norm} | {optim} | {k} | {graphed[0].population} | {statuses} | {history:.2e} | {state:.2e} | "
            f"{'yes' if ok else '**no**'} |"
        )
        print(rows[-1], flush=True)
        # after every case: a check cut short keeps what it compared
        write_report(args, runtime, rows, failures, len(cases))
    print(f"wrote {args.out}")
    raise SystemExit(1 if failures else 0)


def write_report(
    args: argparse.Namespace, runtime: Runtime, rows: list[str], failures: int, planned: int
) -> None:
    gpu = torch.cuda.get_device_name(runtime.device)
    lines = [
        f"# Captured (CUDA graph) vs eager population training ({gpu})",
        "",
        f"torch {torch.__version__}; K members (seeds × learning rates; of several, the last at lr 1e4: "
        f"diverges), batch 16, {args.steps} steps; largest absolute differences of the history (training "
        f"loss, test error) and of every final parameter and buffer; agreement within {TOLERANCE:g}. "
        "Statuses: c completed, d diverged.",
        "",
        f"Reproduce: `PYTHONPATH=. python scripts/check_capture.py {command_line(args)} --out FILE`",
        "",
        "| task | norm | optimizer | K | form | statuses | history | parameters and buffers | agree |",
        "|---|---|---|---:|---|---|---:|---:|---|",
        *rows,
        "",
        f"{len(rows) - failures} of {len(rows)} agree"
        + (f"; {planned - len(rows)} of the {planned} cases not run yet." if planned > len(rows) else "."),
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
