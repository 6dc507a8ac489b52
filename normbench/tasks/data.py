"""Offline datasets as in-memory tensors. Nothing here downloads anything."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache

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
        seed)`` always holds out the same samples; 0 returns ``self``."""
        if val_size == 0:
            return self
        n = len(self.y_train)
        target = round(val_size * n) if val_size < 1 else int(val_size)
        if not 0 < target < n:
            raise ValueError(
                f"data.val_size={val_size:g}: must hold out at least one sample and leave training samples "
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


MNIST1D_EXTRA_TEST_SEED = 43  # make_dataset's own seed is 42: the extra test samples are new draws


def _mnist1d_raw(num_samples: int, seed: int, train_split: float) -> dict:
    # make_dataset generates the data from templates with args.seed: offline and identical everywhere.
    # get_dataset would try to download a pickle, so it is never used.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
    return make_dataset(args)


@cache
def _mnist1d(num_samples: int = 5000, test_samples: int = 0) -> Dataset:
    """``num_samples`` generated, 80% train and 20% test (make_dataset's split); with ``test_samples``
    larger than that test split, the test set is topped up to ``test_samples`` with samples generated
    from another seed (so the training set, and every run trained on it, stays the same). Each
    generation is standardised by make_dataset with its own mean and std, which over thousands of
    samples agree to about 1e-3."""
    raw = _mnist1d_raw(num_samples, 42, 0.8)

    def x(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=torch.float32).unsqueeze(1)  # (N, 1, 40)

    x_test, y_test = x(raw["x_test"]), torch.as_tensor(raw["y_test"], dtype=torch.long)
    extra = test_samples - len(y_test)
    if test_samples and extra < 0:
        raise ValueError(
            f"data.mnist1d_test_samples={test_samples}: must be 0 or at least the {len(y_test)} test "
            f"samples of data.mnist1d_samples={num_samples}"
        )
    if extra > 0:
        more = _mnist1d_raw(-(-extra // 10) * 10, MNIST1D_EXTRA_TEST_SEED, 0.0)  # whole classes, shuffled
        x_test = torch.cat([x_test, x(more["x_test"][:extra])])
        y_test = torch.cat([y_test, torch.as_tensor(more["y_test"][:extra], dtype=torch.long)])
    return Dataset("mnist1d", x(raw["x"]), torch.as_tensor(raw["y"], dtype=torch.long), x_test, y_test, 10)


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


# name -> loader(root, download, mnist1d_samples, mnist1d_test_samples): each takes what applies to it
DATASETS: dict[str, Callable[[str, bool, int, int], Dataset]] = {
    "mnist1d": lambda root, fetch, samples, test_samples: _mnist1d(samples, test_samples),
    "digits": lambda root, fetch, samples, test_samples: _digits(),
    "cifar10": lambda root, fetch, samples, test_samples: _cifar("cifar10", root, fetch),
    "cifar100": lambda root, fetch, samples, test_samples: _cifar("cifar100", root, fetch),
}


def load_dataset(
    name: str,
    root: str = "",
    download: bool = False,
    mnist1d_samples: int = 5000,
    mnist1d_test_samples: int = 0,
) -> Dataset:
    """The dataset ``name`` (one of :data:`DATASETS`), cached per process; datasets read from disk
    (CIFAR) come from ``root`` (default: :func:`normbench.tasks.cifar.default_root`), fetched first
    when missing and ``download``; MNIST-1D is generated with ``mnist1d_samples`` samples, its test set topped up to
    ``mnist1d_test_samples`` (0: no more than its 20%). Tensors are
    read-only by convention: callers index them and never write into them."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name](root, download, mnist1d_samples, mnist1d_test_samples)
