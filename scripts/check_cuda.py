"""Every registered plugin on a CUDA device against the same module in float64 on the CPU.

For each plugin: three training steps and an eval forward on (8, 16, 6, 6) images (and (8, 16)
features where the plugin takes them), comparing outputs, input and parameter gradients and buffers;
device and dtype must be preserved. On CUDA the plugins run their Triton kernels where they have one
(normbench.accel, "triton": ``runtime.kernels=auto``, at every size), else their formulas (the fused
Functions are CPU-only), the elementwise ones through torch.compile: all three are checked ("triton",
"compiled": ``runtime.kernels=compiled``, "eager": ``runtime.kernels=torch``), in float32 and under bfloat16 autocast with a bfloat16 input (output and input gradient
must stay bfloat16; the root-mean-square relative error within 2e-2, bfloat16 keeping 8
significant bits). Needs only torch (no Hydra).
Writes a markdown table.

    PYTHONPATH=. python scripts/check_cuda.py --out reports/bench/cuda_check.md

Without a GPU, ``--device cpu`` runs the same comparison on the CPU: the Triton path through Triton's
interpreter (``TRITON_INTERPRET=1``), and the eager formulas (torch.compile of the formulas is CUDA-only).
"""

from __future__ import annotations

import argparse
import copy
import math
from contextlib import nullcontext

import torch

import normbench.accel.planes as planes
from normbench import available_norms, build_norm, norm_spec
from normbench.accel import _triton, choose_kernels
from normbench.argtypes import known_device, writable_file
from normbench.norms.frozen_batchnorm import FrozenBatchNorm

# ghost batches of 3, 3 and 2 (the kernels' smaller last group); r and d in force from the first step
OPTIONS = {"ghost_batchnorm": {"ghost_batch_size": 3}, "batchrenorm": {"warmup_steps": 0}}
TOLERANCE = {"fp32": 1e-3, "bf16": 2e-2}
PATHS = ("triton", "compiled", "eager")
SETTINGS = {"triton": "auto", "compiled": "compiled", "eager": "torch"}  # path -> runtime.kernels


def check(name: str, shape: tuple[int, ...], device: torch.device, precision: str, path: str) -> float:
    """Largest relative difference (CUDA float32 or bf16 autocast on ``path`` vs the CPU formula in
    float64) over outputs, gradients, buffers."""
    torch.manual_seed(0)
    cpu = choose_kernels(build_norm(name, shape[1], **OPTIONS.get(name, {})).double(), "torch")
    with torch.no_grad():
        for p in cpu.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    gpu = choose_kernels(copy.deepcopy(cpu).to(device=device, dtype=torch.float32), SETTINGS[path])
    worst = 0.0
    low = torch.bfloat16 if precision == "bf16" else torch.float32
    autocast = torch.autocast(device.type, dtype=low) if precision == "bf16" else nullcontext()

    def compare(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> None:
        nonlocal worst
        assert b.device.type == device.type and b.dtype == dtype, (name, b.device, b.dtype, dtype)
        a, b = a.double(), b.double().cpu()
        if precision == "fp32":
            # relative to the tensor's largest value, absolute below 1: gradients that are zero in exact
            # arithmetic (e.g. groupnorm with one value per group on features) leave float32 rounding only
            worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1.0)))
        else:
            # root-mean-square relative error (floor 1): where a threshold (TLU, EvoNorm's max) flips
            # for a value within bfloat16 rounding of it, that element's gradient differs wholesale
            floor = max(float(a.norm()), math.sqrt(a.numel()))
            worst = max(worst, float((a - b).norm()) / floor)

    for step in range(4):
        training = step < 3
        cpu.train(training)
        gpu.train(training)
        x = torch.randn(shape, dtype=torch.float64) * 2 + 1
        x = x.to(low).double()  # the same (representable) input on both sides
        xc, xg = x.clone().requires_grad_(), x.to(device, low).requires_grad_()
        yc = cpu(xc)
        with autocast:
            yg = gpu(xg)
        # under autocast torch's group_norm / layer_norm return float32 for a bfloat16 input; the
        # plugins built on them do as torch does
        compare(yc.detach(), yg.detach(), yg.dtype if yg.dtype in (low, torch.float32) else low)
        up = torch.randn(shape, dtype=torch.float64).to(low).double()
        yc.backward(up)
        yg.backward(up.to(device, low))
        compare(xc.grad, xg.grad, low)
    for (_, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        compare(a.grad, b.grad)
    for a, b in zip(cpu.buffers(), gpu.buffers(), strict=True):
        if a.is_floating_point():
            compare(a, b)
    return worst


def cpu_problem(paths: list[str] | None) -> str | None:
    """Why ``paths`` cannot be checked on the CPU, or None."""
    if "compiled" in (paths or []):
        return "--paths compiled: torch.compile of the formulas runs on CUDA only (on the CPU: triton, eager)"
    if "triton" in (paths or []) and not (_triton.AVAILABLE and _triton.INTERPRETED):
        return (
            "--paths triton on the CPU runs Triton's interpreter: set TRITON_INTERPRET=1 (and install triton)"
        )
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=writable_file, required=True)
    parser.add_argument(
        "--device", type=known_device, default="cuda", help="cpu runs the same comparison without a GPU"
    )
    parser.add_argument("--norms", nargs="+", choices=available_norms(), help="default: every plugin")
    parser.add_argument("--precisions", nargs="+", choices=TOLERANCE, default=list(TOLERANCE))
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        help="default: all three on CUDA, those that run on the CPU there",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    problem = cpu_problem(args.paths) if device.type == "cpu" else None
    if problem:
        parser.error(problem)
    args.paths = args.paths or [p for p in PATHS if device.type != "cpu" or cpu_problem([p]) is None]
    rows = []
    native_below, devices = planes.NATIVE_BELOW, planes.TRITON_DEVICES
    for precision in args.precisions:
        for name in args.norms or available_norms():
            for shape in ((8, 16, 6, 6), (8, 16)):
                if math.prod(shape[2:]) < norm_spec(name).min_spatial_positions:
                    continue
                for path in args.paths:
                    # the Triton kernels at every size: these inputs are below NATIVE_BELOW
                    planes.TRITON_DEVICES, planes.NATIVE_BELOW = (
                        ({device.type}, 0) if path == "triton" else (devices, native_below)
                    )
                    try:
                        worst = check(name, shape, device, precision, path)
                        verdict = "ok" if worst < TOLERANCE[precision] else "MISMATCH"
                    except Exception as exc:  # a failure is a row, not the end of the check
                        worst, verdict = math.nan, f"ERROR {type(exc).__name__}: {str(exc)[:120]}"
                    rows.append(f"| {precision} | {name} | {shape} | {path} | {worst:.1e} | {verdict} |")
                    print(rows[-1], flush=True)
    planes.TRITON_DEVICES, planes.NATIVE_BELOW = devices, native_below
    bn = build_norm("batchnorm", 16).to(device)
    bn(torch.randn(8, 16, 4, 4, device=device))
    frozen = FrozenBatchNorm.from_batchnorm(bn)
    back = frozen.to_batchnorm()
    kept = frozen.running_mean.device == bn.running_mean.device and back.weight.device == bn.weight.device
    kept &= bool(torch.equal(back.running_var, bn.running_var))
    reproduce = f"PYTHONPATH=. python scripts/check_cuda.py --paths {' '.join(args.paths)}"
    if args.norms:
        reproduce += f" --norms {' '.join(args.norms)}"
    if args.precisions != list(TOLERANCE):
        reproduce += f" --precisions {' '.join(args.precisions)}"
    if device.type == "cpu":
        reproduce = f"TRITON_INTERPRET=1 {reproduce} --device cpu"
    reproduce += " --out FILE"
    triton = f"Triton {_triton.triton.__version__}, " if "triton" in args.paths and _triton.AVAILABLE else ""
    text = "\n".join(
        [
            "# Plugins on CUDA" if device.type == "cuda" else f"# Plugins on the {device.type.upper()}",
            "",
            f"torch {torch.__version__}, {triton}{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}. "
            f"Each plugin on the {'GPU' if device.type == 'cuda' else device.type.upper()}, in float32 and under bfloat16 autocast with a bfloat16 input, "
            "against the same module in float64 on the CPU: 3 training steps and an eval forward, "
            "outputs, input and parameter gradients, buffers; the largest difference relative to the "
            "largest value (absolute where that is below 1) in float32, the root-mean-square relative error "
            "in bfloat16 (where a threshold flips within rounding, one element's gradient differs "
            "wholesale). `triton` (the default on CUDA) runs the plugins' Triton path "
            "(`normbench.accel`, at every size) where they have one, `compiled` their composite formulas with "
            "the elementwise ones through torch.compile, `eager` the composite formulas op by op; a "
            f"plugin with neither shows the same module for each path. Tolerances {TOLERANCE}. "
            f"Reproduce: `{reproduce}`{'' if device.type == 'cpu' else ' on a CUDA machine'}.",
            "",
            "| precision | norm | input | path | max rel. difference | |",
            "|---|---|---|---|---:|---|",
            *rows,
            "",
            f"FrozenBatchNorm conversion from and back to a {device.type.upper()} BatchNorm keeps device and values: {bool(kept)}.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
