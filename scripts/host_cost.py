"""Host cost of every plugin's forward+backward on its CUDA path, measured without a GPU.

At small shapes a norm on a GPU is bound by host time: Python, autograd and one launch per op, the
kernels running behind. Here CPU tensors take the Triton path (Triton's interpreter mode lets them
in) with every Triton launch stubbed out, so nothing but that host work runs: the Functions, the
small-tensor torch ops around the kernels and the launch wrappers up to Triton's launcher (the
launcher itself and CUDA's launch cost are not included). The ratio is to ``nn.BatchNorm2d``, whose
tiny native CPU kernels stand in for its launches. A proxy for the small-shape column of
norms_cuda.md, for changes made without a GPU at hand; plugins without a Triton path run their
torch formula (on tiny tensors, mostly host work too).

    python scripts/host_cost.py                  # writes reports/bench/host_cost_cpu.md
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: CPU tensors may enter the path

import argparse
import platform
import statistics
from pathlib import Path

import torch
from bench_norms import BENCH_OPTIONS, fwd_bwd, median_ratio, time_interleaved

import normbench
from normbench import available_norms, build_norm
from normbench.norms import _planes, _triton

SHAPE = (16, 8, 2, 2)  # two ghost batches of 8; tiny, so that CPU arithmetic is negligible


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


def to_markdown(rows: list[dict], rounds: int, inner: int) -> str:
    lines = [
        "# Host cost of the plugins' CUDA path, measured on the CPU",
        "",
        f"Input {SHAPE} (float32, training mode, forward+backward), Triton launches stubbed out "
        f"(`scripts/host_cost.py`: what is timed and what is not). Medians over {rounds} interleaved "
        f"rounds of {inner} calls; `vs BN2d` is the median of per-round ratios to `nn.BatchNorm2d`. "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, triton {_triton.triton.__version__}, normbench {normbench.__version__}. "
        "A proxy for host-bound GPU shapes, not a GPU measurement. Options: "
        f"{BENCH_OPTIONS}.",
        "",
        f"Reproduce: `python scripts/host_cost.py --rounds {rounds} --inner {inner}`",
        "",
        "| norm | path | host us | vs BN2d |",
        "|---|---|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: r["ratio"]):
        lines.append(f"| {row['norm']} | {row['path']} | {row['us']:.1f} | {row['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--inner", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/host_cost_cpu.md"))
    args = parser.parse_args()
    if not _triton.AVAILABLE:
        parser.error("triton is not installed (pip install triton, or the dev extra)")
    _planes.TRITON_DEVICES.add("cpu")
    _planes.NATIVE_BELOW = 0  # the Triton path at every size, as in norms_cuda.md's Triton column
    stub = _triton._launch
    _triton._launch = lambda *args, **kwargs: None
    try:
        text = to_markdown(measure(args.rounds, args.inner), args.rounds, args.inner)
    finally:
        _triton._launch = stub
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
