"""Compile every Triton kernel the plugins launch on CUDA, for a GPU architecture, without a GPU.

Each plugin's forward and backward run on CPU tensors through its CUDA path (normbench.accel.planes)
with the kernel launches recorded instead of run: every plugin, with and without affine parameters,
in training and eval mode, for each storage dtype (bf16 and fp16 under autocast). Triton then
compiles each recorded kernel and specialization for the target down to a cubin (ptxas ships with
Triton). This catches what Triton's interpreter, which runs the kernels in the tests, cannot: code
that the GPU compiler rejects (types, constexpr branches, unsupported ops). The numbers the kernels
compute are tested through the interpreter (tests/test_planes.py); speed needs a GPU.

    python scripts/compile_cuda.py                      # sm_90 (H100/H200), fp32 bf16 fp16 fp64
    python scripts/compile_cuda.py --arch 80 --dtypes fp32 bf16

Exit status 1 if any kernel fails to compile (each failure printed with Triton's message).
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)  # compile the real kernels (CPU tensors never launch them here)

import argparse
import sys
import time
from collections.abc import Callable

import torch

from normbench import available_norms, build_norm
from normbench.accel import _triton
from normbench.accel import planes as _planes

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
TRITON_TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}
TRITON_TYPES |= {torch.int64: "i64", torch.int32: "i32"}
SHAPE = (6, 4, 3, 3)  # ghost batches of 2 (below), groups of 2 channels
OPTIONS = {"ghost_batchnorm": {"ghost_batch_size": 2}, "groupnorm": {"num_groups": 2}}

Launch = tuple[object, dict[str, str], dict[str, object]]


def signature(kernel, args: tuple, constexprs: dict) -> dict[str, str]:
    """Triton's type of each argument of a launch."""
    types = {}
    for name, arg in zip(kernel.arg_names, args, strict=False):
        if isinstance(arg, torch.Tensor):
            types[name] = "*" + TRITON_TYPES[arg.dtype]
        elif isinstance(arg, bool):
            types[name] = "i1"
        elif isinstance(arg, int):
            types[name] = "i32" if -(2**31) <= arg < 2**31 else "i64"
        else:
            types[name] = "fp32"
    return types | dict.fromkeys(constexprs, "constexpr")


def record_launches(dtypes: list[torch.dtype]) -> dict[tuple, Launch]:
    """Every distinct (kernel, signature, constexprs) the plugins launch on SHAPE."""
    launches: dict[tuple, Launch] = {}

    def record(kernel, grid, *args, **constexprs) -> None:
        types = signature(kernel, args, constexprs)
        key = (kernel.fn.__name__, *types.items(), *((k, str(v)) for k, v in constexprs.items()))
        launches[key] = (kernel, types, constexprs)

    stub, devices, native = _triton._launch, set(_planes.TRITON_DEVICES), _planes.NATIVE_BELOW
    _triton._launch, _planes.NATIVE_BELOW = record, 0
    _planes.TRITON_DEVICES.add("cpu")
    try:
        for name in available_norms():
            for options in ({}, {"affine": False}):
                for dtype in dtypes:
                    for training in (True, False):
                        run_plugin(name, OPTIONS.get(name, {}) | options, dtype, training)
    finally:
        _triton._launch, _planes.NATIVE_BELOW = stub, native
        _planes.TRITON_DEVICES.clear()
        _planes.TRITON_DEVICES.update(devices)
    return launches


def run_plugin(name: str, options: dict, dtype: torch.dtype, training: bool) -> None:
    """One forward and backward (kernels recorded, not run)."""
    try:
        module = build_norm(name, SHAPE[1], **options).train(training)
    except TypeError:  # a plugin without an ``affine`` option (only the variant that adds it is skipped)
        if "affine" not in options:
            raise
        return
    low = dtype in (torch.bfloat16, torch.float16)
    module = module.to(torch.float32 if low else dtype)
    x = torch.randn(SHAPE).to(dtype).requires_grad_()
    with torch.autocast("cpu", dtype=dtype, enabled=low):
        y = module(x)
    if y.requires_grad:
        y.backward(torch.ones_like(y))


def compile_all(launches: dict[tuple, Launch], arch: int, log: Callable[[str], None]) -> int:
    """Compile each launch for ``sm_<arch>``; the number that failed."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    target, failed = GPUTarget("cuda", arch, 32), 0
    for kernel, types, constexprs in launches.values():
        label = f"{kernel.fn.__name__} {', '.join(f'{k}={v}' for k, v in constexprs.items())} {types}"
        try:
            compile(ASTSource(fn=kernel, signature=types, constexprs=constexprs), target=target)
            log(f"ok   sm_{arch} {label}")
        except Exception as exc:  # report every failure, not the first
            failed += 1
            log(f"FAIL sm_{arch} {label}\n     {type(exc).__name__}: {exc}")
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", type=int, nargs="+", default=[90], help="CUDA compute capabilities, e.g. 80 90"
    )
    parser.add_argument(
        "--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16", "fp16", "fp64"]
    )
    args = parser.parse_args()
    if not _triton.AVAILABLE:
        parser.error("triton is not installed (pip install triton, or the dev extra)")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns unless set; its default
    start = time.perf_counter()
    launches = record_launches([DTYPES[d] for d in args.dtypes])
    kernels = sorted({key[0] for key in launches})
    print(f"{len(launches)} specializations of {len(kernels)} kernels: {', '.join(kernels)}", flush=True)
    failed = sum(compile_all(launches, arch, lambda line: print(line, flush=True)) for arch in args.arch)
    compiled = len(launches) * len(args.arch) - failed
    archs = ", ".join(f"sm_{arch}" for arch in args.arch)
    by = f"by Triton {_triton.triton.__version__} in {time.perf_counter() - start:.0f} s"
    print(f"{failed} failed, {compiled} compiled for {archs} {by}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
