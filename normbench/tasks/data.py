"""Offline datasets as in-memory tensors. Nothing here downloads anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache, partial

import numpy as np
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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device, memory_format: torch.memory_format = torch.preserve_format) -> Dataset:
        """The same data on ``device`` (inputs in ``memory_format``); ``self`` where nothing changes."""
        if torch.device(device) == self.x_train.device and memory_format == torch.preserve_format:
            return self
        return replace(
            self,
            x_train=self.x_train.to(device, memory_format=memory_format),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device, memory_format=memory_format),
            y_test=self.y_test.to(device),
        )


@cache
def _mnist1d() -> Dataset:
    # make_dataset generates the data from templates with its own fixed seed (42): offline and
    # identical everywhere. get_dataset would try to download a pickle, so it is never used.
    from mnist1d.data import get_dataset_args, make_dataset

    raw = make_dataset(get_dataset_args())

    def x(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=torch.float32).unsqueeze(1)  # (N, 1, 40)

    return Dataset(
        "mnist1d",
        x(raw["x"]),
        torch.as_tensor(raw["y"], dtype=torch.long),
        x(raw["x_test"]),
        torch.as_tensor(raw["y_test"], dtype=torch.long),
        10,
    )


@cache
def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()  # shipped with scikit-learn: 1797 8x8 images, values 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        raw.images, raw.target, test_size=0.25, stratify=raw.target, random_state=0
    )
    mean, std = x_tr.mean(), x_tr.std()

    def x(a: np.ndarray) -> Tensor:
        return torch.as_tensor((a - mean) / std, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)

    return Dataset(
        "digits",
        x(x_tr),
        torch.as_tensor(y_tr, dtype=torch.long),
        x(x_te),
        torch.as_tensor(y_te, dtype=torch.long),
        10,
    )


@cache
def _cifar(name: str, root: str, fetch: bool) -> Dataset:
    from normbench.tasks.cifar import load_cifar

    return load_cifar(name, root or None, fetch)


# name -> loader(root, download): the generated and bundled datasets ignore both
DATASETS: dict[str, Callable[[str, bool], Dataset]] = {
    "mnist1d": lambda root, fetch: _mnist1d(),
    "digits": lambda root, fetch: _digits(),
    "cifar10": partial(_cifar, "cifar10"),
    "cifar100": partial(_cifar, "cifar100"),
}


def load_dataset(name: str, root: str = "", download: bool = False) -> Dataset:
    """The dataset ``name`` (one of :data:`DATASETS`), cached per process; datasets read from disk
    (CIFAR) come from ``root`` (default: :func:`normbench.tasks.cifar.default_root`), fetched first
    when missing and ``download``. Tensors are read-only by convention: callers index them and never
    write into them."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name](root, download)
