"""A GAN run (``task.model.arch=gan``): adversarial training, its history, and the measures recorded in
result.json — the Fréchet distance ``fd`` (the task's main metric, lower is better; ``fd_real``, real
training samples measured the same way, is its floor), the classes the
generator covers, ``mode_collapsed``, and for a batch-dependent generator norm the distance with the
generator in training mode (``fd_batch_stats``: batch statistics of generated batches of the run's
batch size instead of the running ones). A non-finite loss gives status ``diverged`` at its step.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from normbench.checkpoint import (
    CHECKPOINT_FILE,
    MODEL_FILE,
    Checkpoint,
    random_state,
    restore_random_state,
    save_weights,
)
from normbench.experiment.record import RunRecord, record_plan
from normbench.norms import norm_spec
from normbench.runtime import Runtime
from normbench.samplers import iid_batches
from normbench.tasks.cifar import default_root
from normbench.tasks.dataset import Dataset
from normbench.tasks.gan import (
    GAN,
    FeatureClassifier,
    adversarial_step,
    feature_classifier,
    gaussian,
    sample_metrics,
    save_sample_grid,
)
from normbench.train import lr_schedule, make_optimizer, training_plan

log = logging.getLogger(__name__)

FINAL_SAMPLES = 2000  # generated samples behind the final measures
HISTORY_SAMPLES = 500  # per history point
SAMPLES_FILE = "samples.png"


def to_unit_range(data: Dataset) -> Dataset:
    """Every split mapped linearly so that the training inputs span [-1, 1] (the generator's tanh)."""
    lo, hi = data.x_train.min(), data.x_train.max()

    def scaled(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else (x - lo) / (hi - lo) * 2 - 1

    return dataclasses.replace(
        data, x_train=scaled(data.x_train), x_test=scaled(data.x_test), x_val=scaled(data.x_val)
    )


@dataclasses.dataclass(frozen=True)
class Reference:
    """What every run of one dataset is measured against: the fixed feature classifier (and its
    digest), the test set's feature Gaussian, the classifier's own test error and ``fd_real``, the
    distance of real training samples (the floor)."""

    classifier: FeatureClassifier
    digest: str
    real_stats: tuple[np.ndarray, np.ndarray]
    real_error: float
    fd_real: float

    def metrics(self, samples: torch.Tensor, num_classes: int) -> dict[str, float]:
        return sample_metrics(self.classifier, samples, self.real_stats, num_classes)


def reference(cfg: DictConfig, data: Dataset) -> Reference:
    """The :class:`Reference` of ``data`` (in the generator's range, :func:`to_unit_range`)."""
    classifier, digest = feature_classifier(
        data.x_train,
        data.y_train,
        data.num_classes,
        {
            "dataset": cfg.task.dataset,
            "mnist1d_samples": cfg.data.mnist1d_samples,
            "val_size": cfg.data.val_size,
            "split_seed": cfg.data.split_seed,
        },
        Path(cfg.data.root).expanduser() if cfg.data.root else default_root(),
    )
    with torch.no_grad():
        real_error = float((classifier(data.x_test.cpu()).argmax(1) != data.y_test.cpu()).float().mean())
        real_stats = gaussian(classifier.features(data.x_test.cpu()))
        n_real = min(FINAL_SAMPLES, len(data.x_train))
        fd_real = sample_metrics(classifier, data.x_train[:n_real], real_stats, data.num_classes)["fd"]
    return Reference(classifier, digest, real_stats, real_error, fd_real)


def eval_noise_seed(cfg: DictConfig) -> int:
    """The seed of the evaluation noise: the same samples at every history point."""
    return cfg.seed + 40_000


def generated_metrics(
    gan: GAN, n: int, cfg: DictConfig, ref: Reference, data: Dataset, device
) -> dict[str, float]:
    """The measures of ``n`` samples of ``gan``'s generator in eval mode, from the run's evaluation noise."""
    gan.generator.eval()
    with torch.no_grad():
        fake = gan.sample(n, torch.Generator().manual_seed(eval_noise_seed(cfg)), device)
    gan.generator.train()
    return ref.metrics(fake, data.num_classes)


def train_gan(
    cfg: DictConfig,
    record: RunRecord,
    data: Dataset,
    gan: GAN,
    runtime: Runtime,
    out_dir: Path,
    progress: bool,
) -> None:
    data = to_unit_range(data)
    ref = reference(cfg, data)
    bs = cfg.batch_size
    plan = training_plan(cfg, len(data.x_train))
    steps_per_epoch, total, eval_every, lr = plan.steps_per_epoch, plan.total, plan.eval_every, plan.lr
    schedule = lr_schedule(lr, total, cfg.optim.schedule, cfg.optim.warmup_steps)
    opt = {
        net: make_optimizer(
            cfg.optim.name, getattr(gan, net).parameters(), lr, cfg.optim.momentum, cfg.optim.weight_decay
        )
        for net in ("generator", "discriminator")
    }
    gen = torch.Generator().manual_seed(cfg.seed)
    noise = torch.Generator().manual_seed(noise_seed(cfg))
    mixed = cfg.task.model.d_batches == "mixed"
    record_plan(record, total, steps_per_epoch, lr)

    def measure(n: int) -> dict[str, float]:
        return generated_metrics(gan, n, cfg, ref, data, runtime.device)

    history, status, diverged_at = [], "completed", None
    start = time.perf_counter()
    batches = iid_batches(len(data.x_train), bs, gen)
    d_loss = g_loss = torch.zeros(())
    every = cfg.train.checkpoint_every
    checkpoint = Checkpoint(out_dir / CHECKPOINT_FILE, every, record.config_hash) if every else None
    first = 0
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        gan.load_state_dict(saved["model"])
        for net, optimizer in opt.items():
            optimizer.load_state_dict(saved["optimizer"][net])
        restore_random_state(saved["random"], [noise])
        first, history = saved["step"], saved["history"]
        for _ in range(first):  # the sampler's stream is the seed's: replay its draws
            next(batches)
        log.info("resumed from %s at step %d of %d", checkpoint.path, first, total)
    for step in tqdm(range(first + 1, total + 1), disable=not progress, desc="training", unit="step"):
        for optimizer in opt.values():
            for group in optimizer.param_groups:
                group["lr"] = schedule(step - 1)
        idx = next(batches).to(runtime.device)
        z = torch.randn(bs, gan.generator.latent, generator=noise).to(runtime.device)
        with runtime.autocast():
            d_loss, g_loss = adversarial_step(
                gan, data.x_train[idx], z, opt["discriminator"], opt["generator"], mixed
            )
        if not (torch.isfinite(d_loss) and torch.isfinite(g_loss)):
            status, diverged_at = "diverged", step
            log.warning("non-finite GAN loss at step %d: run diverged", step)
            break
        if step % eval_every == 0 or step == total:
            point = {
                "step": step,
                "epoch": step / steps_per_epoch,
                "d_loss": float(d_loss),
                "g_loss": float(g_loss),
            }
            point |= measure(HISTORY_SAMPLES)
            history.append(point)
            log.info(
                "step %d/%d: d_loss %.4f g_loss %.4f fd %.3f",
                step,
                total,
                point["d_loss"],
                point["g_loss"],
                point["fd"],
            )
        if checkpoint is not None and checkpoint.due(step, total):
            checkpoint.save(
                {
                    "step": step,
                    "model": gan.state_dict(),
                    "optimizer": {net: optimizer.state_dict() for net, optimizer in opt.items()},
                    "random": random_state([noise]),
                    "history": history,
                }
            )
    steps = diverged_at or total
    time_per_step = (time.perf_counter() - start) / max(1, steps)
    losses = {"d_loss": float(d_loss), "g_loss": float(g_loss)}
    finish_gan(
        cfg,
        record,
        gan,
        ref,
        data,
        runtime,
        out_dir,
        (status, steps, history, diverged_at, losses),
        time_per_step,
    )


def noise_seed(cfg: DictConfig) -> int:
    """The seed of the generator's training noise (the batches' sampler uses the run's seed)."""
    return cfg.seed + 30_000


def finish_gan(
    cfg: DictConfig,
    record: RunRecord,
    gan: GAN,
    ref: Reference,
    data: Dataset,
    runtime: Runtime,
    out_dir: Path,
    outcome: tuple[str, int, list[dict], int | None, dict[str, float]],
    time_per_step: float,
) -> None:
    """Fill ``record`` from a trained ``gan`` and how its training went (``outcome``: status, steps,
    history, the step it diverged at, the last step's losses): the final measures, the sample grid
    and the saved weights."""
    status, steps, history, diverged_at, losses = outcome
    record.status, record.steps, record.history, record.diverged_at_step = status, steps, history, diverged_at
    record.time_per_step_s = time_per_step
    metrics: dict[str, float | bool] = {"fd_classifier_test_error": ref.real_error, "fd_real": ref.fd_real}
    record.fd_classifier = ref.digest
    if status == "completed":
        final = generated_metrics(gan, FINAL_SAMPLES, cfg, ref, data, runtime.device)
        if not math.isfinite(final["fd"]):  # finite losses, non-finite samples: nothing to measure
            record.status, record.diverged_at_step = "diverged", steps
            record.error, record.metrics = "non-finite generated samples", metrics
            return
        metrics |= {**losses, **final}
        metrics["mode_collapsed"] = bool(metrics["classes_covered"] <= data.num_classes / 2)
        g_norm, d_norm = cfg.task.model.g_norm or cfg.norm.name, cfg.task.model.d_norm or cfg.norm.name
        bs = cfg.batch_size
        if norm_spec(g_norm).batch_dependent:
            metrics["fd_batch_stats"] = batch_stats_fd(gan, bs, eval_noise_seed(cfg), ref, data, runtime)
        with torch.no_grad():
            gan.generator.eval()
            grid = gan.sample(64, torch.Generator().manual_seed(eval_noise_seed(cfg)), runtime.device)
        if cfg.train.save_model:
            save_weights(gan, out_dir / MODEL_FILE)
        save_sample_grid(
            grid,
            out_dir / SAMPLES_FILE,
            f"{cfg.task.name}, G: {g_norm}, D: {d_norm}, batch {bs}, seed {cfg.seed}",
        )
    record.metrics = metrics


def batch_stats_fd(gan: GAN, bs: int, seed: int, ref: Reference, data: Dataset, runtime: Runtime) -> float:
    """The Fréchet distance of samples generated in training mode, batch by batch, on a copy (the run's
    running statistics stay as they are)."""
    generator = copy.deepcopy(gan.generator).train()
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(FINAL_SAMPLES // bs * bs, generator.latent, generator=noise).to(runtime.device)
        fake = torch.cat([generator(chunk) for chunk in z.split(bs)])
    return ref.metrics(fake, data.num_classes)["fd"]
