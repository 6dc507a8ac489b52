"""Offline datasets as in-memory tensors. Nothing here downloads anything."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from functools import cache
from importlib.metadata import version

import numpy as np
import torch
from torch import Tensor

from normbench.results import atomic_file
from normbench.tasks.cifar import default_root, load_cifar
from normbench.tasks.dataset import Dataset

MNIST1D_EXTRA_TEST_SEED = 43  # make_dataset's own seed is 42: the extra test samples are new draws
MNIST1D_VAL_SEED = 44  # and the validation samples of data.mnist1d_val_samples others again
MNIST1D_KEYS = ("x", "y", "x_test", "y_test")  # what normbench uses of make_dataset's output
DIGITS_KEYS = ("x_train", "x_test", "y_train", "y_test")  # the split of scikit-learn's digits


def _cached_arrays(
    name: str, keys: tuple[str, ...], make: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """``make()``'s arrays ``keys``, read from ``<data root>/<name>.npz`` (the root:
    :func:`normbench.tasks.cifar.default_root`) where an earlier process wrote them: generating a
    dataset costs a second or two with its package's import, in every worker process of a sweep, the
    file milliseconds. ``name`` says everything the arrays depend on (package version, arguments). A
    file that cannot be read or lacks one of ``keys`` is made anew and replaced; a root that cannot be
    written only means no cache."""
    path = default_root() / f"{name}.npz"
    try:
        with np.load(path) as stored:
            if set(keys) <= set(stored.files):
                return {key: stored[key] for key in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # not written yet, or damaged
    arrays = make()
    try:
        with atomic_file(path, "wb") as f:
            np.savez(f, **arrays)
    except OSError:
        pass  # a read-only root: made every time
    return arrays


def _mnist1d_raw(num_samples: int, seed: int, train_split: float) -> dict[str, np.ndarray]:
    """make_dataset's arrays (those normbench uses) for these arguments, cached on disk."""

    def make() -> dict[str, np.ndarray]:
        # make_dataset generates the data from templates with args.seed: offline and identical
        # everywhere. get_dataset would try to download a pickle, so it is never used.
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
        generated = make_dataset(args)
        return {key: generated[key] for key in MNIST1D_KEYS}

    name = f"mnist1d/{version('mnist1d')}-{num_samples}-{seed}-{train_split:g}"
    return _cached_arrays(name, MNIST1D_KEYS, make)


def _draws(count: int, seed: int) -> dict:
    """``count`` new MNIST-1D samples from ``seed``, whole classes, shuffled (make_dataset's test split)."""
    return _mnist1d_raw(-(-count // 10) * 10, seed, 0.0)


@cache
def _mnist1d(num_samples: int = 5000, test_samples: int = 0, val_samples: int = 0) -> Dataset:
    """``num_samples`` generated, 80% train and 20% test (make_dataset's split); with ``test_samples``
    larger than that test split, the test set is topped up to ``test_samples`` with samples generated
    from another seed (so the training set, and every run trained on it, stays the same); with
    ``val_samples``, a validation set of that many samples generated from a third seed (the training set
    again unchanged). Each generation is standardised by make_dataset with its own mean and std, which
    over thousands of samples agree to about 1e-3."""
    raw = _mnist1d_raw(num_samples, 42, 0.8)

    def x(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=torch.float32).unsqueeze(1)  # (N, 1, 40)

    def y(a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=torch.long)

    x_test, y_test = x(raw["x_test"]), y(raw["y_test"])
    extra = test_samples - len(y_test)
    if test_samples and extra < 0:
        raise ValueError(
            f"data.mnist1d_test_samples={test_samples}: must be 0 or at least the {len(y_test)} test "
            f"samples of data.mnist1d_samples={num_samples}"
        )
    if extra > 0:
        more = _draws(extra, MNIST1D_EXTRA_TEST_SEED)
        x_test = torch.cat([x_test, x(more["x_test"][:extra])])
        y_test = torch.cat([y_test, y(more["y_test"][:extra])])
    val = _draws(val_samples, MNIST1D_VAL_SEED) if val_samples else None
    return Dataset(
        "mnist1d",
        x(raw["x"]),
        y(raw["y"]),
        x_test,
        y_test,
        10,
        x_val=None if val is None else x(val["x_test"][:val_samples]),
        y_val=None if val is None else y(val["y_test"][:val_samples]),
    )


def _digits_split() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    raw = load_digits()  # shipped with scikit-learn: 1797 8x8 images, values 0..16
    x_tr, x_te, y_tr, y_te = train_test_split(
        raw.images, raw.target, test_size=0.25, stratify=raw.target, random_state=0
    )
    return dict(zip(DIGITS_KEYS, (x_tr, x_te, y_tr, y_te), strict=True))


@cache
def _digits() -> Dataset:
    raw = _cached_arrays(f"digits/scikit-learn-{version('scikit-learn')}", DIGITS_KEYS, _digits_split)
    mean, std = raw["x_train"].mean(), raw["x_train"].std()

    def x(a: np.ndarray) -> Tensor:
        return torch.as_tensor((a - mean) / std, dtype=torch.float32).unsqueeze(1)  # (N, 1, 8, 8)

    return Dataset(
        "digits",
        x(raw["x_train"]),
        torch.as_tensor(raw["y_train"], dtype=torch.long),
        x(raw["x_test"]),
        torch.as_tensor(raw["y_test"], dtype=torch.long),
        10,
    )


@cache
def _cifar(name: str, root: str, fetch: bool) -> Dataset:
    return load_cifar(name, root or None, fetch)


# name -> loader(root, download, mnist1d_samples, mnist1d_test_samples, mnist1d_val_samples): each
# takes what applies to it
DATASETS: dict[str, Callable[[str, bool, int, int, int], Dataset]] = {
    "mnist1d": lambda root, fetch, samples, test_samples, val_samples: _mnist1d(
        samples, test_samples, val_samples
    ),
    "digits": lambda root, fetch, samples, test_samples, val_samples: _digits(),
    "cifar10": lambda root, fetch, samples, test_samples, val_samples: _cifar("cifar10", root, fetch),
    "cifar100": lambda root, fetch, samples, test_samples, val_samples: _cifar("cifar100", root, fetch),
}


def load_dataset(
    name: str,
    root: str = "",
    download: bool = False,
    mnist1d_samples: int = 5000,
    mnist1d_test_samples: int = 0,
    mnist1d_val_samples: int = 0,
) -> Dataset:
    """The dataset ``name`` (one of :data:`DATASETS`), cached per process; datasets read from disk
        (CIFAR) come from ``root`` (default: :func:`normbench.tasks.cifar.default_root`), fetched first
        when missing and ``download``; MNIST-1D is generated with ``mnist1d_samples`` samples, its test set topped up to
        ``mnist1d_test_samples`` (0: no more than its 20%), and ``mnist1d_val_samples`` new samples as its
    validation set (0: none; then ``Dataset.split`` holds one out of training). Tensors are
        read-only by convention: callers index them and never write into them."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if mnist1d_val_samples and name != "mnist1d":
        raise ValueError(f"data.mnist1d_val_samples={mnist1d_val_samples}: only for MNIST-1D, not {name}")
    return DATASETS[name](root, download, mnist1d_samples, mnist1d_test_samples, mnist1d_val_samples)
