"""How long the population launcher takes to compose a multirun's job configs: Hydra's own
``load_sweep_config`` per job against :class:`normbench.population.sweep_configs.SweepComposer`, side by
side in one process over interleaved rounds (medians), on a sweep of the curve study's shape.

    python scripts/bench_compose.py [--rounds 5] [--out reports/bench/compose.md]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench_args import count
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

from normbench.argtypes import writable_file
from normbench.cli import CONF_DIR
from normbench.population.sweep_configs import SweepComposer

NORMS, BATCHES, SEEDS, LRS = ("batchnorm", "groupnorm"), (2, 4), range(10), (0.05, 0.1, 0.2)
MASTER = [
    "hydra/launcher=population",
    "experiment=curve_cnn",
    f"norm={','.join(NORMS)}",
    f"batch_size={','.join(map(str, BATCHES))}",
    f"seed={','.join(map(str, SEEDS))}",
    f"optim.lr={','.join(map(str, LRS))}",
]
JOBS = [
    ["experiment=curve_cnn", f"norm={n}", f"batch_size={b}", f"seed={s}", f"optim.lr={lr}"]
    for n in NORMS
    for b in BATCHES
    for s in SEEDS
    for lr in LRS
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=count, default=5)
    parser.add_argument("--out", type=writable_file, default=Path("reports/bench/compose.md"))
    args = parser.parse_args()
    hydra_ms, ours_ms = [], []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=MASTER, run_mode=RunMode.MULTIRUN)
        for _ in range(args.rounds):
            start = time.perf_counter()
            for job in JOBS:
                loader.load_sweep_config(master, job)
            hydra_ms.append((time.perf_counter() - start) / len(JOBS) * 1e3)
            composer = SweepComposer(loader, master)  # a fresh one: its compositions count
            start = time.perf_counter()
            for job in JOBS:
                composer.compose(job)
            ours_ms.append((time.perf_counter() - start) / len(JOBS) * 1e3)
    ratios = [h / o for h, o in zip(hydra_ms, ours_ms, strict=True)]
    text = "\n".join(
        [
            "# Composing a multirun's job configs",
            "",
            f"{len(JOBS)} jobs of `experiment=curve_cnn` ({len(NORMS)} norms x {len(BATCHES)} batch sizes x "
            f"{len(SEEDS)} seeds x {len(LRS)} learning rates), medians over {args.rounds} interleaved rounds in "
            f"one process; SweepComposer composes each set of group choices once (here {len(composer.bases)}) "
            "and applies each job's value overrides to a copy.",
            "",
            "Reproduce: `python scripts/bench_compose.py"
            + ("" if args.out == Path("reports/bench/compose.md") else f" --out {args.out}")
            + "`",
            "",
            "| Hydra load_sweep_config, ms/job | SweepComposer, ms/job | ratio |",
            "|---:|---:|---:|",
            f"| {statistics.median(hydra_ms):.1f} | {statistics.median(ours_ms):.1f} | "
            f"{statistics.median(ratios):.1f}x |",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
