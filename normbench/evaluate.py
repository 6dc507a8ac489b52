"""Evaluations of a trained model. None of them changes the model (weights, buffers or mode)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Run evaluations on ``model`` and restore its buffers and train/eval modes afterwards."""
    buffers = {k: v.clone() for k, v in model.state_dict().items() if k in dict(model.named_buffers())}
    modes = {m: m.training for m in model.modules()}
    try:
        yield model
    finally:
        with torch.no_grad():
            for name, buf in model.named_buffers():
                if name in buffers:
                    buf.copy_(buffers[name])
        for m, mode in modes.items():
            m.training = mode


@torch.no_grad()
def error_and_loss(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """Classification error (fraction) and mean cross-entropy in eval mode (running statistics)."""
    with preserved(model):
        model.eval()
        wrong, loss = 0, 0.0
        for start in range(0, len(x), batch_size):
            logits = model(x[start : start + batch_size])
            target = y[start : start + batch_size]
            wrong += int((logits.argmax(1) != target).sum())
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
    return wrong / len(x), loss / len(x)
