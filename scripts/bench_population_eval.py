"""How a population's members are best evaluated on this device: all at once (the vectorized
population, ``wide`` and ``vmap``: :class:`normbench.population.evaluate.PopulationMembers`) or one
model after another (``one-by-one``: :class:`normbench.evaluate.OneByOne`, the single run's own
functions). Times one evaluation of every member's test error and loss (what each history point and
the final metrics do per split), and the training-mode passes at the run's batch size (``--batch-sizes``:
mini-batch errors and PreciseBN's statistics, 2,000 training samples each), median over rounds
interleaved in one process, into reports/bench/population_eval[_cuda].md.
:func:`normbench.population.train.population_members` picks by these tables.

    python scripts/bench_population_eval.py                   # CPU: K=16, the MNIST-1D and digits tasks
    python scripts/bench_population_eval.py --device cuda --members 16 128
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform
import statistics
import time

import torch
from bench_args import count, presets
from bench_population import configs, sync
from worktree import ROOT

import normbench
from normbench.argtypes import known_device, writable_file
from normbench.evaluate import OneByOne
from normbench.experiment.build import prepare_data, prepare_model
from normbench.population.evaluate import PopulationMembers
from normbench.population.wide import stack_population
from normbench.runtime import Runtime, resolve_device, use_deterministic_kernels
from normbench.tasks.registry import task_for

WAYS = ("wide", "vmap", "one-by-one")
PASS_SAMPLES = 2000


def evaluate_once(way: str, models: list, task, data, runtime: Runtime) -> float:
    """Seconds for one test evaluation of every member of ``models``, ``way``."""
    members = (
        OneByOne(models, task)
        if way == "one-by-one"
        else PopulationMembers(stack_population([copy.deepcopy(m) for m in models], way), task)
    )
    sync(runtime)
    start = time.perf_counter()
    members.error_and_loss(data.x_test, data.y_test)
    sync(runtime)
    return time.perf_counter() - start


def passes_once(way: str, models: list, task, data, batch_size: int, runtime: Runtime) -> float:
    """Seconds for every member's mini-batch error and PreciseBN statistics at ``batch_size`` over
    2,000 training samples each, ``way``."""
    members = (
        OneByOne(models, task)
        if way == "one-by-one"
        else PopulationMembers(stack_population([copy.deepcopy(m) for m in models], way), task)
    )
    n = min(PASS_SAMPLES, len(data.x_train))
    gens = [torch.Generator().manual_seed(k) for k in range(len(models))]
    orders = [torch.randperm(len(data.x_train), generator=g)[:n] for g in gens]
    sync(runtime)
    start = time.perf_counter()
    members.minibatch_error(data.x_train, data.y_train, batch_size, orders)
    members.precise_bn(data.x_train, batch_size, n, gens)
    sync(runtime)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tasks = presets("task")
    default_tasks = ["mnist1d_mlp", "mnist1d_cnn", "mnist1d_resnet", "digits_cnn", "digits_lstm", "seq_lstm"]
    parser.add_argument("--tasks", nargs="+", choices=tasks, default=default_tasks)
    parser.add_argument("--members", nargs="+", type=count, default=[16])
    parser.add_argument("--test-samples", type=count, default=4000, help="data.mnist1d_test_samples")
    parser.add_argument("--rounds", type=count, default=3)
    parser.add_argument("--batch-sizes", nargs="+", type=count, default=[2, 4, 8, 16, 32, 128])
    parser.add_argument("--pass-tasks", nargs="+", choices=tasks, default=["mnist1d_mlp", "mnist1d_cnn"])
    parser.add_argument("--device", type=known_device, default="cpu")
    parser.add_argument("--out", type=writable_file, default=None)
    parser.add_argument("--note", default="", help="what else ran on the machine, for the report")
    args = parser.parse_args(argv)
    runtime = Runtime(resolve_device(args.device))
    torch.set_num_threads(1)
    use_deterministic_kernels(runtime.device)
    cuda = runtime.device.type == "cuda"
    out = args.out or ROOT / "reports/bench" / ("population_eval_cuda.md" if cuda else "population_eval.md")
    rows = []
    for task_name, k in itertools.product(args.tasks, args.members):
        cfgs = configs(task_name, "batchnorm", 32, k, 1, args.device)
        for cfg in cfgs:
            cfg.data.mnist1d_test_samples = args.test_samples
        data = prepare_data(cfgs[0], runtime)
        models = [prepare_model(cfg, data, runtime).to(runtime.device) for cfg in cfgs]
        on_device = data.to(runtime.device)
        task = task_for(cfgs[0])
        times = {way: [] for way in WAYS}
        for _ in range(args.rounds):
            for way in WAYS:
                times[way].append(evaluate_once(way, models, task, on_device, runtime))
        median = {way: statistics.median(t) for way, t in times.items()}
        rows.append((task_name, k, len(data.x_test), median))
        print(task_name, k, " ".join(f"{w} {t:.3f}s" for w, t in median.items()), flush=True)
    passes = []
    for task_name, k in itertools.product(args.pass_tasks, args.members):
        cfgs = configs(task_name, "batchnorm", 32, k, 1, args.device)
        data = prepare_data(cfgs[0], runtime)
        models = [prepare_model(cfg, data, runtime).to(runtime.device) for cfg in cfgs]
        on_device, task = data.to(runtime.device), task_for(cfgs[0])
        for bs in args.batch_sizes:
            times = {way: [] for way in ("wide", "one-by-one")}
            for _ in range(args.rounds):
                for way in times:
                    times[way].append(passes_once(way, models, task, on_device, bs, runtime))
            median = {way: statistics.median(t) for way, t in times.items()}
            passes.append((task_name, k, bs, median))
            print(task_name, k, bs, " ".join(f"{w} {t:.3f}s" for w, t in median.items()), flush=True)
    device = torch.cuda.get_device_name(runtime.device) if cuda else platform.processor() or "cpu"
    lines = [
        f"# Evaluating a population's members ({runtime.device.type})",
        "",
        f"normbench {normbench.__version__}, torch {torch.__version__}, {device}, {torch.get_num_threads()} thread(s); "
        f"one evaluation of every member's test error and loss (BatchNorm, eval mode, chunks of 1,000), "
        f"median of {args.rounds} interleaved rounds. {args.note}".rstrip(),
        "",
        "Reproduce: `python scripts/bench_population_eval.py --tasks "
        + " ".join(args.tasks)
        + f" --members {' '.join(map(str, args.members))} --test-samples {args.test_samples} "
        f"--rounds {args.rounds} --device {args.device} --batch-sizes {' '.join(map(str, args.batch_sizes))} "
        f"--pass-tasks {' '.join(args.pass_tasks)}`",
        "",
        "Seconds per evaluation of all members, and one-by-one's speed-up over the faster vectorized form:",
        "",
        "| task | members K | test samples | wide (s) | vmap (s) | one by one (s) | one by one vs vectorized |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {t} | {k} | {n:,} | {m['wide']:.3f} | {m['vmap']:.3f} | {m['one-by-one']:.3f} | "
            f"{min(m['wide'], m['vmap']) / m['one-by-one']:.2f}× |"
            for t, k, n, m in rows
        ),
        "",
        f"The training-mode passes at the run's batch size: every member's mini-batch error and PreciseBN "
        f"statistics over {PASS_SAMPLES:,} training samples each (BatchNorm), seconds for all members, and "
        "the vectorized (wide) population's speed-up over one by one:",
        "",
        "| task | members K | batch size | wide (s) | one by one (s) | wide vs one by one |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {t} | {k} | {bs} | {m['wide']:.3f} | {m['one-by-one']:.3f} | {m['one-by-one'] / m['wide']:.2f}× |"
            for t, k, bs, m in passes
        ),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
