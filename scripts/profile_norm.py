"""Where the time of plugins' forward+backward goes on a GPU: the host-side cost of a Triton launch
and of a small torch op, then torch.profiler's table (host and device time per op) for each plugin.
At small shapes a norm is launch-bound, and this says which launches and ops to remove.

    python scripts/profile_norm.py ghost_batchnorm switchnorm --shape 32 64 32 32 [--bf16]
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
from bench_norms import BENCH_OPTIONS
from torch.profiler import ProfilerActivity, profile

from normbench import build_norm
from normbench.norms import _triton


def host_us(fn, calls: int = 2000) -> float:
    """Microseconds per call on the host, the GPU kept busy enough not to stall the queue."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("norms", nargs="+")
    parser.add_argument("--shape", type=int, nargs="+", default=[32, 64, 32, 32])
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    shape, device = tuple(args.shape), torch.device("cuda")
    x = torch.randn(shape, device=device)
    coefs = torch.rand(2, *shape[:2], device=device)
    small = torch.randn(shape[:2], device=device)
    print(
        f"host us per call: triton plane_map {host_us(lambda: _triton.plane_map(x, _triton.AFFINE, coefs)):.1f}, "
        f"plane_moments {host_us(lambda: _triton.plane_moments(x)):.1f}, "
        f"torch mul on (N, C) {host_us(lambda: small * small):.1f}, torch.stack of 3 {host_us(lambda: torch.stack([small, small, small])):.1f}"
    )
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.bf16 else nullcontext()
    for name in args.norms:
        module = build_norm(name, shape[1], **BENCH_OPTIONS.get(name, {})).to(device).train()
        xg = x.to(torch.bfloat16 if args.bf16 else torch.float32).requires_grad_()
        grad = torch.randn_like(xg)

        def step(module=module, xg=xg, grad=grad) -> None:
            with autocast:
                module(xg).backward(grad)

        print(
            f"\n== {name} {shape} {'bf16' if args.bf16 else 'fp32'}: host us per forward+backward {host_us(step, 200):.1f}"
        )
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                step()
            torch.cuda.synchronize()
        print(
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48)
        )


if __name__ == "__main__":
    main()
