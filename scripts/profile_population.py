"""Where a population's training step spends its time: each operator's time per step, the step's busy
time on the device, and on CUDA the captured step's wall time beside it.

For each task and batch size, K members (built as ``bench_population.py`` builds them) train as one
population of ``--form``, eagerly under ``torch.profiler``, for S and for 2S steps: the difference of
the two profiles is S training steps alone (model stacking, the capture and the final evaluation
cancel). The eager and the captured (CUDA) steps are timed the same way. A captured step that takes
about the eager step's device-busy time is bound by the device's work (fewer passes over memory,
fewer or better kernels would speed it up); one far above it waits on the host between replays.

Each operator's bytes read and written per step (:class:`normbench.capture.OperatorCount`, counted in
one eager step, the third: the difference of a 3-step and a 2-step run, the first two steps making the
optimizer's state) over its time with what it calls give the bandwidth it reaches. A small model's
step is bound by memory: an operator far below the card's bandwidth (about 3,350 GB/s on an H100 SXM,
4,800 on an H200) is one whose kernel could do better, and the step's bytes over the card's bandwidth
are the least time a step of these operators can take.

    python scripts/profile_population.py --device cuda --members 512 --out reports/bench/profile_population_cuda.md
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform
from collections import Counter
from dataclasses import dataclass, replace

import torch
from bench_args import command_line, count, presets
from bench_population import check_tasks, configs, sync
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import normbench
from normbench import available_norms
from normbench.argtypes import known_device, writable_file
from normbench.capture import OperatorCount
from normbench.config import ConfigError
from normbench.experiment.build import prepare_data, prepare_model
from normbench.population.train import fit_population
from normbench.runtime import Runtime, resolve_device, use_deterministic_kernels

TOP = 12  # operators listed per setting
BUSY = "(device busy)"
LAUNCHES = "(kernels and copies)"


def loop_seconds(cfgs, models, data, runtime: Runtime, form: str) -> float:
    """Seconds of one population's training loop (``form``, ``:graph`` captured) from ``models``' weights
    (trained further in place: the time of a step does not depend on its weights)."""
    form, _, graph = form.partition(":")
    runtime = replace(runtime, cuda_graph=graph == "graph")
    sync(runtime)
    return fit_population(cfgs, models, data, runtime, form=form)[0].train_time_s


def operator_times(cfgs, models, data, runtime: Runtime, form: str) -> tuple[Counter, Counter]:
    """Microseconds of each operator's own time (on the device where there is one) in one population's
    training, the device's whole busy time under ``BUSY`` and, on CUDA, how many kernels and copies it
    ran under ``LAUNCHES`` (what a captured step replays: each costs a few µs however small); and each
    operator's time with what it calls (a convolution's work is done by the backend operator it calls)."""
    cuda = runtime.device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    with profile(activities=activities) as prof:
        loop_seconds(cfgs, models, data, runtime, form)
        sync(runtime)
    own: Counter = Counter()
    inclusive: Counter = Counter()
    for event in prof.key_averages():
        if cuda and event.device_type == DeviceType.CUDA:  # a kernel or a copy: the device's own work
            own[BUSY] += event.self_device_time_total
            own[LAUNCHES] += event.count
        elif event.device_type == DeviceType.CPU:
            own[event.key] += event.self_device_time_total if cuda else event.self_cpu_time_total
            inclusive[event.key] += event.device_time_total if cuda else event.cpu_time_total
    if not cuda:
        own[BUSY] = sum(own.values())
    return own, inclusive


def with_steps(cfgs, steps: int) -> list:
    """Copies of ``cfgs`` that train ``steps`` steps."""
    copies = [copy.deepcopy(cfg) for cfg in cfgs]
    for cfg in copies:
        cfg.train.steps = steps
    return copies


def operators_and_bytes(cfgs, models, data, runtime: Runtime, form: str) -> tuple[int, Counter]:
    """How many operators one population's eager training dispatches, and the bytes each kind of
    operator reads and writes (:class:`OperatorCount`)."""
    with OperatorCount() as counted:
        loop_seconds(cfgs, models, data, runtime, form.partition(":")[0])
    return counted.count, counted.bytes


@dataclass
class StepProfile:
    """One training step's profile: each operator's own time and its time with what it calls (µs),
    the bytes each operator reads and writes, how many operators it dispatches, and the loop's wall
    time per step (ms) by form."""

    own: Counter
    inclusive: Counter
    moved: Counter
    operators: int
    walls: dict[str, float]


def step_profile(cfgs, long, models, data, runtime: Runtime, form: str, steps: int) -> StepProfile:
    """The profile of one training step: times are the difference between ``long`` (the configs
    ``cfgs`` with twice their ``steps``) and ``cfgs``, eager and, on CUDA, captured; counts are of the
    third step (the same every step once the first two made the optimizer's state), between 3 steps
    and 2."""
    loop_seconds(cfgs, models, data, runtime, form)  # a warm-up: first calls' one-off costs
    (short_own, short_all), (long_own, long_all) = (
        operator_times(c, models, data, runtime, form) for c in (cfgs, long)
    )
    own = Counter({k: (long_own[k] - short_own[k]) / steps for k in long_own})
    inclusive = Counter({k: (long_all[k] - short_all[k]) / steps for k in long_all})
    (fewer, fewer_bytes), (more, more_bytes) = (
        operators_and_bytes(with_steps(cfgs, n), models, data, runtime, form) for n in (2, 3)
    )
    moved = Counter({k: more_bytes[k] - fewer_bytes[k] for k in more_bytes})
    forms = {"eager": form, **({"captured": f"{form}:graph"} if runtime.device.type == "cuda" else {})}
    walls = {}
    for name, timed in forms.items():
        short, longer = (loop_seconds(c, models, data, runtime, timed) for c in (cfgs, long))
        walls[name] = (longer - short) / steps * 1e3
    return StepProfile(own, inclusive, moved, more - fewer, walls)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tasks = presets("task")
    parser.add_argument("--tasks", nargs="+", choices=tasks, default=["mnist1d_mlp", "mnist1d_cnn"])
    parser.add_argument("--norm", choices=available_norms(), default="batchnorm")
    parser.add_argument("--batch-sizes", nargs="+", type=count, default=[2, 32])
    parser.add_argument("--members", type=count, default=512)
    parser.add_argument("--steps", type=count, default=100, help="S: S and 2S steps are profiled")
    parser.add_argument("--form", choices=["auto", "wide", "vmap"], default="wide")
    parser.add_argument("--device", type=known_device, default="cuda")
    parser.add_argument("--out", type=writable_file, required=True)
    args = parser.parse_args(argv)
    try:
        check_tasks(args.tasks)
    except ConfigError as exc:
        parser.error(str(exc))
    runtime = Runtime(resolve_device(args.device))
    cuda = runtime.device.type == "cuda"
    torch.set_num_threads(1)
    use_deterministic_kernels(runtime.device)
    device = torch.cuda.get_device_name(runtime.device) if cuda else platform.processor() or "cpu"
    where = "device" if cuda else "CPU"
    lines = [
        f"# Where a population's training step spends its time ({runtime.device.type})",
        "",
        f"normbench {normbench.__version__}, torch {torch.__version__}, {device}; K={args.members} members "
        f"of norm {args.norm} as one {args.form} population (SGD momentum 0.9), per training step: the "
        f"difference between {2 * args.steps} and {args.steps} steps, so model stacking, the capture and "
        "the final evaluation are left out. `busy`: the kernels' time on the device per eager step "
        "(on the CPU: every operator's own time).",
        "",
        f"Reproduce: `python scripts/profile_population.py {command_line(args)} --out FILE`",
        "",
    ]
    for task, batch in itertools.product(args.tasks, args.batch_sizes):
        cfgs, long = (
            configs(task, args.norm, batch, args.members, n, args.device)
            for n in (args.steps, 2 * args.steps)
        )
        data = prepare_data(cfgs[0], runtime)
        models = [prepare_model(cfg, data, runtime) for cfg in cfgs]
        step = step_profile(cfgs, long, models, data.to(runtime.device), runtime, args.form, args.steps)
        per_op, moved, walls, operators = step.own, step.moved, step.walls, step.operators
        busy = per_op.pop(BUSY) / 1e3
        launches = per_op.pop(LAUNCHES, None)
        megabytes = sum(moved.values()) / 1e6
        # a difference of two timings: too few steps leave it within the timings' noise
        resolved = {name: ms for name, ms in walls.items() if ms > 0}
        summary = ", ".join(
            f"{name} {ms:.3f} ms/step" if name in resolved else f"{name} not resolved (raise --steps)"
            for name, ms in walls.items()
        )
        fastest = min(resolved.values(), default=None)
        lines += [
            f"## {task}, batch {batch}",
            "",
            f"{summary}; busy {busy:.3f} ms/step"
            + (f" in {launches:.0f} kernels and copies" if launches is not None else "")
            + (
                f" (captured / busy: {resolved['captured'] / busy:.2f})"
                if "captured" in resolved and busy > 0
                else ""
            )
            + (f"; {args.members * 1e3 / fastest:,.0f} model-steps/s." if fastest else "."),
            "",
            f"| operator | {where} µs/step | share of busy |",
            "|---|---:|---:|",
            *(
                f"| `{name}` | {us:,.1f} | {f'{us / 1e3 / busy:.0%}' if busy > 0 else ''} |"
                for name, us in per_op.most_common(TOP)
                if round(us, 1) > 0  # else within the timings' noise, or printed as 0.0
            ),
            "",
            f"Per step: {operators:.0f} operators dispatched, reading and writing {megabytes:,.1f} MB"
            + (f" ({megabytes / busy:,.1f} GB/s over the busy time)." if busy > 0 else ".")
            + " The operators that move the most, each with the time of what it calls:",
            "",
            f"| operator | MB/step | {where} µs/step | GB/s |",
            "|---|---:|---:|---:|",
            *(
                f"| `{name}` | {size / 1e6:,.2f} | "
                + (
                    f"{step.inclusive[name]:,.1f} | {size / step.inclusive[name] / 1e3:,.1f} |"
                    if round(step.inclusive[name], 1) > 0  # else within the timings' noise
                    else " | |"
                )
                for name, size in moved.most_common(TOP)
                if size > 0
            ),
            "",
        ]
        print(f"{task} batch {batch}: {summary}; busy {busy:.3f} ms/step", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines))  # after every setting: a run cut short keeps what it finished
    print(f"wrote {args.out}")


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        raise SystemExit(f"profile_population: error: {exc}") from None
