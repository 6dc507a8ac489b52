"""The training loop: budgets, learning-rate scaling and schedules, divergence detection, history."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from normbench.checkpoint import Checkpoint, random_state, restore_random_state
from normbench.evaluate import error_and_loss
from normbench.runtime import CPU_FP32, Runtime
from normbench.tasks.classification import LOGITS
from normbench.tasks.dataset import Dataset
from normbench.tasks.registry import Task

log = logging.getLogger(__name__)


def scaled_lr(base_lr: float, batch_size: int, base_batch_size: int, scaling: str) -> float:
    """The learning rate for ``batch_size`` given one tuned at ``base_batch_size`` (Goyal et al. 2017:
    linear; Krizhevsky 2014 / Adam practice: square root; or none)."""
    ratio = batch_size / base_batch_size
    factors = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}
    if scaling not in factors:
        raise ValueError(f"optim.lr_scaling={scaling!r}; allowed: {', '.join(factors)}")
    return base_lr * factors[scaling]


def lr_schedule(peak: float, total_steps: int, schedule: str, warmup_steps: int) -> Callable[[int], float]:
    """Learning rate at step ``t`` (0-based): linear warm-up, then cosine decay to 0 or constant."""

    def lr_at(t: int) -> float:
        if t < warmup_steps:
            return peak * (t + 1) / warmup_steps
        if schedule == "constant":
            return peak
        progress = (t - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * peak * (1 + math.cos(math.pi * progress))

    return lr_at


@dataclass(frozen=True)
class Plan:
    """A run's schedule: steps per epoch, total steps, steps between history points, and the lr
    scaled to the batch size."""

    steps_per_epoch: int
    total: int
    eval_every: int
    lr: float


def training_plan(cfg: DictConfig, n_train: int) -> Plan:
    """The plan of ``cfg``'s budget (``train.budget`` epochs or steps) on ``n_train`` samples."""
    bs = cfg.batch_size
    per_epoch = n_train // bs
    epochs = cfg.train.budget == "epochs"
    total = cfg.train.epochs * per_epoch if epochs else cfg.train.steps
    eval_every = per_epoch if epochs else math.ceil(total / cfg.train.history_points)
    return Plan(
        per_epoch,
        total,
        eval_every,
        scaled_lr(cfg.optim.lr, bs, cfg.optim.base_batch_size, cfg.optim.lr_scaling),
    )


def make_optimizer(name: str, params, lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"optim.name={name!r}; allowed: sgd, adamw")


@dataclass
class FitResult:
    status: str  # "completed" or "diverged"
    steps: int
    diverged_at_step: int | None
    history: list[dict] = field(default_factory=list)
    train_time_s: float = 0.0
    population: str | None = None  # the form of the population that trained it (None: a run alone)
    captured: bool = False  # whether its steps replayed a CUDA graph (runtime.cuda_graph)


def on_device(batches: Iterator[Tensor], device: torch.device, chunk: int = 256) -> Iterator[Tensor]:
    """``batches`` moved to ``device`` ``chunk`` batches per copy: one host-to-device transfer per chunk
    instead of a synchronizing one per step. The sequence is unchanged (batches are drawn ahead)."""
    if device.type == "cpu":
        return batches

    def moved() -> Iterator[Tensor]:
        while True:
            yield from torch.stack([next(batches) for _ in range(chunk)]).to(device)

    return moved()


def fit(
    model: nn.Module,
    data: Dataset,
    batches: Iterator[Tensor],
    optimizer: torch.optim.Optimizer,
    lr_at: Callable[[int], float],
    total_steps: int,
    eval_every: int,
    steps_per_epoch: int,
    progress: bool = False,
    is_finite: Callable[[Tensor], bool] = lambda loss: bool(torch.isfinite(loss).all()),
    eval_model: nn.Module | None = None,
    evaluate: bool = True,
    runtime: Runtime = CPU_FP32,
    transform: Callable[[Tensor], Tensor] | None = None,
    checkpoint: Checkpoint | None = None,
    on_point: Callable[[dict], None] | None = None,
    task: Task = LOGITS,
) -> FitResult:
    """Train for ``total_steps`` optimizer steps; every ``eval_every`` steps (and at the end) append the
    mean training loss since the last point and the test (and validation) error of ``eval_model``
    (default ``model``) to the history and log one line. Forward passes run under ``runtime``'s autocast (float16 with
    loss scaling).

    A loss that ``is_finite`` rejects stops training with status ``diverged`` at that step. On the CPU
    every loss is checked as it comes; on a GPU the losses are checked every ``runtime.check_every``
    steps and at every evaluation, so the host never waits for the device in between (a diverged run
    is still reported at its first non-finite step, and is not evaluated). With ``evaluate=False``
    (torchrun processes other than 0) no history is kept and nothing is logged. ``transform`` maps
    each training batch's inputs (data augmentation); evaluations see the inputs as they are.
    With ``checkpoint``, the training state is saved every ``checkpoint.every`` steps and a saved state
    is resumed from (:mod:`normbench.checkpoint`). ``on_point`` is called with each history point.
    Each step minimizes ``task.loss`` of its batch; the history's errors are ``task``'s.
    """
    model.train()
    x, y = data.x_train, data.y_train
    history: list[dict] = []
    losses: list[Tensor] = []  # this check window's losses
    since = 0
    loss_sum = torch.zeros((), device=x.device)
    check_every = runtime.check_every
    scaler = runtime.grad_scaler()
    generators = [g for g in (getattr(transform, "keywords", {}).get("gen"),) if g is not None]
    first = 0
    saved = checkpoint.load(holds="model") if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(saved["scaler"])
        restore_random_state(saved["random"], generators)
        first, history, since = saved["step"], saved["history"], saved["since"]
        loss_sum = saved["loss_sum"].to(x.device)
        for _ in range(first):  # the sampler's stream is the seed's: replay its draws
            next(batches)
        log.info("resumed from %s at step %d of %d", checkpoint.path, first, total_steps)
    batches = on_device(batches, x.device)
    bar = tqdm(
        total=total_steps, initial=first, unit="step", disable=not progress, file=sys.stderr, leave=False
    )
    start = time.perf_counter()
    try:
        for step in range(first, total_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            idx = next(batches)
            inputs = x[idx] if transform is None else transform(x[idx])  # augmentation, on the batch
            with runtime.autocast():
                loss = task.loss(model(inputs), inputs, y[idx])
            losses.append(loss.detach())
            done = step + 1
            due = evaluate and (done % eval_every == 0 or done == total_steps)
            save = checkpoint is not None and checkpoint.due(done, total_steps)
            if len(losses) >= check_every or due or save or done == total_steps:
                window = torch.stack(losses) if len(losses) > 1 else losses[0]
                if not is_finite(window):
                    offset = int((~torch.isfinite(window.reshape(-1))).nonzero()[0])
                    first = done - len(losses) + offset
                    log.warning("non-finite loss %s at step %d: run diverged", float(losses[offset]), first)
                    return FitResult("diverged", first, first, history, time.perf_counter() - start)
                losses.clear()
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            loss_sum += loss.detach()
            since += 1
            if due:
                with runtime.autocast():
                    test_error, _ = error_and_loss(eval_model or model, data.x_test, data.y_test, task=task)
                    if data.x_val is not None:
                        val_error, _ = error_and_loss(eval_model or model, data.x_val, data.y_val, task=task)
                point = {
                    "step": done,
                    "epoch": round(done / steps_per_epoch, 4),
                    "train_loss": float(loss_sum) / since,
                    "test_error": test_error,
                }
                if data.x_val is not None:
                    point["val_error"] = val_error
                history.append(point)
                if on_point is not None:
                    on_point(point)
                log.info(
                    "step %d/%d (epoch %.2f): train_loss %.4f test_error %.4f",
                    done,
                    total_steps,
                    point["epoch"],
                    point["train_loss"],
                    test_error,
                )
                bar.set_postfix(loss=f"{point['train_loss']:.3f}", test_err=f"{test_error:.3f}")
                loss_sum.zero_()
                since = 0
            if save:
                checkpoint.save(
                    {
                        "step": done,
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict() if scaler is not None else {},
                        "random": random_state(generators),
                        "history": history,
                        "loss_sum": loss_sum,
                        "since": since,
                    }
                )
            bar.update()
    finally:
        bar.close()
    return FitResult("completed", total_steps, None, history, time.perf_counter() - start)
