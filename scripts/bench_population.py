"""A population of K runs trained together against the same K runs trained one after another.

Both sides train the same configs (K seeds × learning rates of one task/norm/batch size) for the same
steps, with normbench's own loops (:func:`normbench.train.fit` per run; one
:func:`normbench.population.train.fit_population` per population form: ``wide``, one model K times
wider, and ``vmap``, K models under ``torch.func.vmap``), each finishing with its test evaluation; the
rounds interleave them in one process. A form may end in ``:graph`` (CUDA only): its step captured as
one CUDA graph and replayed (``runtime.cuda_graph``); the others run eagerly. ``auto`` is the form a
population sweep picks (wide where the norm and model have one). ``minimal`` is the reference: the same
K MLPs with BatchNorm as a wide model written by hand in a few lines (``minimal_wide.py``; ``–`` for
other tasks and norms). Reports model-steps/s (K × steps /
seconds, median over rounds) and each form's ratio to separate runs, to
reports/bench/population[_cuda].md. With ``--members 1`` a population is one run: ``auto:graph``
against the separate (eager) run is the captured single run, and ``--norms`` compares plugins within
the same training step.

    python scripts/bench_population.py                       # CPU: K=16, MLP and CNN, batch 2 and 32
    python scripts/bench_population.py --device cuda --members 32 128 512 --forms vmap wide wide:graph
    python scripts/bench_population.py --device cuda --members 512 --forms wide:graph minimal:graph
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import platform
import statistics
import time
from pathlib import Path

import torch
from bench_args import command_line, count, presets
from minimal_wide import has_minimal_form, train_minimal
from worktree import ROOT

import normbench
from normbench import available_norms
from normbench.argtypes import known_device, writable_file
from normbench.cli import CONF_DIR
from normbench.config import ConfigError
from normbench.experiment.build import prepare_data, prepare_model
from normbench.experiment.run import fit_run
from normbench.population.train import fit_population, members_per_population, population_parts
from normbench.runtime import Runtime, resolve_device, use_deterministic_kernels
from normbench.tasks.registry import task_for

LRS = (0.0125, 0.05, 0.2, 0.8)


def configs(task: str, norm: str, batch_size: int, members: int, steps: int, device: str) -> list:
    from hydra import compose, initialize_config_dir

    base = [
        f"task={task}",
        f"norm={norm}",
        f"batch_size={batch_size}",
        "train.budget=steps",
        f"train.steps={steps}",
        "train.history_points=1",
        f"runtime.device={device}",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return [
            compose("config", [*base, f"seed={i // len(LRS)}", f"optim.lr={LRS[i % len(LRS)]}"])
            for i in range(members)
        ]


def check_tasks(tasks: list[str]) -> None:
    """ConfigError naming the first of ``tasks`` whose runs train with a loop of their own (the GANs),
    which :func:`fit_population` does not run."""
    for task in tasks:
        if task_for(configs(task, "batchnorm", 2, 1, 1, "cpu")[0]).own_training:
            raise ConfigError(
                f"--tasks {task}: trains with a loop of its own, not fit_population's; "
                "this benchmark does not time it"
            )


def separate(cfgs, cpu_data, data, runtime) -> tuple[float, float]:
    """Seconds to train every config on its own with normbench's loop (models built on the CPU from
    ``cpu_data``, as runs build them, trained on ``data``), in all and in the training loops alone."""
    sync(runtime)
    start = time.perf_counter()
    loops = 0.0
    for cfg in cfgs:
        loops += fit_run(cfg, prepare_model(cfg, cpu_data, runtime), data, runtime).train_time_s
    sync(runtime)
    return time.perf_counter() - start, loops


def population(cfgs, cpu_data, data, runtime, form: str, cache_mb: float = 0.0) -> tuple[float, float]:
    """Seconds to train ``cfgs`` as one population (``form``, ``:graph`` captured), or with
    ``form`` ending in ``/sized`` as the populations of at most ``cache_mb`` MiB that a population
    sweep trains them as, one after another; in all and in the training loops alone."""
    form, sized = form.removesuffix("/sized"), form.endswith("/sized")
    form, _, graph = form.partition(":")
    if form == "minimal":
        return train_minimal(cfgs, data, runtime, graph == "graph")
    runtime = dataclasses.replace(runtime, cuda_graph=graph == "graph")
    sync(runtime)
    start = time.perf_counter()
    models = [prepare_model(cfg, cpu_data, runtime) for cfg in cfgs]
    size = members_per_population(models[0], data.x_train[: cfgs[0].batch_size], cache_mb) if sized else None
    loop = sum(
        fit_population(cfgs[part], models[part], data, runtime, form=form)[0].train_time_s
        for part in population_parts(len(cfgs), size)
    )
    sync(runtime)
    return time.perf_counter() - start, loop


def sync(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


def default_out(device_type: str) -> Path:
    return ROOT / "reports/bench" / ("population_cuda.md" if device_type == "cuda" else "population.md")


def out_option(out: Path, device_type: str) -> str:
    """``--out`` as the reproduce line needs it: nothing for the default report, the repository path of
    another committed report (so that rerunning the line rewrites that report, not the default one),
    ``FILE`` for a file outside the repository's reports."""
    out, bench = out.resolve(), (ROOT / "reports/bench").resolve()
    if out == default_out(device_type).resolve():
        return ""
    return f" --out reports/bench/{out.name}" if out.parent == bench else " --out FILE"


def write_report(out: Path, args: argparse.Namespace, runtime: Runtime, rows: list) -> None:
    """The table of ``rows``, written after every row: a benchmark cut short keeps the rows it finished."""
    device = (
        torch.cuda.get_device_name(runtime.device)
        if runtime.device.type == "cuda"
        else platform.processor() or "cpu"
    )
    lines = [
        f"# Population training vs separate runs ({runtime.device.type})",
        "",
        f"normbench {normbench.__version__}, torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s); "
        f"{args.steps} steps per run (cosine lr, SGD momentum 0.9), learning rates "
        f"{', '.join(map(str, LRS))} over seeds; median of {args.rounds} interleaved rounds, model building "
        "and the final test evaluation included on both sides (the loop columns: model-steps per second of "
        "the training loops alone, their evaluation points included).",
        "",
        f"Reproduce: `python scripts/bench_population.py {command_line(args, ('out', 'timed'))}"
        + out_option(out, runtime.device.type)
        + "`",
        "",
        "Model-steps/s, and each population form's speed-up over separate runs:",
        "",
        "| task | norm | batch | members K | separate | separate loop | "
        + " | ".join(f"{f} | {f} speed-up | {f} loop" for f in args.timed)
        + " |",
        "|---|---|---:|---:|---:|---:|" + "---:|---:|---:|" * len(args.timed),
        *(
            f"| {t} | {n} | {b} | {k} | {r['separate']:,.0f} | {lp['separate']:,.0f} | "
            + " | ".join(
                f"{r[f]:,.0f} | {r[f] / r['separate']:.2f}× | {lp[f]:,.0f}" if f in r else "– | – | –"
                for f in args.timed
            )
            + " |"
            for t, n, b, k, r, lp in rows
        ),
    ]
    if args.separate_members:
        lines += ["", f"Separate runs: {args.separate_members} timed, scaled to K."]
    if any(f.startswith("minimal") for f in args.timed):
        lines += [
            "",
            "minimal: the same K MLPs written by hand as one wide model in a few lines (scripts/minimal_wide.py: "
            "batched matmuls, torch's BatchNorm over the members' features, one foreach SGD at one learning "
            "rate without schedule); – where the task is not an MLP with BatchNorm.",
        ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tasks = presets("task")
    parser.add_argument("--tasks", nargs="+", choices=tasks, default=["mnist1d_mlp", "mnist1d_cnn"])
    parser.add_argument("--norms", nargs="+", choices=available_norms(), default=["batchnorm"])
    parser.add_argument("--batch-sizes", nargs="+", type=count, default=[2, 32])
    parser.add_argument("--members", nargs="+", type=count, default=[16])
    parser.add_argument("--steps", type=count, default=100)
    parser.add_argument("--rounds", type=count, default=3)
    parser.add_argument(
        "--separate-members",
        type=int,
        default=0,
        help="time only this many separate runs and scale to K (0: all K); for large K on a GPU",
    )
    forms = [f"{f}{g}" for f in ("auto", "wide", "vmap", "minimal") for g in ("", ":graph")]
    parser.add_argument("--forms", nargs="+", choices=forms, default=["wide", "vmap"])
    parser.add_argument("--device", type=known_device, default="cpu")
    parser.add_argument(
        "--cache-mb",
        type=float,
        default=0.0,
        help="also time each form as the cache-sized populations a sweep trains (hydra.launcher.cache_mb)",
    )
    parser.add_argument("--out", type=writable_file, default=None)
    args = parser.parse_args(argv)
    if args.cache_mb < 0:
        parser.error(f"--cache-mb {args.cache_mb}: must be >= 0")
    # what is timed: each form, and with --cache-mb each form as cache-sized populations too
    args.timed = [
        *args.forms,
        *(f"{f}/sized" for f in args.forms if args.cache_mb and not f.startswith("minimal")),
    ]
    try:
        check_tasks(args.tasks)
    except ConfigError as exc:
        parser.error(str(exc))
    runtime = Runtime(resolve_device(args.device))
    if runtime.device.type != "cuda" and any(f.endswith(":graph") for f in args.forms):
        parser.error(f"--forms {' '.join(args.forms)}: ':graph' needs --device cuda")
    torch.set_num_threads(1)
    use_deterministic_kernels(runtime.device)  # as runs do
    out = args.out or default_out(runtime.device.type)
    rows: list = []

    for task, norm, bs, k in itertools.product(args.tasks, args.norms, args.batch_sizes, args.members):
        cfgs = configs(task, norm, bs, k, args.steps, args.device)
        data = prepare_data(cfgs[0], runtime)
        on_device = data.to(runtime.device)
        n_sep = args.separate_members or k
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in ("separate", *args.timed)}
        for _ in range(args.rounds):
            wall, loops = separate(cfgs[:n_sep], data, on_device, runtime)
            times["separate"].append((wall * k / n_sep, loops * k / n_sep))
            for form in args.timed:
                if form.startswith("minimal") and not has_minimal_form(cfgs[0]):
                    continue  # written by hand for the MLP with BatchNorm only
                try:
                    times[form].append(population(cfgs, data, on_device, runtime, form, args.cache_mb))
                except RuntimeError as exc:  # the reference is not normbench: its failure costs no row
                    if not form.startswith("minimal"):
                        raise
                    print(f"{task} batch {bs} K={k}: {form} failed: {exc}", flush=True)
        rate = {name: k * args.steps / statistics.median(w for w, _ in t) for name, t in times.items() if t}
        loop = {name: k * args.steps / statistics.median(x for _, x in t) for name, t in times.items() if t}
        rows.append((task, norm, bs, k, rate, loop))
        print(
            f"{task} {norm} batch {bs} K={k}: "
            + ", ".join(f"{name} {r:.0f}" for name, r in rate.items())
            + " model-steps/s; "
            + ", ".join(f"{f} {rate[f] / rate['separate']:.2f}x" for f in args.timed if f in rate)
            + "; training loops alone: "
            + ", ".join(f"{name} {r:.0f}" for name, r in loop.items()),
            flush=True,
        )
        write_report(out, args, runtime, rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        raise SystemExit(f"bench_population: error: {exc}") from None
