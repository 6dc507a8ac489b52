"""The population optimizer's step in this checkout against its step at other git revisions, and
against K torch optimizers stepping the members one by one (as K separate runs do).

The parameters are a wide population's (K members of a task's model, BatchNorm), the gradients random;
every implementation steps its own copy of the same tensors, the rounds interleave them in one process,
and the table gives the median time of one step of all K members (µs) and each one's ratio to this.

    python scripts/bench_optimizer.py --revisions 8ae5158 REV   # writes reports/bench/population_optimizer.md
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import itertools
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from bench_args import command_line, count, git_commit, git_head, presets
from bench_norms import wall_clock
from bench_population import configs
from worktree import ROOT, checkout

import normbench
from normbench.argtypes import writable_file
from normbench.experiment.build import prepare_data, prepare_model
from normbench.population.optim import PopulationOptimizer
from normbench.population.stacked import pack
from normbench.population.wide import stack_population
from normbench.runtime import Runtime
from normbench.train import make_optimizer

OPTIMIZERS = {"sgd": (0.9, 5e-4), "adamw": (0.9, 1e-2)}  # momentum (β₁), weight decay


def wide_params(task: str, members: int) -> list[torch.Tensor]:
    cfgs = configs(task, "batchnorm", 32, members, 10, "cpu")
    runtime = Runtime()
    data = prepare_data(cfgs[0], runtime)
    pop = stack_population([prepare_model(cfg, data, runtime) for cfg in cfgs], "wide")
    return [p.detach().clone() for p in pop.params.values()]


def population_step(cls: type, name: str, params: list[torch.Tensor]) -> Callable[[], None]:
    """One step of ``cls`` over its own copy of ``params``, packed as the training loop packs them (a
    population of one steps them as one flat tensor)."""
    params = [p.clone() for p in params]
    pack(params)
    k = params[0].shape[0]
    momentum, decay = (torch.full((k,), v, dtype=torch.float64) for v in OPTIMIZERS[name])
    opt = cls(name, params, momentum, decay)
    grads = [torch.randn_like(p) for p in params]
    lr, alive = torch.full((k,), 1e-3, dtype=torch.float64), torch.ones(k, dtype=torch.bool)
    return lambda: opt.step(grads, lr, alive, True)


def separate_steps(name: str, params: list[torch.Tensor]) -> Callable[[], None]:
    members = [[p[m].clone().requires_grad_() for p in params] for m in range(params[0].shape[0])]
    for member in members:
        for q in member:
            q.grad = torch.randn_like(q)
    opts = [make_optimizer(name, member, 1e-3, *OPTIMIZERS[name]) for member in members]

    def step() -> None:
        for opt in opts:
            opt.step()

    return step


def load_optimizer_class(tree: Path) -> type:
    spec = importlib.util.spec_from_file_location("baseline_optim", tree / "normbench/population/optim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PopulationOptimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tasks = presets("task")
    parser.add_argument("--tasks", nargs="+", choices=tasks, default=["mnist1d_mlp", "mnist1d_cnn"])
    parser.add_argument("--members", nargs="+", type=count, default=[1, 16, 64])
    parser.add_argument("--optimizers", nargs="+", choices=sorted(OPTIMIZERS), default=["sgd", "adamw"])
    parser.add_argument("--steps", type=count, default=200)
    parser.add_argument("--rounds", type=count, default=5)
    parser.add_argument("--revisions", nargs="+", type=git_commit, metavar="REV", required=True)
    parser.add_argument("--out", type=writable_file, default=ROOT / "reports/bench/population_optimizer.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with contextlib.ExitStack() as stack:
        classes = {rev: load_optimizer_class(stack.enter_context(checkout(rev))) for rev in args.revisions}
        classes["this"] = PopulationOptimizer
        for task, k, name in itertools.product(args.tasks, args.members, args.optimizers):
            params = wide_params(task, k)
            steps = {"separate": separate_steps(name, params)} | {
                rev: population_step(cls, name, params) for rev, cls in classes.items()
            }
            for step in steps.values():  # the first steps create the optimizers' state
                wall_clock(step, 3)
            times: dict[str, list[float]] = {key: [] for key in steps}
            for _ in range(args.rounds):
                for key, step in steps.items():
                    times[key].append(wall_clock(step, args.steps))
            t = {key: statistics.median(v) * 1e6 for key, v in times.items()}
            n = sum(p.numel() for p in params) // k
            rows.append(
                f"| {task} | {n:,} | {k} | {name} | "
                + " | ".join(f"{t[key]:,.0f} ({t[key] / t['this']:.2f}x)" for key in steps)
                + " |"
            )
            print(rows[-1], flush=True)
    lines = [
        "# The population optimizer's step",
        "",
        f"normbench {normbench.__version__}, torch {torch.__version__}, {platform.processor() or 'cpu'}, "
        f"1 thread; median over {args.rounds} interleaved rounds of {args.steps} steps each: µs per step of "
        "all K members, and in brackets each time over this checkout's. separate: K torch optimizers "
        f"(single-tensor path, as separate runs step); a revision: the PopulationOptimizer at it; this: the "
        f"PopulationOptimizer of the checkout that wrote the file ({git_head()}).",
        "",
        f"Reproduce: `python scripts/bench_optimizer.py {command_line(args)}`",
        "",
        "| task | parameters per member | K | optimizer | separate | " + " | ".join(classes) + " |",
        "|---|---:|---:|---|---:|" + "---:|" * len(classes),
        *rows,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
