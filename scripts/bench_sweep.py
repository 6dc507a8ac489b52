"""Sweep and report speed.

1. The same 16-run sweep through Hydra's basic launcher (serial) and the joblib launcher (2 processes),
   each into a fresh folder, wall time of the whole command; target speed-up >= 1.7x on 2 cores.
2. normbench-report on 1,000 and 10,000 synthetic run records (with histories), each build in a fresh
   process, median over rounds; target <= 10 s for 10,000 and near-linear growth. ``--baseline REV``
   also times the normbench of a git revision on the same records, the rounds alternating.

    python scripts/bench_sweep.py                 # writes reports/bench/sweep.md
    python scripts/bench_sweep.py --skip-sweep --baseline 0d0959e --out FILE   # the report part only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_args import count, git_commit
from worktree import ROOT, checkout

import normbench
from normbench.argtypes import writable_file

GRID = ["norm=batchnorm,groupnorm,layernorm,identity", "batch_size=16,32", "seed=0,1"]


def time_sweep(launcher: str, root: Path, steps: int) -> float:
    cmd = [
        sys.executable, "-m", "normbench", "-m", *GRID, "task=mnist1d_cnn", "train.budget=steps",
        f"train.steps={steps}", f"sweep.root={root}", f"hydra/launcher={launcher}",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or "16 completed" not in proc.stdout:
        raise RuntimeError(f"{launcher} sweep failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def time_report(code: Path, records: Path, out: Path) -> float:
    """Seconds the report on ``records`` takes to build with the normbench at ``code``, in a fresh
    process (imports not counted)."""
    timer = (
        "import sys, time; from normbench.report.build import build_report; start = time.perf_counter(); "
        "build_report([sys.argv[1]], sys.argv[2]); print(time.perf_counter() - start)"
    )
    command = [sys.executable, "-c", timer, str(records), str(out)]
    proc = subprocess.run(
        command, cwd=code, env={**os.environ, "PYTHONPATH": str(code)}, capture_output=True, text=True
    )
    if proc.returncode:
        raise RuntimeError(f"report with {code} failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.split()[-1])


def time_reports(codes: dict[str, Path], tmp: Path, rounds: int) -> dict[tuple[str, int], float]:
    """Median seconds per (code, record count), the codes alternating within each round."""
    samples: dict[tuple[str, int], list[float]] = {}
    for n in (1000, 10000):
        records = tmp / f"records_{n}"
        synthetic_records(records, n)
        for r in range(rounds):
            for name, code in codes.items():
                seconds = time_report(code, records, tmp / f"report_{name}_{n}_{r}")
                samples.setdefault((name, n), []).append(seconds)
    return {key: statistics.median(values) for key, values in samples.items()}


def synthetic_records(root: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    norms = ["batchnorm", "layernorm", "instancenorm", "groupnorm", "identity"]
    batch_sizes = [2, 4, 8, 16, 32, 64, 128]
    for i in range(n):
        norm, bs = norms[i % 5], batch_sizes[(i // 5) % 7]
        task = ["mnist1d_mlp", "mnist1d_cnn"][(i // 35) % 2]
        budget = ["epochs", "steps"][(i // 70) % 2]
        err = min(0.95, max(0.02, 0.3 + (0.2 if norm == "batchnorm" and bs < 8 else 0) + rng.gauss(0, 0.02)))
        record = {
            "schema_version": 2,
            "status": "completed" if rng.random() > 0.02 else "diverged",
            "config_hash": f"{i:016x}",
            "config": {
                "task": {"name": task},
                "norm": {"name": norm},
                "batch_size": bs,
                "seed": i // 140,
                "train": {"budget": budget},
                "data": {"sampler": "iid"},
            },
            "metrics": {"test_error": err, "test_loss": 1.0, "train_error": err - 0.05, "train_loss": 0.9},
            "history": [
                {"step": k * 10, "epoch": k, "train_loss": 1.0 / k, "test_error": err + 0.1 / k}
                for k in range(1, 11)
            ],
            "steps": 100,
            "lr": 0.1,
            "wall_time_s": 1.0,
            "finished_at": f"2026-01-01T00:00:{i % 60:02d}",
        }
        folder = root / f"{i:016x}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps(record))


def reproduce(args: argparse.Namespace) -> str:
    """The command that measures what ``args`` asked for (``--out`` left out)."""
    words = ["python scripts/bench_sweep.py"]
    words += ["--skip-sweep"] if args.skip_sweep else [f"--steps {args.steps}"] * (args.steps != 5000)
    words += [f"--rounds {args.rounds}"] * (args.rounds != 3)
    words += [f"--baseline {args.baseline}"] * bool(args.baseline)
    return " ".join(words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=count, default=5000, help="training steps per sweep run")
    parser.add_argument("--skip-sweep", action="store_true")
    parser.add_argument("--rounds", type=count, default=3, help="report builds per record count")
    parser.add_argument(
        "--baseline", type=git_commit, metavar="REV", help="also time the report at this git revision"
    )
    parser.add_argument(
        "--out", type=writable_file, default=Path(__file__).parents[1] / "reports/bench/sweep.md"
    )
    args = parser.parse_args()
    lines = [
        "# Sweep and report speed",
        "",
        f"{os.cpu_count()} cores, normbench {normbench.__version__}, Python {platform.python_version()}. "
        f"Reproduce: `{reproduce(args)}`. Timings on this shared machine swing between runs"
        + ("." if args.skip_sweep else "; both launchers ran back to back in one invocation."),
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.skip_sweep:
            basic = time_sweep("basic", tmp / "basic", args.steps)
            joblib = time_sweep("joblib", tmp / "joblib", args.steps)
            lines += [
                f"## Launchers: 16 runs (`{' '.join(GRID)} task=mnist1d_cnn train.budget=steps "
                f"train.steps={args.steps}`), whole command wall time",
                "",
                "| launcher | wall s | speed-up |",
                "|---|---:|---:|",
                f"| basic (serial) | {basic:.1f} | 1.00x |",
                f"| joblib (2 processes, 1 torch thread each) | {joblib:.1f} | {basic / joblib:.2f}x |",
                "",
                "Target: >= 1.7x.",
                "",
            ]
        with contextlib.ExitStack() as stack:
            codes = {"this": ROOT}
            if args.baseline:
                codes[args.baseline] = stack.enter_context(checkout(args.baseline))
            timings = time_reports(codes, tmp, args.rounds)
        lines += [
            "## normbench-report on synthetic records",
            "",
            "Full report: reading, tables, figures (PNG + SVG), report.md. Records carry 10 history points. "
            f"Each build in a fresh process, median of {args.rounds} round(s)"
            + (
                f", alternating with the code of {args.baseline} on the same records."
                if args.baseline
                else "."
            ),
            "",
        ]
        head = "| records | seconds | per 1,000 records |"
        if args.baseline:
            head += f" seconds at {args.baseline} | {args.baseline} / this |"
        lines += [head, "|---:" * head.count(" | ") + "|---:|"]
        for n in (1000, 10000):
            t = timings["this", n]
            row = f"| {n:,} | {t:.2f} | {t / n * 1000:.2f} |"
            if args.baseline:
                row += f" {timings[args.baseline, n]:.2f} | {timings[args.baseline, n] / t:.2f}x |"
            lines.append(row)
        lines += [
            "",
            f"Growth 1,000 → 10,000: {timings['this', 10000] / timings['this', 1000]:.1f}x for 10x the "
            "records (fixed costs such as the figures make it sub-linear). Target: <= 10 s for 10,000.",
        ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
