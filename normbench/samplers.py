"""Batch samplers: which training samples form each optimisation batch.

Each sampler yields index tensors forever (epoch after epoch) from a seeded generator, so the batch
sequence is a function of the seed only.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def iid_epochs(num_samples: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Each epoch's batches as one (batches, batch_size) tensor: reshuffled every epoch, the last
    incomplete batch dropped."""
    per_epoch = num_samples // batch_size
    while True:
        perm = torch.randperm(num_samples, generator=gen)
        yield perm[: per_epoch * batch_size].view(per_epoch, batch_size)


def iid_batches(num_samples: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """The batches of :func:`iid_epochs`, one by one."""
    for epoch in iid_epochs(num_samples, batch_size, gen):
        yield from epoch


def class_grouped_batches(
    labels: Tensor, batch_size: int, classes_per_batch: int, gen: torch.Generator
) -> Iterator[Tensor]:
    """Non-i.i.d. batches (Batch Renorm's stress test): each batch holds ``classes_per_batch`` distinct
    classes with ``batch_size / classes_per_batch`` samples each.

    Every epoch each class is shuffled and cut into chunks; batches draw chunks from distinct classes,
    classes picked with probability proportional to their remaining chunks, until fewer than
    ``classes_per_batch`` classes have chunks left.
    """
    per_class = batch_size // classes_per_batch
    classes = torch.unique(labels)
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    while True:
        chunks = []
        for idx in members:
            shuffled = idx[torch.randperm(len(idx), generator=gen)]
            n = len(shuffled) // per_class
            chunks.append(list(shuffled[: n * per_class].view(n, per_class)))
        remaining = torch.tensor([len(c) for c in chunks], dtype=torch.float64)
        while int((remaining > 0).sum()) >= classes_per_batch:
            picked = torch.multinomial(remaining, classes_per_batch, replacement=False, generator=gen)
            yield torch.cat([chunks[int(c)].pop() for c in picked])
            remaining[picked] -= 1


def check_class_grouped(batch_size: int, classes_per_batch: int, num_classes: int) -> str | None:
    """Why a class-grouped configuration cannot work, or None."""
    if not 1 <= classes_per_batch <= num_classes:
        return f"data.classes_per_batch={classes_per_batch} must be between 1 and {num_classes}"
    if batch_size % classes_per_batch:
        return (
            f"batch_size={batch_size} is not divisible by data.classes_per_batch={classes_per_batch} "
            "(class-grouped batches hold equal parts of each class)"
        )
    return None
