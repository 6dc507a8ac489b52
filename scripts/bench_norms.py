"""Forward and forward+backward time of every registered norm beside torch.nn and a tensor copy.

Every candidate runs interleaved in the same rounds (one process, same inputs), so machine noise hits
all of them alike; the table reports medians over rounds and ratios to the torch.nn counterpart, to
torch.nn.BatchNorm2d on images, and to a plain copy of the tensor (the memory-traffic floor).

    python scripts/bench_norms.py                # writes reports/bench/norms.md
    python scripts/bench_norms.py --rounds 5 --out /tmp/norms.md
    python scripts/bench_norms.py --device cuda  # reports/bench/norms_cuda.md: fp32 and bf16, CUDA events
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from bench_args import count, norms_json
from torch import nn

import normbench
import normbench.accel.planes as planes
from normbench import available_norms, build_norm, norm_spec
from normbench.argtypes import known_device, writable_file

SHAPES = {
    "images (32, 64, 32, 32)": (32, 64, 32, 32),
    "features (256, 512)": (256, 512),
    "sequences (32, 128, 256)": (32, 128, 256),
}
TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
TORCH_IN = {3: nn.InstanceNorm1d, 4: nn.InstanceNorm2d, 5: nn.InstanceNorm3d}


# Options that make a plugin do its characteristic work on these shapes (defaults would reduce
# ghost_batchnorm to BatchNorm on a batch of 32, and batchrenorm to BatchNorm during its warm-up).
BENCH_OPTIONS = {"ghost_batchnorm": {"ghost_batch_size": 8}, "batchrenorm": {"warmup_steps": 0}}


def torch_counterpart(name: str, c: int, rank: int) -> nn.Module | None:
    """The torch.nn module computing the same function, where torch has one."""
    if name in ("batchnorm", "sync_batchnorm"):  # sync_batchnorm in one process is BatchNorm
        return TORCH_BN[rank](c)
    if name == "layernorm":
        return nn.GroupNorm(1, c)
    if name in ("groupnorm", "ws_groupnorm"):  # ws_groupnorm's module is GroupNorm
        return nn.GroupNorm(build_norm("groupnorm", c).num_groups, c)
    if name == "rmsnorm":
        return nn.RMSNorm(c, eps=1e-5) if rank == 2 else None
    if name == "instancenorm":
        return TORCH_IN[rank](c, affine=True) if rank > 2 else None
    if name == "identity":
        return nn.Identity()
    return None


def fwd(module: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.no_grad():
            return module(x)

    return run


def fwd_bwd(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], object]:
    xg = x.detach().requires_grad_()

    def run() -> object:
        y = module(xg)
        if y.requires_grad:
            y.backward(grad)
        return y

    return run


def wall_clock(fn: Callable[[], object], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def cuda_events(fn: Callable[[], object], inner: int) -> float:
    """Seconds per call measured on the GPU's own clock (CUDA events around ``inner`` calls)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(inner):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / inner


def time_interleaved(
    cases: dict[str, Callable[[], object]],
    rounds: int,
    inner: int,
    timer: Callable[[Callable[[], object], int], float] = wall_clock,
) -> dict[str, list[float]]:
    """Seconds per call of each case in every round. Each round runs every case once, in a shuffled
    order (allocator and cache state left by the previous case would otherwise bias a fixed order)."""
    samples: dict[str, list[float]] = {k: [] for k in cases}
    order = list(cases)
    rng = random.Random(0)
    for fn in cases.values():  # warm-up (and, on CUDA, compilation)
        fn()
        fn()
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            samples[key].append(timer(cases[key], inner))
    return samples


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of the per-round ratio a/b (paired: both ran in the same round)."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def bench(rounds: int, inner: int) -> list[dict]:
    rows = []
    for label, shape in SHAPES.items():
        c, rank = shape[1], len(shape)
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen)
        grad = torch.randn(shape, generator=gen)
        modules: dict[str, nn.Module] = {}
        for name in available_norms():
            if rank - 2 < 1 and norm_spec(name).min_spatial_positions > 1:
                continue
            modules[name] = build_norm(name, c, **BENCH_OPTIONS.get(name, {})).train()
            twin = torch_counterpart(name, c, rank)
            if twin is not None:
                modules[f"torch:{name}"] = twin.train()
        if rank == 4:
            modules["torch:BatchNorm2d"] = nn.BatchNorm2d(c).train()
        copy_fwd = x.clone
        for mode in ("forward", "forward+backward"):
            cases = {k: fwd(m, x) if mode == "forward" else fwd_bwd(m, x, grad) for k, m in modules.items()}
            cases["copy"] = copy_fwd
            samples = time_interleaved(cases, rounds, inner)
            for name in modules:
                if name.startswith("torch:"):
                    continue
                twin = samples.get(f"torch:{name}")
                rows.append(
                    {
                        "shape": label,
                        "mode": mode,
                        "norm": name,
                        "ms": statistics.median(samples[name]) * 1e3,
                        "torch_ms": None if twin is None else statistics.median(twin) * 1e3,
                        "vs_torch": None if twin is None else median_ratio(samples[name], twin),
                        "vs_bn2d": median_ratio(samples[name], samples["torch:BatchNorm2d"])
                        if rank == 4
                        else None,
                        "vs_copy": median_ratio(samples[name], samples["copy"]),
                    }
                )
    return rows


CUDA_SHAPES = ((32, 64, 32, 32), (64, 256, 56, 56))


def with_triton(flag: bool, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with the plugins' Triton path (normbench.accel.planes) on at every size, or off (their
    torch formulas, the elementwise ones through torch.compile)."""
    native_below = planes.NATIVE_BELOW

    def run() -> object:
        planes.TRITON_DEVICES, planes.NATIVE_BELOW = ({"cuda"}, 0) if flag else (set(), native_below)
        try:
            return fn()
        finally:
            planes.TRITON_DEVICES, planes.NATIVE_BELOW = {"cuda"}, native_below

    return run


def autocast_step(m: nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast) -> Callable[[], object]:
    step = fwd_bwd(m, x, grad)

    def run() -> object:
        with autocast:
            return step()

    return run


def bench_cuda(
    rounds: int, inner: int, device: torch.device, done: Callable[[list[dict]], None] = lambda rows: None
) -> list[dict]:
    """Forward+backward of every plugin beside nn.BatchNorm2d on the GPU, in float32 and under bf16
    autocast (bf16 input), each plugin through its Triton path and through its torch formulas;
    ``done`` gets the rows so far after each shape and precision."""
    rows = []
    for shape in CUDA_SHAPES:
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            gen = torch.Generator(device).manual_seed(0)
            x = torch.randn(shape, generator=gen, device=device).to(dtype)
            grad = torch.randn(shape, generator=gen, device=device).to(dtype)
            autocast = torch.autocast("cuda", dtype=dtype) if precision == "bf16" else nullcontext()
            modules = {
                name: build_norm(name, shape[1], **BENCH_OPTIONS.get(name, {})).to(device).train()
                for name in available_norms()
            }
            modules["torch:BatchNorm2d"] = nn.BatchNorm2d(shape[1]).to(device).train()

            cases: dict[str, Callable[[], object]] = {}
            for name, m in modules.items():
                cases[name] = with_triton(True, autocast_step(m, x, grad, autocast))
                if not name.startswith("torch:"):
                    cases[f"{name} [torch]"] = with_triton(False, autocast_step(m, x, grad, autocast))
            failed = {}
            for key, fn in list(cases.items()):  # a plugin that fails is a row, not the end of the table
                try:
                    fn()
                except Exception as exc:
                    failed[key.removesuffix(" [torch]")] = f"{type(exc).__name__}: {str(exc)[:100]}"
                    del cases[key]
            samples = time_interleaved(cases, rounds, inner, cuda_events)
            ref = samples["torch:BatchNorm2d"]
            for name in modules:
                if name.startswith("torch:"):
                    continue
                if name in failed:
                    rows.append(
                        {"shape": list(shape), "precision": precision, "norm": name, "error": failed[name]}
                    )
                    print(rows[-1], flush=True)
                    continue
                rows.append(
                    {
                        "shape": list(shape),
                        "precision": precision,
                        "norm": name,
                        "ms": statistics.median(samples[name]) * 1e3,
                        "torch_ms": statistics.median(samples[f"{name} [torch]"]) * 1e3,
                        "bn_ms": statistics.median(ref) * 1e3,
                        "vs_bn2d": median_ratio(samples[name], ref),
                        "torch_vs_bn2d": median_ratio(samples[f"{name} [torch]"], ref),
                    }
                )
                print(rows[-1], flush=True)
            done(rows)
    return rows


def keeps_torch_kernel(row: dict) -> bool:
    """Whether the plugin keeps its native torch kernel at this size (``native_kernel`` below
    normbench.accel.planes.NATIVE_BELOW elements) rather than its Triton path."""
    module = build_norm(row["norm"], row["shape"][1], **BENCH_OPTIONS.get(row["norm"], {}))
    return module.native_kernel and math.prod(row["shape"]) < planes.NATIVE_BELOW


def cuda_markdown(saved: dict) -> str:
    lines = [
        "# Norm plugin speed on CUDA",
        "",
        f"{saved['device']}, torch {saved['torch']}, normbench {normbench.__version__}. "
        f"Forward+backward in training mode; medians over {saved['rounds']} interleaved rounds (case order "
        f"shuffled each round) of {saved['inner']} calls timed with CUDA events; `vs BN2d` is the median of "
        "the per-round ratios to `torch.nn.BatchNorm2d` on the same input in the same precision (bf16: "
        "bfloat16 input under `torch.autocast`). Each plugin ran through its Triton path "
        "(`normbench.accel.planes`, at every size) and through its torch formulas (the elementwise ones "
        "through torch.compile; a plugin without a Triton path ran the same module twice); `default` says "
        "which of the two the plugin runs at this size: `torch` where it keeps its native torch kernel "
        f"(below {planes.NATIVE_BELOW:,} elements), else `Triton` (the same module as `torch` for a plugin "
        f"without a Triton path). Target: every plugin within 1.5x. Options: {BENCH_OPTIONS}.",
        "",
        f"Reproduce: `python scripts/bench_norms.py --device cuda --rounds {saved['rounds']} --inner {saved['inner']}`",
        "",
        "| shape | precision | norm | Triton vs BN2d | torch vs BN2d | BN2d ms | default | default ms | within 1.5x |",
        "|---|---|---|---:|---:|---:|---|---:|---|",
    ]
    for r in saved["rows"]:
        if "error" in r:
            lines.append(
                f"| {tuple(r['shape'])} | {r['precision']} | {r['norm']} | ERROR {r['error']} | | | | | no |"
            )
            continue
        triton = not keeps_torch_kernel(r)
        ratio, ms = (r["vs_bn2d"], r["ms"]) if triton else (r["torch_vs_bn2d"], r["torch_ms"])
        lines.append(
            f"| {tuple(r['shape'])} | {r['precision']} | {r['norm']} | {r['vs_bn2d']:.2f}x | "
            f"{r['torch_vs_bn2d']:.2f}x | {r['bn_ms']:.3f} | {'Triton' if triton else 'torch'} | {ms:.3f} "
            f"| {'yes' if ratio <= 1.5 else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def fmt(v: float | None, pattern: str) -> str:
    return "—" if v is None else pattern.format(v)


def to_markdown(rows: list[dict], rounds: int, inner: int, threads: int) -> str:
    lines = [
        "# Norm plugin speed",
        "",
        f"Medians over {rounds} interleaved rounds (case order shuffled each round) of {inner} calls each; "
        f"ratios are medians of the per-round ratios, {threads} torch thread(s), "
        f"torch {torch.__version__}, normbench {normbench.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()} CPU. Training mode (batch statistics). `vs torch` is the ratio to the "
        "torch.nn module computing the same function (layernorm: `GroupNorm(1, C)`), `vs BN2d` the ratio "
        "to `torch.nn.BatchNorm2d` on the same image tensor, `vs copy` the ratio to `x.clone()` "
        "(the memory floor). Timings on this shared machine swing between runs; compare ratios, "
        "which come from the same rounds. Targets: core plugins within 1.05x of torch.nn; plugins "
        f"without a torch built-in within 2x of BatchNorm2d forward+backward on images. Options: {BENCH_OPTIONS}.",
        "",
        "Reproduce: `python scripts/bench_norms.py`",
        "",
        "| shape | mode | norm | ms | torch ms | vs torch | vs BN2d | vs copy |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['mode']} | {r['norm']} | {r['ms']:.3f} | {fmt(r['torch_ms'], '{:.3f}')} "
            f"| {fmt(r['vs_torch'], '{:.2f}x')} | {fmt(r['vs_bn2d'], '{:.2f}x')} | {r['vs_copy']:.1f}x |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=count, default=31)
    parser.add_argument("--inner", type=count, default=5)
    parser.add_argument("--threads", type=count, default=1)
    parser.add_argument(
        "--device", type=known_device, default="cpu", help="cpu, or cuda: the GPU table (fp32 and bf16)"
    )
    parser.add_argument(
        "--out", type=writable_file, default=None, help="default reports/bench/norms[_cuda].md"
    )
    parser.add_argument(
        "--from-json", type=norms_json, default=None, help="re-render norms_cuda.md from its .json"
    )
    parser.add_argument(
        "--in-step",
        action="store_true",
        help="every plugin inside one MNIST-1D CNN training step (batch 32; on CUDA also captured as a "
        "CUDA graph) against the same step with batchnorm, to reports/bench/step_norms[_cuda].md",
    )
    args = parser.parse_args()
    if args.in_step:  # one run per plugin as a population of one: bench_population's machinery
        import bench_population

        cuda = torch.device(args.device).type == "cuda"
        out = (
            args.out
            or Path(__file__).parents[1] / "reports/bench" / f"step_norms{'_cuda' if cuda else ''}.md"
        )
        norms = [n for n in available_norms() if n != "sync_batchnorm"]
        forms = ["auto", "auto:graph"] if cuda else ["auto"]
        step = ["--tasks", "mnist1d_cnn", "--batch-sizes", "32", "--members", "1", "--steps", "300"]
        where = ["--device", args.device, "--rounds", str(args.rounds), "--out", str(out)]
        bench_population.main([*step, *where, "--forms", *forms, "--norms", *norms])
        return
    device = torch.device(args.device)
    bench_dir = Path(__file__).parents[1] / "reports/bench"
    if args.from_json:  # re-render the CUDA table from its saved rows (no GPU needed)
        args.out = args.out or bench_dir / "norms_cuda.md"
        text = cuda_markdown(args.from_json)
    elif device.type == "cuda":
        args.out = args.out or bench_dir / "norms_cuda.md"
        saved = {"rounds": args.rounds, "inner": args.inner, "torch": torch.__version__}
        saved["device"] = torch.cuda.get_device_name(device)

        def save(rows: list[dict]) -> None:  # the table so far: a benchmark cut short keeps its rows
            saved["rows"] = rows
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps(saved, indent=1))
            replace_text(args.out, cuda_markdown(saved))

        bench_cuda(args.rounds, args.inner, device, save)
        text = cuda_markdown(saved)
    else:
        args.out = args.out or bench_dir / "norms.md"
        torch.set_num_threads(args.threads)
        rows = bench(args.rounds, args.inner)
        text = to_markdown(rows, args.rounds, args.inner, args.threads)
    replace_text(args.out, text)
    print(text)


def replace_text(path: Path, text: str) -> None:
    """``path`` replaced by ``text`` whole (a reader never sees a part)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


if __name__ == "__main__":
    main()
