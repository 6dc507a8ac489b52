"""Every registered plugin on a CUDA device against the same module in float64 on the CPU.

For each plugin: three training steps and an eval forward on (8, 16, 6, 6) images (and (8, 16)
features where the plugin takes them), comparing outputs, input and parameter gradients and buffers;
device and dtype must be preserved. Both kernel paths of the built-ins run: the composite formulas
(what inputs this small take) and the fused Functions, forced, over blocks of 2 samples. Needs only
torch (no Hydra). Writes a markdown table.

    PYTHONPATH=. python scripts/check_cuda.py --out reports/bench/cuda_check.md
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch

import normbench.norms._kernels as kernels
from normbench import available_norms, build_norm, norm_spec
from normbench.norms.frozen_batchnorm import FrozenBatchNorm

OPTIONS = {"ghost_batchnorm": {"ghost_batch_size": 4}, "batchrenorm": {"warmup_steps": 0}}


def set_kernel_path(path: str, shape: tuple[int, ...]) -> None:
    """'composite': formulas under autograd; 'fused': the Functions, over blocks of 2 samples."""
    kernels.FUSED_MIN_ELEMENTS = 10**12 if path == "composite" else 0
    kernels.BLOCK = 2 * math.prod(shape[1:])


def check(name: str, shape: tuple[int, ...], device: torch.device) -> float:
    """Largest relative difference (CUDA float32 vs CPU float64) over outputs, gradients, buffers."""
    torch.manual_seed(0)
    cpu = build_norm(name, shape[1], **OPTIONS.get(name, {})).double()
    with torch.no_grad():
        for p in cpu.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    gpu = copy.deepcopy(cpu).to(device=device, dtype=torch.float32)
    worst = 0.0

    def compare(a: torch.Tensor, b: torch.Tensor) -> None:
        nonlocal worst
        assert b.device.type == device.type and b.dtype == torch.float32, (name, b.device, b.dtype)
        # relative to the tensor's largest value, absolute below 1: gradients that are zero in exact
        # arithmetic (e.g. groupnorm with one value per group on features) leave float32 rounding only
        scale = a.abs().max().clamp_min(1.0)
        worst = max(worst, float((a - b.double().cpu()).abs().max() / scale))

    for step in range(4):
        training = step < 3
        cpu.train(training)
        gpu.train(training)
        x = torch.randn(shape, dtype=torch.float64) * 2 + 1
        xc, xg = x.clone().requires_grad_(), x.to(device, torch.float32).requires_grad_()
        yc, yg = cpu(xc), gpu(xg)
        compare(yc.detach(), yg.detach())
        up = torch.randn(shape, dtype=torch.float64)
        yc.backward(up)
        yg.backward(up.to(device, torch.float32))
        compare(xc.grad, xg.grad)
    for (_, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        compare(a.grad, b.grad)
    for a, b in zip(cpu.buffers(), gpu.buffers(), strict=True):
        if a.is_floating_point():
            compare(a, b)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda", help="cpu runs the same comparison without a GPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for name in available_norms():
        for shape in ((8, 16, 6, 6), (8, 16)):
            if math.prod(shape[2:]) < norm_spec(name).min_spatial_positions:
                continue
            for path in ("composite", "fused"):
                set_kernel_path(path, shape)
                worst = check(name, shape, device)
                rows.append(
                    f"| {name} | {shape} | {path} | {worst:.1e} | {'ok' if worst < 1e-3 else 'MISMATCH'} |"
                )
    bn = build_norm("batchnorm", 16).to(device)
    bn(torch.randn(8, 16, 4, 4, device=device))
    frozen = FrozenBatchNorm.from_batchnorm(bn)
    back = frozen.to_batchnorm()
    kept = frozen.running_mean.device == bn.running_mean.device and back.weight.device == bn.weight.device
    kept &= bool(torch.equal(back.running_var, bn.running_var))
    text = "\n".join(
        [
            "# Plugins on CUDA",
            "",
            f"torch {torch.__version__}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}. Each plugin in float32 on the GPU "
            "against the same module in float64 on the CPU: 3 training steps and an eval forward, "
            "outputs, input and parameter gradients, buffers; the largest difference relative to the "
            "largest value (absolute where that is below 1), for the composite formulas and for the fused "
            "Functions (forced, over blocks of 2 samples); plugins without a fused Function show the same "
            "module twice. Reproduce: `PYTHONPATH=. python scripts/check_cuda.py --out FILE` on a CUDA machine.",
            "",
            "| norm | input | kernel path | max rel. difference | |",
            "|---|---|---|---:|---|",
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
