"""sync_batchnorm across 2 CPU processes (gloo) equals single-process BatchNorm over the union batch."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from normbench import build_norm

C = 3
# case -> (samples per process, dtype, input scale, input shift)
CASES = {
    "uneven": ((3, 5), torch.float64, 2.0, 1.0),
    "empty": ((0, 8), torch.float64, 2.0, 1.0),
    # float32 values of mean 100 and std 0.01: E[x^2] - mean^2 cancels catastrophically here
    "large_mean_float32": ((3, 5), torch.float32, 0.01, 100.0),
}


def union_batch(n: int, dtype=torch.float64, scale=2.0, shift=1.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(n, C, 4, generator=gen, dtype=torch.float64) * scale + shift).to(dtype)
    return x, torch.randn(n, C, 4, generator=gen, dtype=torch.float64).to(dtype)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, world: int, port: int, out_dir: str, case: str) -> None:
    sizes, dtype, scale, shift = CASES[case]
    sys.path.insert(0, str(Path(__file__).parent))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, upstream = union_batch(sum(sizes), dtype, scale, shift)
        lo = sum(sizes[:rank])
        part = slice(lo, lo + sizes[rank])
        module = build_norm("sync_batchnorm", C).to(dtype)
        with torch.no_grad():
            module.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
            module.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        xs = x[part].clone().requires_grad_()
        for _ in range(2):  # two steps: the running statistics move twice
            y = module(xs)
        y.backward(upstream[part])
        torch.save(
            {"y": y.detach(), "grad_x": xs.grad, "grad_w": module.weight.grad, "grad_b": module.bias.grad,
             "running_mean": module.running_mean, "running_var": module.running_var},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )  # fmt: skip
        dist.barrier()  # both processes done with every collective before teardown
    finally:
        dist.destroy_process_group()
    # Results are on disk; skip interpreter finalization, where gloo's threads have been seen to abort
    # the process ("terminate called without an active exception") on a loaded machine.
    os._exit(0)


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_batchnorm_over_union(tmp_path, case):
    sizes, dtype, scale, shift = CASES[case]
    mp.spawn(worker, args=(2, free_port(), str(tmp_path), case), nprocs=2, join=True)
    got = [{k: v.double() for k, v in torch.load(tmp_path / f"rank{r}.pt").items()} for r in range(2)]
    x, upstream = (t.double() for t in union_batch(sum(sizes), dtype, scale, shift))  # float64 reference
    bn = build_norm("batchnorm", C).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    xr = x.clone().requires_grad_()
    for _ in range(2):
        y = bn(xr)
    y.backward(upstream)
    # float64: equal to rounding. float32 at mean/std = 1e4: within 1% of the float64 result (the
    # E[x^2] - mean^2 form is off by a factor of the order of 1 there)
    tol = {} if dtype == torch.float64 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(torch.cat([g["y"] for g in got]), y.detach(), **tol)
    torch.testing.assert_close(torch.cat([g["grad_x"] for g in got]), xr.grad, **tol)
    # parameter gradients: each process holds its share; DDP would sum them
    torch.testing.assert_close(got[0]["grad_w"] + got[1]["grad_w"], bn.weight.grad, **tol)
    torch.testing.assert_close(got[0]["grad_b"] + got[1]["grad_b"], bn.bias.grad, **tol)
    for g in got:
        torch.testing.assert_close(g["running_mean"], bn.running_mean, **tol)
        torch.testing.assert_close(g["running_var"], bn.running_var, **tol)


def test_single_process_is_batchnorm():
    x, _ = union_batch(6)
    sync, bn = build_norm("syncbn", C).double(), build_norm("bn", C).double()
    torch.testing.assert_close(sync(x), bn(x), rtol=0, atol=0)
    torch.testing.assert_close(sync.running_var, bn.running_var, rtol=0, atol=0)
