"""The study's sweeps trained as populations against the same sweeps as separate runs, on all cores.

One slice of the small-batch study (its presets: every batch size from 2 to 128, three learning rates,
five seeds, so that a population holds the 15 runs of a cell as in the study), one norm per round: each
round trains that norm's runs twice, through
the population launcher (``hydra/launcher=population``, what ``make study`` uses) and through Hydra's
joblib launcher (one process per run, what ``--separate`` uses), each side into its own fresh folder,
``--jobs`` at a time; the sides alternate which goes first. The table gives each side's wall time of the
whole commands and the ratio, per round and in all, and checks that both sides wrote every run.

    python scripts/bench_study.py       # writes reports/bench/study_populations.md (about 30 minutes)
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_args import count, git_head, presets, seed_list
from worktree import ROOT

import normbench
from normbench import available_norms
from normbench.argtypes import writable_file

LAUNCHERS = {"populations": "population", "separate runs": "joblib"}
DEFAULT_OUT = ROOT / "reports/bench/study_populations.md"


def train(out: Path, preset: str, launcher: str, jobs: int, overrides: list[str]) -> float:
    """Seconds of one sweep, through normbench-run in ``out``; its failure ends the benchmark."""
    command = [
        str(Path(sys.executable).with_name("normbench-run")),
        f"experiment={preset}",
        f"hydra/launcher={launcher}",
        f"hydra.launcher.n_jobs={jobs}",
        "sweep.root=sweeps",
        *overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=out, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    if proc.returncode:  # its own error is on stderr above (a bad --overrides value: at once)
        raise SystemExit(
            f"bench_study.py: {' '.join(command[1:])}: exit status {proc.returncode}; nothing written"
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", choices=presets("experiment"), default=["curve_mlp", "curve_cnn"]
    )
    parser.add_argument(
        "--norms",
        nargs="+",
        choices=available_norms(),
        default=["batchnorm", "groupnorm"],
        help="one round each",
    )
    parser.add_argument("--seeds", type=seed_list, default="0,1,2,3,4", help="a sweep value")
    parser.add_argument("--jobs", type=count, default=os.cpu_count())
    parser.add_argument("--overrides", nargs="*", default=[], help="for both sides, e.g. batch_size=32")
    parser.add_argument("--out", type=writable_file, default=DEFAULT_OUT)
    args = parser.parse_args()
    rows, totals = [], dict.fromkeys(LAUNCHERS, 0.0)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {side: Path(tmp) / side.replace(" ", "_") for side in LAUNCHERS}
        for folder in folders.values():
            folder.mkdir()
        for i, norm in enumerate(args.norms):
            order = list(LAUNCHERS) if i % 2 == 0 else list(reversed(LAUNCHERS))
            seconds = dict.fromkeys(LAUNCHERS, 0.0)
            for side in order:
                for preset in args.presets:
                    overrides = [f"norm={norm}", f"seed={args.seeds}", *args.overrides]
                    seconds[side] += train(folders[side], preset, LAUNCHERS[side], args.jobs, overrides)
                totals[side] += seconds[side]
            runs = {side: len(list(folders[side].rglob("result.json"))) for side in LAUNCHERS}
            if len(set(runs.values())) != 1:
                raise SystemExit(f"bench_study.py: the sides wrote different numbers of runs: {runs}")
            rows.append(
                f"| {norm} ({order[0]} first) | {runs['populations']} | {seconds['separate runs']:.0f} | "
                f"{seconds['populations']:.0f} | {seconds['separate runs'] / seconds['populations']:.2f}x |"
            )
            print(rows[-1], flush=True)
    rows.append(
        f"| all | {runs['populations']} | {totals['separate runs']:.0f} | {totals['populations']:.0f} | "
        f"**{totals['separate runs'] / totals['populations']:.2f}x** |"
    )
    overrides = f", both sides with {' '.join(args.overrides)}" if args.overrides else ""
    lines = [
        "# The study as populations vs as separate runs",
        "",
        f"normbench {normbench.__version__} at {git_head()}, {platform.processor() or 'cpu'}, "
        f"{os.cpu_count()} cores, "
        f"{args.jobs} at a time. Presets {', '.join(args.presets)} (conf/experiment/), seeds {args.seeds}, "
        f"every batch size and learning rate of the preset, one norm per round{overrides}; wall time of the whole "
        "normbench-run commands (start-up, data, training, evaluation, records).",
        "",
        "Reproduce: `python scripts/bench_study.py --presets "
        f"{' '.join(args.presets)} --norms {' '.join(args.norms)} --seeds {args.seeds} --jobs {args.jobs}"
        + "".join(f" --overrides {' '.join(args.overrides)}" for _ in args.overrides[:1])
        + ("" if args.out == DEFAULT_OUT else f" --out {os.path.relpath(args.out, ROOT)}")
        + "`",
        "",
        "| round | runs (cumulative) | separate runs s | populations s | speed-up |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
