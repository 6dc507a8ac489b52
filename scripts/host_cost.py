"""Host cost of every plugin's forward+backward on its CUDA path, measured without a GPU.

At small shapes a norm on a GPU is bound by host time: Python, autograd and one launch per op, the
kernels running behind. Here CPU tensors take the Triton path (Triton's interpreter mode lets them
in) with every Triton launch stubbed out, so nothing but that host work runs: the Functions, the
small-tensor torch ops around the kernels and the launch wrappers up to Triton's launcher, the
specialization key of each launch included (the launcher itself and CUDA's launch cost are not). The ratio is to ``nn.BatchNorm2d``, whose
tiny native CPU kernels stand in for its launches. A proxy for the small-shape column of
norms_cuda.md, for changes made without a GPU at hand; plugins without a Triton path run their
torch formula (on tiny tensors, mostly host work too).

``--baseline REV`` measures the code of a git revision too (in a temporary worktree, this script
importing normbench from it), and ``--gpu norms_cuda.json`` adds the GPU's measured ratios at the
small shape with the rank correlation between them and the proxy: measure the proxy at the revision
the GPU measured, to see how well it predicts the GPU.

    python scripts/host_cost.py --baseline 3368aa0 --gpu reports/bench/norms_cuda.json
                                                # writes reports/bench/host_cost_cpu.md
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: CPU tensors may enter the path

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from bench_args import count, git_commit, norms_json
from bench_norms import BENCH_OPTIONS, fwd_bwd, median_ratio, time_interleaved
from scipy import stats
from worktree import ROOT, checkout

import normbench
from normbench import available_norms, build_norm
from normbench.accel import _triton
from normbench.accel import planes as _planes
from normbench.argtypes import writable_file

SHAPE = (16, 8, 2, 2)  # two ghost batches of 8; tiny, so that CPU arithmetic is negligible
GPU_SHAPE, GPU_PRECISION = [32, 64, 32, 32], "fp32"  # the norms_cuda.json rows compared with


def takes_triton_path(module: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module``'s forward launches Triton kernels on ``x``."""
    launched: list[object] = []
    stub = _triton._launch
    _triton._launch = lambda *args, **kwargs: launched.append(args)
    try:
        with torch.no_grad():
            module(x)
    finally:
        _triton._launch = stub
    return bool(launched)


def keyed(kernel, grid: tuple[int, ...], *args, **constexprs) -> None:
    """A launch's host bookkeeping without the launch: the key of its compiled specialization, formed as
    ``_triton._launch`` forms it (at revisions before ``_triton._key``, by the same expression)."""
    if hasattr(_triton, "_key"):
        _triton._key(kernel, args, constexprs)
    else:
        (kernel, args[0].device, *map(_triton._specialization, args), *constexprs.items())


def measure(rounds: int, inner: int) -> list[dict]:
    torch.manual_seed(0)
    x, grad = torch.randn(SHAPE), torch.randn(SHAPE)
    modules = {"BatchNorm2d": torch.nn.BatchNorm2d(SHAPE[1])}
    modules |= {name: build_norm(name, SHAPE[1], **BENCH_OPTIONS.get(name, {})) for name in available_norms()}
    cases = {name: fwd_bwd(m.train(), x, grad) for name, m in modules.items()}
    samples = time_interleaved(cases, rounds, inner)
    paths = {name: takes_triton_path(m, x) for name, m in modules.items() if name != "BatchNorm2d"}
    return [
        {
            "norm": name,
            "path": "Triton" if paths[name] else "torch",
            "us": statistics.median(samples[name]) * 1e6,
            "ratio": median_ratio(samples[name], samples["BatchNorm2d"]),
        }
        for name in paths
    ] + [
        {
            "norm": "BatchNorm2d",
            "path": "torch",
            "us": statistics.median(samples["BatchNorm2d"]) * 1e6,
            "ratio": 1.0,
        }
    ]


def measure_at(rev: str, rounds: int, inner: int) -> list[dict]:
    """:func:`measure` run on the code of git revision ``rev`` (this script, that revision's normbench)."""
    with checkout(rev) as tree:
        out = tree / "rows.json"
        command = [
            sys.executable,
            __file__,
            "--rounds",
            str(rounds),
            "--inner",
            str(inner),
            "--json",
            str(out),
        ]
        subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
        return json.loads(out.read_text())


def revision() -> str:
    """The checkout's commit, marked when tracked files differ from it."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    )
    return (head or "unknown") + (" with uncommitted changes" if dirty.stdout.strip() else "")


def gpu_ratios(saved: dict) -> tuple[dict[str, float], dict]:
    """The Triton path's ratio to BatchNorm2d per plugin at GPU_SHAPE in GPU_PRECISION (of the saved
    norms_cuda.json ``saved``), and the file's metadata."""
    rows = [r for r in saved["rows"] if r["shape"] == GPU_SHAPE and r["precision"] == GPU_PRECISION]
    return {r["norm"]: r["vs_bn2d"] for r in rows}, saved


def to_markdown(
    rows: list[dict],
    rounds: int,
    inner: int,
    baseline: tuple[str, list[dict]] | None = None,
    gpu: tuple[dict[str, float], dict] | None = None,
) -> str:
    base = {r["norm"]: r["ratio"] for r in baseline[1]} if baseline else {}
    lines = [
        "# Host cost of the plugins' CUDA path, measured on the CPU",
        "",
        f"Input {SHAPE} (float32, training mode, forward+backward), Triton launches stubbed out "
        f"(`scripts/host_cost.py`: what is timed and what is not). Medians over {rounds} interleaved "
        f"rounds of {inner} calls; `vs BN2d` is the median of per-round ratios to `nn.BatchNorm2d`. "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, triton {_triton.triton.__version__}, normbench {normbench.__version__} "
        f"(commit {revision()}). "
        "A proxy for host-bound GPU shapes, not a GPU measurement. Options: "
        f"{BENCH_OPTIONS}.",
        "",
        f"Reproduce: `python scripts/host_cost.py --rounds {rounds} --inner {inner}"
        + (f" --baseline {baseline[0]}" if baseline else "")
        + (" --gpu reports/bench/norms_cuda.json" if gpu else "")
        + "`",
        "",
    ]
    header, rule = "| norm | path | host us | vs BN2d |", "|---|---|---:|---:|"
    if baseline:
        header, rule = header + f" vs BN2d at {baseline[0]} |", rule + "---:|"
    if gpu:
        header, rule = header + f" GPU vs BN2d ({gpu[1]['device']}) |", rule + "---:|"
        lines += [correlation(base or {r["norm"]: r["ratio"] for r in rows}, gpu, baseline), ""]
    lines += [header, rule]
    for row in sorted(rows, key=lambda r: r["ratio"]):
        cells = [row["norm"], row["path"], f"{row['us']:.1f}", f"{row['ratio']:.2f}x"]
        if baseline:
            cells.append(f"{base[row['norm']]:.2f}x" if row["norm"] in base else "-")
        if gpu:
            cells.append(f"{gpu[0][row['norm']]:.2f}x" if row["norm"] in gpu[0] else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def correlation(proxy: dict[str, float], gpu: tuple[dict[str, float], dict], baseline) -> str:
    """The sentence comparing the proxy's ratios with the GPU's."""
    common = sorted(set(proxy) & set(gpu[0]))
    rho, p = stats.spearmanr([proxy[n] for n in common], [gpu[0][n] for n in common])
    scale = [gpu[0][n] / proxy[n] for n in common]
    which = f"the proxy at {baseline[0]}" if baseline else "the proxy"
    return (
        f"GPU column: `{GPU_PRECISION}` rows at {tuple(GPU_SHAPE)} of norms_cuda.json ({gpu[1]['device']}, "
        f"torch {gpu[1]['torch']}; the Triton path's ratio to BatchNorm2d). Spearman rank correlation of "
        f"{which} with it over the {len(common)} plugins: {rho:.2f} (p = {p:.2g}); the GPU's ratios were "
        f"{min(scale):.2f} to {max(scale):.2f} times those of {which} (median {statistics.median(scale):.2f})."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=count, default=15)
    parser.add_argument("--inner", type=count, default=200)
    parser.add_argument("--out", type=writable_file, default=Path("reports/bench/host_cost_cpu.md"))
    parser.add_argument(
        "--baseline", type=git_commit, metavar="REV", help="also measure the code of this git revision"
    )
    parser.add_argument("--gpu", type=norms_json, metavar="JSON", help="norms_cuda.json to compare with")
    parser.add_argument("--json", type=writable_file, help=argparse.SUPPRESS)  # rows only (for --baseline)
    args = parser.parse_args()
    if not _triton.AVAILABLE:
        parser.error("triton is not installed (pip install triton, or the dev extra)")
    _planes.TRITON_DEVICES.add("cpu")
    _planes.NATIVE_BELOW = 0  # the Triton path at every size, as in norms_cuda.md's Triton column
    stub = _triton._launch
    _triton._launch = keyed
    try:
        rows = measure(args.rounds, args.inner)
    finally:
        _triton._launch = stub
    if args.json:
        args.json.write_text(json.dumps(rows))
        return
    baseline = (args.baseline, measure_at(args.baseline, args.rounds, args.inner)) if args.baseline else None
    gpu = gpu_ratios(args.gpu) if args.gpu else None
    text = to_markdown(rows, args.rounds, args.inner, baseline, gpu)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
