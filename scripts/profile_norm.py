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


def components(x: torch.Tensor) -> None:
    """Host microseconds of each piece of the Triton path (normbench.norms._planes) on ``x``."""
    from normbench.norms._kernels import Recorded
    from normbench.norms._planes import PlaneMap

    n, c = x.shape[:2]
    w, b = (
        torch.rand(c, device=x.device, requires_grad=True),
        torch.rand(c, device=x.device, requires_grad=True),
    )
    ln = build_norm("layernorm", c).to(x.device)
    coefficients = ln._plane_coefficients
    xg, g = x.detach().requires_grad_(), torch.randn_like(x)
    mean, var = _triton.plane_moments(x)
    coefs = torch.rand(2, n, c, device=x.device)
    compiled = torch.compile(coefficients, fullgraph=True)

    def record_and_pull(fn):
        r = Recorded(fn, [mean, var, w, b])
        return r.grads([torch.ones_like(mean), torch.ones_like(mean)])

    def apply_no_grad():
        with torch.no_grad():
            PlaneMap.apply(x, _triton.AFFINE, coefficients, w, b)

    cases = {
        "plane_moments": lambda: _triton.plane_moments(x),
        "plane_map": lambda: _triton.plane_map(x, _triton.AFFINE, coefs),
        "plane_sums": lambda: _triton.plane_sums(g, x, _triton.AFFINE, coefs),
        "plane_input_grad": lambda: _triton.plane_input_grad(g, x, _triton.AFFINE, coefs, mean, mean, var),
        "empty_like": lambda: torch.empty_like(x),
        "PlaneMap fwd no_grad": apply_no_grad,
        "PlaneMap fwd grad": lambda: PlaneMap.apply(xg, _triton.AFFINE, coefficients, w, b),
        "PlaneMap fwd+bwd": lambda: PlaneMap.apply(xg, _triton.AFFINE, coefficients, w, b)[0].backward(g),
        "layernorm module fwd+bwd": lambda: ln(xg).backward(g),
        "F.group_norm(1) fwd+bwd": lambda: torch.nn.functional.group_norm(xg, 1, w, b).backward(g),
        "Recorded eager": lambda: Recorded(coefficients, [mean, var, w, b]),
        "Recorded+grads eager": lambda: record_and_pull(coefficients),
        "Recorded compiled": lambda: Recorded(compiled, [mean, var, w, b]),
        "Recorded+grads compiled": lambda: record_and_pull(compiled),
    }
    try:
        grid = (n * c, 1)
        y = torch.empty_like(x)
        kernel = _triton._map_kernel[grid](
            x, y, coefs, x[0, 0].numel(), n * c, MODE=0, BLOCK=1024, ACC=_triton.tl.float32
        )
        cases["compiled-kernel launch"] = lambda: kernel[grid](x, y, coefs, x[0, 0].numel(), n * c)
    except Exception as exc:  # the low-level launcher's signature differs between Triton versions
        print("compiled-kernel launch failed:", type(exc).__name__, exc)
    for name, fn in cases.items():
        try:
            print(f"{name}: {host_us(fn, 300):.1f} us", flush=True)
        except Exception as exc:
            print(f"{name}: ERROR {type(exc).__name__}: {str(exc)[:200]}", flush=True)


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
