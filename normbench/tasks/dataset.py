"""A classification task's data in memory: train, validation and test tensors."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Dataset:
    """Train and test tensors of a classification task; ``x`` is channel-first (N, C, *spatial)."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    x_val: Tensor | None = None  # held out of the training set (:meth:`split`), or None
    y_val: Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device, memory_format: torch.memory_format = torch.preserve_format) -> Dataset:
        """The same data on ``device`` (inputs in ``memory_format``); ``self`` where nothing changes."""
        if torch.device(device) == self.x_train.device and memory_format == torch.preserve_format:
            return self

        def moved(x: Tensor | None) -> Tensor | None:
            return None if x is None else x.to(device, memory_format=memory_format)

        return replace(
            self,
            x_train=moved(self.x_train),
            y_train=self.y_train.to(device),
            x_test=moved(self.x_test),
            y_test=self.y_test.to(device),
            x_val=moved(self.x_val),
            y_val=None if self.y_val is None else self.y_val.to(device),
        )

    def split(self, val_size: float, seed: int) -> Dataset:
        """A validation set held out of the training set: ``val_size`` as a fraction (< 1) or a count
        (>= 1) of it, stratified (each class gives its share, the rounding spread by largest
        remainders so that the total is exact), chosen by ``seed`` alone. The same ``(val_size,
        seed)`` always holds out the same samples; 0 returns ``self``. A dataset with a validation set of
        its own (``data.mnist1d_val_samples``) takes none."""
        if val_size == 0:
            return self
        if self.x_val is not None:
            raise ValueError(
                f"data.val_size={val_size:g}: the validation set is data.mnist1d_val_samples' own draws; "
                "set data.val_size=0 with it"
            )
        n = len(self.y_train)
        target = round(val_size * n) if val_size < 1 else int(val_size)
        if not 1 < target < n:  # one sample would leave the validation set's batch statistics undefined
            raise ValueError(
                f"data.val_size={val_size:g}: must hold out at least two samples and leave training samples "
                f"(the training set has {n})"
            )
        counts = torch.bincount(self.y_train, minlength=self.num_classes).double()
        quota = counts * target / n
        take = quota.floor().long()
        extra = target - int(take.sum())
        remainders = quota - take
        take[torch.argsort(-remainders, stable=True)[:extra]] += 1  # largest remainders, then class order
        gen = torch.Generator().manual_seed(seed)
        held = []
        for c in range(self.num_classes):
            members = torch.nonzero(self.y_train == c).flatten()
            members = members[torch.randperm(len(members), generator=gen)]
            held.append(members[: int(take[c])])
        val = torch.sort(torch.cat(held)).values
        keep = torch.ones(n, dtype=torch.bool)
        keep[val] = False
        return replace(
            self,
            x_train=self.x_train[keep],
            y_train=self.y_train[keep],
            x_val=self.x_train[val],
            y_val=self.y_train[val],
        )
