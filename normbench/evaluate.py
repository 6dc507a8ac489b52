"""Evaluations of a trained model. None of them changes the model (weights, buffers or mode)."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normbench.norms import iter_specs


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, every submodule's train/eval mode restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield model.eval()
    finally:
        for m, mode in modes.items():
            m.training = mode


@torch.no_grad()
def error_and_loss(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """Classification error (fraction) and mean cross-entropy in eval mode (running statistics)."""
    with eval_mode(model):
        wrong, loss = 0, 0.0
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            wrong += int((logits.argmax(1) != target).sum())
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
    return wrong / len(x), loss / len(x)


def _has_tensor(module: nn.Module, name: str) -> bool:
    return isinstance(getattr(module, name, None), Tensor)


def stat_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that keep population statistics: plugins the registry flags ``running_stats`` (and
    torch's own BatchNorm) that hold a ``running_var`` buffer — with ``running_mean`` where the plugin
    has one (EvoNorm-B0 keeps only the variance)."""
    kinds = (
        *(s.factory for s in iter_specs() if s.running_stats and inspect.isclass(s.factory)),
        nn.modules.batchnorm._BatchNorm,
    )
    return {
        name: m for name, m in model.named_modules() if isinstance(m, kinds) and _has_tensor(m, "running_var")
    }


@torch.no_grad()
def minibatch_error(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, order: Tensor) -> float:
    """Error with mini-batch statistics: a training-mode forward over the batches ``order`` cuts into
    (the last may be smaller), on a copy so no running statistic moves."""
    twin = copy.deepcopy(model).train()
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1 < batch_size:  # no lone sample: batch stats need two
        batches[-2:] = [torch.cat(batches[-2:])]
    wrong = 0
    for idx in batches:
        wrong += int((twin(x[idx]).argmax(1) != y[idx]).sum())
    return wrong / len(order)


@torch.no_grad()
def precise_bn(
    model: nn.Module, x: Tensor, batch_size: int, num_samples: int, gen: torch.Generator
) -> nn.Module:
    """A copy of ``model`` whose running statistics are the population statistics of each layer's
    input, re-estimated with frozen weights (PreciseBN; Wu & Johnson 2021, fvcore ``update_bn_stats``).

    The forward passes run in training mode at ``batch_size``, as in training; every layer's mean and
    variance are pooled exactly over ``num_samples`` training samples (law of total variance; the
    variance stored unbiased like torch's), not averaged batch by batch.
    """
    twin = copy.deepcopy(model).train()
    layers = stat_modules(twin)
    sums: dict[str, list] = {}

    def hook(name: str):
        def accumulate(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
            v = inputs[0].detach().transpose(0, 1).reshape(inputs[0].shape[1], -1).double()
            acc = sums.setdefault(name, [0, 0.0, 0.0])
            acc[0] += v.shape[1]
            acc[1] = acc[1] + v.sum(1)
            acc[2] = acc[2] + (v * v).sum(1)

        return accumulate

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    try:
        order = torch.randperm(len(x), generator=gen)[: min(num_samples, len(x))]
        for idx in order.split(batch_size):
            if len(idx) > 1 or batch_size == 1:
                twin(x[idx])
    finally:
        for h in handles:
            h.remove()
    for name, m in layers.items():
        n, s, ss = sums[name]
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0) * n / max(1, n - 1)
        if _has_tensor(m, "running_mean"):
            m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    return twin.eval()


def relative_l2(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


def stats_distance(model: nn.Module, reference: nn.Module) -> dict[str, float]:
    """Relative L2 distance of ``model``'s running means and variances to ``reference``'s (the
    PreciseBN estimate), averaged over layers."""
    ours, theirs = stat_modules(model), stat_modules(reference)
    distances: dict[str, float] = {}
    for stat in ("running_mean", "running_var"):
        values = [
            relative_l2(getattr(m, stat), getattr(theirs[k], stat))
            for k, m in ours.items()
            if _has_tensor(m, stat)
        ]
        if values:
            distances[f"{stat}_rel_l2"] = sum(values) / len(values)
    return distances
