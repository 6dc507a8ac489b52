"""normbench's training loop beside a minimal hand-written PyTorch loop: same model, tensors, batches.

Both loops train the same task/norm/batch size for the same number of steps and finish with the same
test-set evaluation; the rounds interleave them in one process. Reports the median time per step and
the ratio, at batch sizes 2 and 128, to reports/bench/train.md.

    python scripts/bench_train.py
    python scripts/bench_train.py --task mnist1d_cnn --norm groupnorm --steps 200 --rounds 5
    python scripts/bench_train.py --device cuda  # reports/bench/train_cuda.md
    python scripts/bench_train.py --task cifar10_resnet20 --batch-sizes 32 128  # data-pipeline share

For a recurrent task (seq_lstm, digits_lstm) it times one training epoch of normbench's NormRNN
against a hand-written LSTM loop with the same norms (one module per position, no per-step machinery)
and writes reports/bench/train_TASK.md. For a task with augmentation (the CIFAR tasks) it measures instead where a training step's time goes:
drawing the batch (indexing + augmentation on the device) against forward, backward and the optimizer
step, and writes reports/bench/train_TASK[_cuda].md. Without the dataset under --data-root it uses a
synthetic one of CIFAR's size written in CIFAR's format (the pipeline does the same work on it).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_args import count
from hydra import compose, initialize_config_dir

import normbench
from normbench import available_norms
from normbench.argtypes import known_device, writable_file
from normbench.cli import CONF_DIR
from normbench.distributed import World, all_finite, shard
from normbench.evaluate import error_and_loss
from normbench.experiment.build import model_from_config
from normbench.runtime import Runtime, resolve_device
from normbench.samplers import iid_batches
from normbench.tasks import load_dataset
from normbench.tasks.cifar import MissingData, crop_flip, write_fixture
from normbench.train import fit, lr_schedule


def minimal_loop(model, data, batch_size, steps, lr, seed, runtime) -> float:
    gen = torch.Generator().manual_seed(seed)
    batches = iid_batches(len(data.x_train), batch_size, gen)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        idx = next(batches).to(runtime.device)
        with runtime.autocast():
            loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    error_and_loss(model, data.x_test, data.y_test)
    return (time.perf_counter() - start) / steps


def normbench_loop(model, data, batch_size, steps, lr, seed, runtime) -> float:
    gen = torch.Generator().manual_seed(seed)
    world = (
        World()
    )  # as normbench.experiment.run.execute drives fit: sharded batches, agreed divergence check
    batches = shard(iid_batches(len(data.x_train), batch_size, gen), world)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    fit(
        model,
        data,
        batches,
        opt,
        lr_schedule(lr, steps, "constant", 0),
        steps,
        steps,
        len(data.x_train) // batch_size,
        is_finite=lambda loss: all_finite(loss, world),
        runtime=runtime,
    )
    return (time.perf_counter() - start) / steps


class HandLSTM(torch.nn.Module):
    """The plainest normalized LSTM: the loop written out, one norm module per position."""

    def __init__(self, features: int, hidden: int, classes: int, make_norm):
        super().__init__()
        self.w_x = torch.nn.Linear(features, 4 * hidden, bias=False)
        self.w_h = torch.nn.Linear(hidden, 4 * hidden, bias=False)
        self.b = torch.nn.Parameter(torch.zeros(4 * hidden))
        self.nx, self.nh, self.nc = make_norm(4 * hidden), make_norm(4 * hidden), make_norm(hidden)
        self.head = torch.nn.Linear(hidden, classes)
        self.hidden = hidden

    def forward(self, x):
        h = c = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[-1]):
            i, f, o, g = (self.nx(self.w_x(x[:, :, t])) + self.nh(self.w_h(h)) + self.b).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(self.nc(c))
        return self.head(h)


def epoch_time(model, data, batch_size: int, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    batches = iid_batches(len(data.x_train), batch_size, gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    start = time.perf_counter()
    for _ in range(len(data.x_train) // batch_size):
        idx = next(batches)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def bench_recurrent(args, cfg) -> list[str]:
    from normbench import build_norm

    data = load_dataset(cfg.task.dataset)
    torch.manual_seed(0)
    ours = model_from_config(cfg, data)
    features = data.input_shape[0]
    hand = HandLSTM(features, cfg.task.model.width, data.num_classes, lambda c: build_norm(args.norm, c))
    rows = []
    for bs in args.batch_sizes:
        times: dict[str, list[float]] = {"hand": [], "normbench": []}
        for r in range(args.rounds + 1):
            for name, model in (("hand", hand), ("normbench", ours)):
                t = epoch_time(copy.deepcopy(model), data, bs, r)
                if r:
                    times[name].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            f"| {bs} | {med['hand']:.2f} | {med['normbench']:.2f} | {med['normbench'] / med['hand']:.2f} |"
        )
        print(rows[-1], flush=True)
    return [
        f"# One training epoch of {cfg.task.name}: normbench's NormRNN vs a hand-written LSTM loop",
        "",
        f"norm `{args.norm}`, hidden {cfg.task.model.width}, {len(data.x_train)} training sequences of "
        f"{data.input_shape[-1]} steps, 1 torch thread, torch {torch.__version__}; median over {args.rounds} "
        "interleaved rounds (after one warm-up round) of one epoch each. The hand-written loop has one norm "
        "module per position; NormRNN keeps per-step statistics for batch-dependent norms (shared affine), "
        "the gates' input projections of all steps in one matmul. Target: ratio <= 2.",
        "",
        f"Reproduce: `python scripts/bench_train.py --task {cfg.task.name} --norm {args.norm} --rounds "
        f"{args.rounds} --batch-sizes {' '.join(map(str, args.batch_sizes))}`",
        "",
        "| batch size | hand-written s/epoch | normbench s/epoch | ratio |",
        "|---:|---:|---:|---:|",
        *rows,
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline_share(model, data, batch_size: int, steps: int, runtime, seed: int) -> tuple[float, float]:
    """Seconds per step spent drawing batches (index + augmentation) and in forward/backward/optimizer,
    each phase timed to completion on the device."""
    gen = torch.Generator().manual_seed(seed)
    augment = partial(crop_flip, gen=torch.Generator(runtime.device).manual_seed(seed))
    batches = iid_batches(len(data.x_train), batch_size, gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()
    draw = compute = 0.0
    for _ in range(steps):
        start = time.perf_counter()
        idx = next(batches).to(runtime.device)
        x, y = augment(data.x_train[idx]), data.y_train[idx]
        sync(runtime.device)
        mid = time.perf_counter()
        with runtime.autocast():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(runtime.device)
        draw += mid - start
        compute += time.perf_counter() - mid
    return draw / steps, compute / steps


def bench_pipeline(args, cfg, runtime) -> list[str]:
    try:
        data, source = load_dataset(cfg.task.dataset, args.data_root), "the real dataset"
    except MissingData:
        tmp = Path(tempfile.mkdtemp())
        write_fixture(tmp, cfg.task.dataset, 50000, 10000)
        data, source = (
            load_dataset(cfg.task.dataset, str(tmp)),
            "a synthetic dataset of CIFAR's size and format",
        )
    torch.manual_seed(0)
    initial = model_from_config(cfg, data).to(runtime.device)
    data = data.to(runtime.device)
    rows = []
    for bs in args.batch_sizes:
        draws, computes = [], []
        for r in range(args.rounds + 1):
            d, c = pipeline_share(copy.deepcopy(initial), data, bs, args.steps, runtime, r)
            if r:  # round 0 warms up
                draws.append(d)
                computes.append(c)
        d, c = statistics.median(draws), statistics.median(computes)
        rows.append(f"| {bs} | {d * 1e3:.2f} | {c * 1e3:.2f} | {c / (c + d):.1%} | {bs / (c + d):.0f} |")
        print(rows[-1], flush=True)
    where = torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else "1 torch thread"
    return [
        f"# Where a training step's time goes: {cfg.task.name}",
        "",
        f"norm `{args.norm}`, precision {args.precision}, {where}, torch {torch.__version__}, on {source}; "
        f"median over {args.rounds} rounds (after one warm-up round) of {args.steps} steps. `draw` is indexing "
        "the batch and augmenting it (pad-4 random crop + flip, batched on the device), `compute` forward, "
        "backward and the optimizer step; each phase is timed to completion. Target: compute >= 90%.",
        "",
        f"Reproduce: `python scripts/bench_train.py --task {cfg.task.name} --norm {args.norm} --steps "
        f"{args.steps} --rounds {args.rounds} --batch-sizes {' '.join(map(str, args.batch_sizes))} "
        f"--device {args.device} --precision {args.precision}`",
        "",
        "| batch size | draw ms/step | compute ms/step | compute share | images/s |",
        "|---:|---:|---:|---:|---:|",
        *rows,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--task", default="mnist1d_mlp", choices=sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
    )
    parser.add_argument("--norm", default="batchnorm", choices=available_norms())
    parser.add_argument("--steps", type=count, default=300)
    parser.add_argument("--rounds", type=count, default=7)
    parser.add_argument("--batch-sizes", type=count, nargs="+", default=[2, 128])
    parser.add_argument("--device", type=known_device, default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--data-root", default="", help="where CIFAR is (default: data.root's default)")
    parser.add_argument(
        "--out", type=writable_file, default=None, help="default reports/bench/train[_TASK][_cuda].md"
    )
    args = parser.parse_args()
    runtime = Runtime(resolve_device(args.device), args.precision)
    on_gpu = runtime.device.type == "cuda"
    torch.set_num_threads(1)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"task={args.task}", f"norm={args.norm}"])
    augmented = cfg.task.augment != "none"
    recurrent = cfg.task.model.arch == "rnn"
    name = f"train{f'_{args.task}' if augmented or recurrent else ''}{'_cuda' if on_gpu else ''}.md"
    args.out = args.out or Path(__file__).parents[1] / "reports/bench" / name
    if recurrent:
        write(args.out, bench_recurrent(args, cfg))
        return
    if augmented:
        write(args.out, bench_pipeline(args, cfg, runtime))
        return
    data = load_dataset(cfg.task.dataset)
    torch.manual_seed(0)
    initial = model_from_config(cfg, data).to(runtime.device)
    data = data.to(runtime.device)
    rows = []
    for bs in args.batch_sizes:
        times: dict[str, list[float]] = {"minimal": [], "normbench": []}
        for r in range(args.rounds + 1):  # round 0 warms up
            for name, loop in (("minimal", minimal_loop), ("normbench", normbench_loop)):
                t = loop(copy.deepcopy(initial), data, bs, args.steps, 0.01, r, runtime)
                if r:
                    times[name].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append((bs, med["minimal"], med["normbench"], med["normbench"] / med["minimal"]))
        print(
            f"batch {bs}: minimal {med['minimal'] * 1e3:.3f} ms/step, normbench {med['normbench'] * 1e3:.3f} ms/step"
        )
    lines = [
        "# Training-loop overhead",
        "",
        f"task `{args.task}`, norm `{args.norm}`, {args.steps} steps per measurement, median of {args.rounds} "
        f"interleaved rounds (after one warm-up round), "
        f"{torch.cuda.get_device_name(runtime.device) if on_gpu else '1 torch thread'}, "
        f"precision {args.precision}, torch {torch.__version__}, "
        f"normbench {normbench.__version__}, Python {platform.python_version()}. Both loops use the same "
        "model copy, tensors and batch sequence, and end with the same test-set evaluation; normbench's "
        "loop adds its lr schedule, divergence check, loss accounting and history. Target: ratio <= 1.10.",
        "",
        f"Reproduce: `python scripts/bench_train.py --task {args.task} --norm {args.norm} --steps {args.steps} "
        f"--rounds {args.rounds} --device {args.device} --precision {args.precision}`",
        "",
        "| batch size | minimal ms/step | normbench ms/step | ratio |",
        "|---:|---:|---:|---:|",
        *(f"| {bs} | {a * 1e3:.3f} | {b * 1e3:.3f} | {ratio:.3f} |" for bs, a, b, ratio in rows),
    ]
    write(args.out, lines)


def write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
