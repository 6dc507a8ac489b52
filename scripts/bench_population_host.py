"""The host's work per step in feeding a population its batches: each member's batch drawn step by step
(:func:`~normbench.population.train.stepwise_batches`, any sampler) against each epoch drawn whole
(:func:`~normbench.population.train.member_batches` with i.i.d. sampling), both giving the same
(K, B) indices per step. On a GPU a captured step is one launch, and this is the host's main work
between launches, so it bounds the model-steps/s a population can reach.

    python scripts/bench_population_host.py      # writes reports/bench/population_host.md
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from bench_args import command_line, count, git_head
from bench_population import configs
from worktree import ROOT

import normbench
from normbench.argtypes import writable_file
from normbench.experiment.build import prepare_data
from normbench.population.train import member_batches, stepwise_batches

# step by step as on a GPU: 256 steps drawn per host-to-device copy (the copy itself left out here)
DRAWS: dict[str, Callable] = {
    "step by step": partial(stepwise_batches, chunk=256),
    "epoch at once": member_batches,
}


def seconds_per_step(draw: Callable, cfgs, data, steps: int) -> float:
    batches = draw(cfgs, data, torch.device("cpu"))
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", nargs="+", type=count, default=[16, 128, 512])
    parser.add_argument("--batch-sizes", nargs="+", type=count, default=[2, 32])
    parser.add_argument("--steps", type=count, default=2000)
    parser.add_argument("--rounds", type=count, default=3)
    parser.add_argument("--out", type=writable_file, default=ROOT / "reports/bench/population_host.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for k, batch in itertools.product(args.members, args.batch_sizes):
        cfgs = configs("mnist1d_mlp", "batchnorm", batch, k, args.steps, "cpu")
        data = prepare_data(cfgs[0])
        times: dict[str, list[float]] = {name: [] for name in DRAWS}
        for _ in range(args.rounds):
            for name, draw in DRAWS.items():
                times[name].append(seconds_per_step(draw, cfgs, data, args.steps))
        us = {name: statistics.median(t) * 1e6 for name, t in times.items()}
        rows.append((k, batch, us))
        print(f"K={k} batch {batch}: " + ", ".join(f"{n} {v:.1f} us/step" for n, v in us.items()), flush=True)
    first, second = DRAWS
    lines = [
        "# The host's work per step in feeding a population its batches",
        "",
        f"normbench {normbench.__version__} (commit {git_head()}), torch {torch.__version__}, "
        f"{platform.processor() or 'cpu'}, 1 thread; "
        f"MNIST-1D ({len(data.x_train):,} training samples), i.i.d. sampling, {args.steps} steps drawn "
        f"(epochs of {len(data.x_train)} // batch steps, each epoch's permutations included), median of "
        f"{args.rounds} interleaved rounds, on the CPU. `{first}`: each member's batch from its own stream "
        f"every step, stacked 256 steps at a time as for a GPU (the host-to-device copies left out); `{second}`: each member's epoch drawn whole, K of them stacked once. The same (K, B) "
        "indices either way (tests/test_population_train.py).",
        "",
        f"Reproduce: `python scripts/bench_population_host.py {command_line(args)}`",
        "",
        "The caps: K members' steps per second of this work alone, the most a population could reach "
        "with its step taking no time.",
        "",
        f"| members K | batch | {first} µs/step | {second} µs/step | ratio | {first}: cap | {second}: cap |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {k} | {b} | {us[first]:,.1f} | {us[second]:,.1f} | {us[first] / us[second]:.0f}x "
            f"| {k * 1e6 / us[first]:,.0f} | {k * 1e6 / us[second]:,.0f} |"
            for k, b, us in rows
        ),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
