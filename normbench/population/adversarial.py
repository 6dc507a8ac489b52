"""GANs as a population: K members of one GAN task (their seeds, learning rates, ... differ, see
:data:`normbench.population.grouping.MEMBER_KEYS`) trained together, each with the result its separate
run (:func:`normbench.train_gan.train_gan`) would give.

The members' generators and discriminators are stacked into two populations; one step runs every
member's discriminator update and then its generator update (:func:`adversarial_steps`, the
population form of :func:`normbench.tasks.gan.adversarial_step`) on the member's own real batch (its
sampler stream) and noise (its noise stream), with each member's own learning rate
(:class:`~normbench.population.optim.PopulationOptimizer`). A member whose losses turn non-finite is
frozen and recorded ``diverged`` at that step, as its run would stop there; the others go on. History
points and the final measures are each member's own, taken from its module after unstacking.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor, nn
from tqdm import tqdm

from normbench.experiment.record import RunRecord, record_plan
from normbench.population.optim import PopulationOptimizer
from normbench.population.stacked import Population
from normbench.population.train import lr_table
from normbench.population.wide import stack_population
from normbench.runtime import Runtime
from normbench.samplers import iid_batches
from normbench.tasks.dataset import Dataset
from normbench.tasks.gan import GAN
from normbench.train import training_plan
from normbench.train_gan import (
    HISTORY_SAMPLES,
    finish_gan,
    generated_metrics,
    noise_seed,
    reference,
    to_unit_range,
)

log = logging.getLogger(__name__)


def _bce(logits: Tensor, real: bool) -> Tensor:
    """Each member's mean binary cross-entropy (K,) of ``logits`` (K, N) against all-real or all-fake."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)


def adversarial_steps(
    g: Population,
    d: Population,
    real: Tensor,
    z: Tensor,
    opt_d: PopulationOptimizer,
    opt_g: PopulationOptimizer,
    lr: Tensor,
    alive: Tensor,
    mixed: bool,
) -> tuple[Tensor, Tensor]:
    """One discriminator and one generator update of every member (non-saturating loss), on its real
    samples ``real`` (K, N, ...) and noise ``z`` (K, N, latent), at its learning rate ``lr`` (K,);
    members not ``alive`` keep their parameters. Returns each member's two losses (K,)."""
    n = real.shape[1]

    def judge(fake: Tensor) -> tuple[Tensor, Tensor]:
        if mixed:
            logits = d.forward(torch.cat([real, fake], dim=1))
            return logits[:, :n], logits[:, n:]
        return d.forward(real), d.forward(fake)

    fake = g.forward(z)
    d_real, d_fake = judge(fake.detach())
    d_loss = _bce(d_real, True) + _bce(d_fake, False)
    opt_d.step(d.member_grads(torch.autograd.grad(d_loss.sum(), d.leaves)), lr, alive)
    fake_logits = judge(fake)[1] if mixed else d.forward(fake)
    g_loss = _bce(fake_logits, True)
    opt_g.step(g.member_grads(torch.autograd.grad(g_loss.sum(), g.leaves)), lr, alive)
    return d_loss.detach(), g_loss.detach()


def train_gan_population(
    cfgs: Sequence[DictConfig],
    records: Sequence[RunRecord],
    data: Dataset,
    gans: Sequence[GAN],
    runtime: Runtime,
    out_dirs: Sequence[Path],
    progress: bool,
    form: str = "auto",
) -> str:
    """Train ``gans`` (one per config of a group) as one population and fill each member's record as
    its separate :func:`normbench.train_gan.train_gan` would; each trained GAN is left in ``gans``.
    Returns the population form of its networks (``vmap`` or ``wide``)."""
    data = to_unit_range(data)
    ref = reference(cfgs[0], data)
    plans = [training_plan(cfg, len(data.x_train)) for cfg in cfgs]
    total, eval_every, per_epoch = plans[0].total, plans[0].eval_every, plans[0].steps_per_epoch
    for record, plan in zip(records, plans, strict=True):
        record_plan(record, total, per_epoch, plan.lr)
    first, device, k = cfgs[0], runtime.device, len(cfgs)
    lrs = lr_table([p.lr for p in plans], total, first.optim.schedule, first.optim.warmup_steps, device)
    g = stack_population([gan.generator for gan in gans], form)
    d = stack_population([gan.discriminator for gan in gans], form)
    opt_g, opt_d = (PopulationOptimizer.for_members(cfgs, list(p.params.values())) for p in (g, d))
    samplers = [
        iid_batches(len(data.x_train), first.batch_size, torch.Generator().manual_seed(c.seed)) for c in cfgs
    ]
    noises = [torch.Generator().manual_seed(noise_seed(c)) for c in cfgs]
    latent, mixed = gans[0].generator.latent, first.task.model.d_batches == "mixed"
    alive = torch.ones(k, dtype=torch.bool, device=device)
    diverged_at = torch.zeros(k, dtype=torch.long, device=device)  # 0: has not diverged
    histories: list[list[dict]] = [[] for _ in cfgs]
    d_loss = g_loss = torch.zeros(k)
    start = time.perf_counter()
    for step in tqdm(range(1, total + 1), disable=not progress, desc="training", unit="step"):
        idx = torch.stack([next(s) for s in samplers]).to(device)
        z = torch.stack([torch.randn(first.batch_size, latent, generator=n) for n in noises]).to(device)
        with runtime.autocast():
            d_loss, g_loss = adversarial_steps(
                g, d, data.x_train[idx], z, opt_d, opt_g, lrs[step - 1], alive, mixed
            )
        finite = torch.isfinite(d_loss) & torch.isfinite(g_loss)  # on the device: no sync per step
        diverged_at.masked_fill_(alive & ~finite, step)
        alive &= finite
        if step % eval_every == 0 or step == total:
            members = alive.nonzero().flatten().tolist()
            g.unstack_into([gan.generator for gan in gans])
            for m in members:
                point = {
                    "step": step,
                    "epoch": step / per_epoch,
                    "d_loss": float(d_loss[m]),
                    "g_loss": float(g_loss[m]),
                }
                histories[m].append(
                    point | generated_metrics(gans[m], HISTORY_SAMPLES, cfgs[m], ref, data, device)
                )
            if not members:
                break
    time_per_step = (time.perf_counter() - start) / max(1, step)
    g.unstack_into([gan.generator for gan in gans])
    d.unstack_into([gan.discriminator for gan in gans])
    for m, (cfg, record, gan, out_dir) in enumerate(zip(cfgs, records, gans, out_dirs, strict=True)):
        at = int(diverged_at[m]) or None
        if at is not None:
            log.warning("member %d (seed %d): non-finite GAN loss at step %d: diverged", m, cfg.seed, at)
        losses = {"d_loss": float(d_loss[m]), "g_loss": float(g_loss[m])}
        outcome = ("completed" if at is None else "diverged", at or total, histories[m], at, losses)
        finish_gan(cfg, record, gan, ref, data, runtime, out_dir, outcome, time_per_step)
    return g.form if g.form == d.form else f"{g.form} (G), {d.form} (D)"
