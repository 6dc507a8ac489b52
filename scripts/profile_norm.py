"""Where the time of plugins' forward+backward goes on a GPU: the host cost of each piece of the
Triton path (normbench.accel.planes), then per plugin its host time and torch.profiler's table (host
and device time per op). At small shapes a norm is launch-bound; this says which launches to remove.

    python scripts/profile_norm.py ghost_batchnorm switchnorm --shape 32 64 32 32 [--bf16]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from bench_args import count
from bench_norms import BENCH_OPTIONS
from torch.profiler import ProfilerActivity, profile

from normbench import available_norms, build_norm
from normbench.accel import _triton
from normbench.accel.planes import affine_family


def host_us(fn: Callable[[], object], calls: int = 300) -> float:
    """Microseconds per call on the host (the GPU runs behind)."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def slow_launch(fn: Callable[[], object]) -> None:
    """``fn`` with Triton's standard launch (no cached launcher)."""
    fast, _triton.FAST_LAUNCH = _triton.FAST_LAUNCH, False
    try:
        fn()
    finally:
        _triton.FAST_LAUNCH = fast


def recorded_launches(fn: Callable[[], object]) -> list[tuple]:
    """The (kernel, args, constexprs) of every Triton launch ``fn`` makes (run once, launching)."""
    launches, launch = [], _triton._launch

    def record(kernel, grid, *args, **constexprs):
        launches.append((kernel, args, constexprs))
        launch(kernel, grid, *args, **constexprs)

    _triton._launch = record
    try:
        fn()
    finally:
        _triton._launch = launch
    return launches


def components(x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The pieces of the Triton path on ``x``, and their torch counterparts."""
    n, c = x.shape[:2]
    w, b = (torch.rand(c, device=x.device, requires_grad=True) for _ in range(2))
    xg, g = x.detach().requires_grad_(), torch.randn_like(x)
    mean, var = _triton.plane_moments(x)
    small = torch.rand(n, c, device=x.device)
    layer = (
        (w, b, None, None),
        _triton.plan(x.shape, x.dtype, _triton.Family(1e-5, 1, c, True, 0), True, True),
    )
    launches = recorded_launches(lambda: affine_family(xg, w, b, 1e-5, channels=c).backward(g))

    def fused_no_grad():
        with torch.no_grad():
            affine_family(x, w, b, 1e-5, channels=c)

    return {
        "torch mul on (N, C)": lambda: small * small,
        "torch.empty_like(x)": lambda: torch.empty_like(x),
        "triton plane_moments": lambda: _triton.plane_moments(x),
        "triton group_affine": lambda: _triton.group_affine(x, mean, var, *layer),
        "triton group_affine, standard launch": lambda: slow_launch(
            lambda: _triton.group_affine(x, mean, var, *layer)
        ),
        "triton group_affine_backward": lambda: _triton.group_affine_backward(g, x, mean, var, *layer),
        "keys of affine_family's 4 launches (part of their host time)": lambda: [
            _triton._key(*launch) for launch in launches
        ],
        "affine_family fwd no_grad": fused_no_grad,
        "affine_family fwd+bwd": lambda: affine_family(xg, w, b, 1e-5, channels=c).backward(g),
        "F.group_norm(1) fwd+bwd": lambda: torch.nn.functional.group_norm(xg, 1, w, b).backward(g),
        "F.batch_norm fwd+bwd": lambda: torch.nn.functional.batch_norm(xg, None, None, w, b, True).backward(
            g
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("norms", nargs="*", metavar="NORM", help="default: every plugin")
    parser.add_argument("--shape", type=count, nargs="+", default=[32, 64, 32, 32])
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--table", action="store_true", help="also print torch.profiler's table per plugin")
    args = parser.parse_args()
    unknown = [n for n in args.norms if n not in available_norms()]
    if unknown:
        parser.error(f"unknown norm {unknown[0]!r} (available: {', '.join(available_norms())})")
    if len(args.shape) != 4:
        parser.error(f"--shape {' '.join(map(str, args.shape))}: must be 4 sizes, N C H W")
    if not torch.cuda.is_available():
        parser.error("profiles the CUDA launches: this machine has no CUDA device")
    shape, device = tuple(args.shape), torch.device("cuda")
    x = torch.randn(shape, device=device)
    for name, fn in components(x).items():
        try:
            print(f"{name}: {host_us(fn):.1f} us", flush=True)
        except Exception as exc:  # report and go on: GPU time comes in short slots
            print(f"{name}: ERROR {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.bf16 else nullcontext()
    for name in args.norms:
        module = build_norm(name, shape[1], **BENCH_OPTIONS.get(name, {})).to(device).train()
        xg = x.to(torch.bfloat16 if args.bf16 else torch.float32).requires_grad_()
        grad = torch.randn_like(xg)

        def step(module=module, xg=xg, grad=grad) -> None:
            with autocast:
                module(xg).backward(grad)

        print(
            f"{name} {shape} {'bf16' if args.bf16 else 'fp32'} forward+backward: {host_us(step, 200):.1f} us",
            flush=True,
        )
        if args.table:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    step()
                torch.cuda.synchronize()
            print(
                prof.key_averages().table(
                    sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48
                )
            )


if __name__ == "__main__":
    main()
