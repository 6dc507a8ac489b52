"""Diagnose the batch statistics of any model: :func:`diagnose` and ``normbench-diagnose``.

BatchNorm trains on mini-batch statistics and evaluates with running averages of them (EMA), an
approximation of the population statistics that can be stale or biased (Wu & Johnson 2021, "Rethinking
'Batch' in BatchNorm"). For any ``nn.Module`` whose norms keep running statistics (torch's BatchNorm
and its subclasses such as timm's norm-act layers, SyncBatchNorm, normbench's plugins), this module
measures the model's error and loss in eval mode

- with its EMA statistics (as it is),
- with PreciseBN statistics: every layer's mean and variance re-estimated exactly over
  ``precise_samples`` training samples, weights frozen (fvcore's ``update_bn_stats``, pooled by the law
  of total variance rather than averaged batch by batch),
- with mini-batch statistics at each of ``batch_sizes`` (the train-test inconsistency that grows as
  the normalization batch shrinks),

and, per layer, how far the EMA statistics are from PreciseBN's and whether the layer has a single value
per channel to normalize at batch 1. The model is never changed: every measurement runs on a copy.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normbench.argtypes import positive_int, writable_file
from normbench.checkpoint import load_weights
from normbench.evaluate import _has_tensor, pooled_statistics, relative_l2, stat_modules
from normbench.norms import plugin_classes
from normbench.results import write_text_atomic
from normbench.runtime import resolve_device

Batches = Iterable[tuple[Tensor, Tensor]]


@dataclass
class Diagnosis:
    """What :func:`diagnose` found: ``results`` (one row per statistics source, batch size and split:
    error and loss), ``layers`` (one row per layer with running statistics: the EMA's relative L2
    distance to PreciseBN's mean and variance, and whether the layer sees one value per channel at
    batch 1) and a short ``verdict``."""

    results: pd.DataFrame
    layers: pd.DataFrame
    verdict: str

    def __str__(self) -> str:
        return "\n\n".join(
            [self.verdict, self.results.to_string(index=False), self.layers.to_string(index=False)]
        )


def _samples(batches: Batches, limit: int | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """The first ``limit`` samples (all, for None) of a loader of (inputs, targets) batches."""
    xs, ys, count = [], [], 0
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(map(torch.is_tensor, batch))):
            raise ValueError(
                f"diagnose: a loader's batches must be (inputs, targets) tensors, got {_kind(batch)}"
            )
        x, y = batch
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):  # zip-like pairing would misalign samples
            raise ValueError(
                f"diagnose: a batch's inputs {tuple(x.shape)} and targets {tuple(y.shape)} must have one "
                "target per input (the same first dimension)"
            )
        xs.append(x)
        ys.append(y)
        count += len(x)
        if limit is not None and count >= limit:
            break
    if not xs:
        raise ValueError("diagnose: a loader gave no batches")
    x, y = torch.cat(xs)[:limit], torch.cat(ys)[:limit]
    if x.is_floating_point() and not torch.isfinite(x).all():  # every error would be argmax of NaN
        raise ValueError(f"diagnose: {int((~torch.isfinite(x)).sum())} input values are NaN or infinite")
    return x.to(device), y.to(device)


def _class_indices(y: Tensor, label: str) -> None:
    """Targets the errors are counted on are class indices, one per sample: compared with outputs of
    another shape they would broadcast into a wrong error without any failure."""
    if y.dim() != 1 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(
            f"diagnose: {label}'s targets must be class indices, one integer per input (shape (N,)), "
            f"got shape {_per_input(y.shape)} of {y.dtype}"
        )


def _per_input(shape: torch.Size) -> str:
    """A shape with its first dimension as N: the samples read, not a batch's size, are known here."""
    return f"({', '.join(['N', *map(str, shape[1:])])}{',' if len(shape) == 1 else ''})"


def _kind(batch: object) -> str:
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)}: {', '.join(type(b).__name__ for b in batch)}"
    return f"a {type(batch).__name__}"


def _scored(out: object, target: Tensor, loss_fn: Callable[..., Tensor]) -> tuple[int, float]:
    """The wrong top-1 predictions among ``out``'s rows and their summed loss."""
    if not (torch.is_tensor(out) and out.dim() == 2 and len(out) == len(target)):
        kind = f"shape {tuple(out.shape)}" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise ValueError(
            f"diagnose: the model must return a (batch, classes) tensor of scores for {len(target)} "
            f"inputs, got {kind}"
        )
    if len(target) and not (int(target.min()) >= 0 and int(target.max()) < out.shape[1]):
        raise ValueError(
            f"diagnose: targets must be class indices in [0, {out.shape[1]}) for the model's "
            f"{out.shape[1]} outputs, got {int(target.min())} to {int(target.max())}"
        )
    return int((out.argmax(1) != target).sum()), float(loss_fn(out, target, reduction="sum"))


@torch.no_grad()
def _error_and_loss(
    model: nn.Module, x: Tensor, y: Tensor, batches: Iterable[Tensor], loss_fn: Callable[..., Tensor]
) -> tuple[float, float]:
    """Error and mean loss of ``model`` over the samples of ``batches`` (index tensors into x, y)."""
    wrong, loss, n = 0, 0.0, 0
    for idx in batches:
        batch_wrong, batch_loss = _scored(model(x[idx]), y[idx], loss_fn)
        wrong, loss, n = wrong + batch_wrong, loss + batch_loss, n + len(idx)
    return wrong / n, loss / n


def precise_statistics(model: nn.Module, x: Tensor, batch_size: int) -> nn.Module:
    """A copy of ``model`` whose layers' running statistics are their inputs' exact population mean
    and (unbiased) variance over the samples ``x``, from training-mode forwards at ``batch_size``
    (the weights untouched; a last batch of one sample is left out, as it has no batch statistics)."""
    batches = (x[start : start + batch_size] for start in range(0, len(x), batch_size))
    return pooled_statistics(model, (b for b in batches if len(b) > 1))


@torch.no_grad()
def _one_value_per_channel(model: nn.Module, x: Tensor) -> dict[str, bool]:
    """Per layer with running statistics, and per BatchNorm without them: does one sample give it a
    single value per channel (so that at batch 1 its batch statistics are undefined)? False for a
    layer that never uses batch statistics (frozen)."""
    twin = copy.deepcopy(model).eval()
    batch_norms = {n: m for n, m in twin.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    every = {**batch_norms, **stat_modules(twin)}
    layers = {n: m for n, m in every.items() if _uses_batch_statistics(m)}
    seen: dict[str, bool] = {}
    handles = [
        m.register_forward_pre_hook(
            lambda module, inputs, name=name: seen.__setitem__(
                name, inputs[0][0].numel() == inputs[0].shape[1]
            )
        )
        for name, m in layers.items()
    ]
    try:
        # in eval mode every layer is reached; two samples, since a norm without running statistics
        # (BatchNorm with track_running_stats=False) normalizes over the batch even there
        twin(x[:2])
    finally:
        for h in handles:
            h.remove()
    return {name: seen.get(name, False) for name in every}


DEFAULT_BATCH_SIZES = (2, 8, 32, 128)


def diagnose(
    model: nn.Module,
    train_loader: Batches,
    test_loader: Batches | None = None,
    *,
    batch_sizes: Sequence[int] | None = None,
    precise_samples: int = 4096,
    precise_batch_size: int = 32,
    eval_batch_size: int = 256,
    loss_fn: Callable[..., Tensor] = F.cross_entropy,
    device: str | torch.device | None = None,
) -> Diagnosis:
    """The batch statistics of ``model``'s norms, measured on classification batches.

    Args:
        model: any module; its norms with running statistics are found by type (torch's BatchNorm and
            subclasses, normbench plugins flagged ``running_stats``). Never changed.
        train_loader: (inputs, targets) batches of training data: PreciseBN's statistics come from its
            first ``precise_samples`` samples, in the order it gives them.
        test_loader: the data the errors are measured on (default: the same training samples).
        batch_sizes: batch sizes of the mini-batch-statistics evaluation, each evaluated on the full
            batches of that size the test samples make (default: those of 2, 8, 32 and 128 they hold);
            one above the number of test samples is refused.
        precise_batch_size: the batch size of PreciseBN's training-mode forwards (the training batch
            size: a layer's input depends on the batch statistics of the layers before it).
        loss_fn: ``loss_fn(outputs, targets, reduction="sum")``; errors are top-1 over dim 1.
        device: where to run: a torch.device, or auto, cpu, cuda or cuda:N (default: the model's).

    Returns:
        :class:`Diagnosis`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"diagnose: model must be an nn.Module, got {type(model).__name__}")
    for label, loader in (("train_loader", train_loader), ("test_loader", test_loader)):
        if not isinstance(loader, Iterable) and (loader is not None or label == "train_loader"):
            raise TypeError(
                f"diagnose: {label} must give (inputs, targets) batches (e.g. a DataLoader), got {type(loader).__name__}"
            )
    if batch_sizes is not None and not isinstance(batch_sizes, Sequence):
        raise TypeError(
            f"diagnose: batch_sizes must be a sequence of batch sizes, e.g. (2, 8), got {batch_sizes!r}"
        )
    for b in (*(batch_sizes or ()), precise_batch_size, eval_batch_size):
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"diagnose: batch sizes must be integers >= 1, got {b!r}")
    if isinstance(precise_samples, bool) or not isinstance(precise_samples, int) or precise_samples < 2:
        raise ValueError(f"diagnose: precise_samples must be an integer >= 2, got {precise_samples!r}")
    first = next(iter(model.parameters()), None)
    if isinstance(device, str):  # checked as runtime.device is: one this machine lacks is one line
        device = resolve_device(device, "device")
    device = torch.device(device) if device is not None else (first.device if first is not None else "cpu")
    work = copy.deepcopy(model).to(device).eval()
    layers = stat_modules(work)
    if not layers:
        raise ValueError(
            f"diagnose: {type(model).__name__} has no norm layer with running statistics (BatchNorm and "
            "the like); there is nothing to diagnose"
        )
    x_train, y_train = _samples(train_loader, precise_samples, device)
    x_test, y_test = (x_train, y_train) if test_loader is None else _samples(test_loader, None, device)
    split = "test" if test_loader is not None else "train"
    _class_indices(y_test, "test_loader" if test_loader is not None else "train_loader")
    dtype = next((p.dtype for p in work.parameters() if p.is_floating_point()), None)
    if dtype is not None:  # a half-precision model is measured on inputs of its own precision
        x_train, x_test = (x if not x.is_floating_point() else x.to(dtype) for x in (x_train, x_test))
    if batch_sizes is None:
        batch_sizes = [b for b in DEFAULT_BATCH_SIZES if b <= len(x_test)]
    elif max(batch_sizes, default=0) > len(x_test):
        raise ValueError(
            f"diagnose: batch size {max(batch_sizes)} is more than the {len(x_test)} {split} samples"
        )
    precise = precise_statistics(work, x_train, precise_batch_size)
    at_one = _one_value_per_channel(work, x_test)
    rows = []
    in_order = torch.arange(len(x_test), device=device).split(eval_batch_size)
    for source, net in (("EMA", work), ("PreciseBN", precise)):
        error, loss = _error_and_loss(net, x_test, y_test, in_order, loss_fn)
        rows.append({"statistics": source, "batch_size": None, "split": split, "error": error, "loss": loss})
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x_test), generator=gen).to(device)
    for b in batch_sizes:
        if b == 1 and any(at_one.values()):  # undefined batch statistics: no number to give
            error = loss = None
        else:  # a smaller last batch would be another size
            batches = [idx for idx in order.split(b) if len(idx) == b]
            error, loss = _error_and_loss(copy.deepcopy(work).train(), x_test, y_test, batches, loss_fn)
        rows.append(
            {"statistics": "mini-batch", "batch_size": b, "split": split, "error": error, "loss": loss}
        )
    results = pd.DataFrame(rows).astype({"batch_size": "Int64"})  # an integer column with gaps
    ema, precise_layers = stat_modules(work), stat_modules(precise)
    layer_rows = []
    for name, m in ema.items():
        row = {"layer": name, "type": type(m).__name__}
        for stat in ("running_mean", "running_var"):
            if _has_tensor(m, stat):
                row[f"{stat}_rel_l2"] = relative_l2(getattr(m, stat), getattr(precise_layers[name], stat))
        row["one_value_per_channel_at_batch_1"] = at_one[name]
        row["batch_statistics_in_training"] = _uses_batch_statistics(m)
        layer_rows.append(row)
    layer_frame = pd.DataFrame(layer_rows)
    return Diagnosis(results, layer_frame, _verdict(results, layer_frame, split))


def _uses_batch_statistics(module: nn.Module) -> bool:
    """Whether ``module`` normalizes with batch statistics in training mode: a plugin as its registry
    entry says (``frozen_batchnorm`` does not), torch's BatchNorm always."""
    specs = plugin_classes()
    spec = next((specs[cls] for cls in type(module).__mro__ if cls in specs), None)
    return True if spec is None else spec.batch_dependent


def _verdict(results: pd.DataFrame, layers: pd.DataFrame, split: str) -> str:
    ema, precise = (results[results.statistics == s].iloc[0] for s in ("EMA", "PreciseBN"))
    lines = [
        f"{split} error: {ema.error:.2%} with the EMA statistics, {precise.error:.2%} with PreciseBN's "
        f"({100 * (ema.error - precise.error):+.2f} pp for the EMA)."
    ]
    minibatch = results[(results.statistics == "mini-batch") & results.error.notna()]
    if len(minibatch):
        worst = minibatch.loc[minibatch.error.idxmax()]
        lines.append(
            f"With mini-batch statistics: {', '.join(f'{r.error:.2%} at batch {r.batch_size}' for r in minibatch.itertuples())}"
            f" (worst: batch {int(worst.batch_size)}, {100 * (worst.error - precise.error):+.2f} pp against PreciseBN)."
        )
    if "running_var_rel_l2" in layers and layers.running_var_rel_l2.notna().any():
        drift = layers.loc[layers.running_var_rel_l2.idxmax()]
        lines.append(
            f"Largest drift of the running variance from PreciseBN's: {drift.layer} "
            f"({drift.running_var_rel_l2:.1%} relative L2)."
        )
    frozen = list(layers.layer[~layers.batch_statistics_in_training])
    if frozen:
        lines.append(
            f"{len(frozen)} layer(s) normalize with their running statistics in training too (frozen), so "
            f"the mini-batch rows do not change how they normalize: {', '.join(frozen)}."
        )
    broken = list(layers.layer[layers.one_value_per_channel_at_batch_1])
    if broken:
        lines.append(
            f"{len(broken)} layer(s) see one value per channel at batch 1, so their batch statistics are "
            f"undefined there: {', '.join(broken)}."
        )
    return "\n".join(lines)


def _load(path: str) -> object:
    module, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"{path}: expected MODULE:NAME (e.g. my_package.models:resnet18)")
    try:
        target = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"{path}: cannot import it ({exc})") from None
    return target() if callable(target) and not isinstance(target, nn.Module) else target


def main(argv: list[str] | None = None) -> None:
    """``normbench-diagnose --model MODULE:NAME --data MODULE:NAME``: NAME is a module or a function
    returning one (for --model), and a function returning (train_loader, test_loader) (for --data)."""
    parser = argparse.ArgumentParser(
        prog="normbench-diagnose",
        description="The test error of a model's norms with their running (EMA) statistics, with "
        "PreciseBN's and with mini-batch statistics at each batch size, and how far each layer's EMA "
        "is from PreciseBN's.",
    )
    parser.add_argument(
        "--model", required=True, help="MODULE:NAME of an nn.Module or a function returning one"
    )
    parser.add_argument(
        "--data", required=True, help="MODULE:NAME of a function returning (train, test) loaders"
    )
    parser.add_argument("--checkpoint", help="a state dict to load into the model first (weights only)")
    parser.add_argument(
        "--batch-sizes",
        nargs="+",
        type=positive_int(),
        help=f"default: those of {', '.join(map(str, DEFAULT_BATCH_SIZES))} the test samples hold",
    )
    parser.add_argument("--precise-samples", type=positive_int(), default=4096)
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the model's)")
    parser.add_argument("--csv", type=writable_file, help="write the results table here")
    args = parser.parse_args(argv)
    if os.getcwd() not in sys.path:  # the user's my_model.py beside them, as `python -m` finds it
        sys.path.insert(0, os.getcwd())
    try:
        device = None if args.device is None else resolve_device(args.device, "--device")
        model = _load(args.model)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{args.model}: gave {type(model).__name__!r}, not an nn.Module")
        if args.checkpoint:
            load_weights(model, args.checkpoint, f"--checkpoint {args.checkpoint}")
        loaders = _load(args.data)
        if not (isinstance(loaders, tuple) and len(loaders) == 2):
            raise ValueError(f"{args.data}: must give (train_loader, test_loader)")
        found = diagnose(
            model,
            loaders[0],
            loaders[1],
            batch_sizes=args.batch_sizes,
            precise_samples=args.precise_samples,
            device=device,
        )
        if args.csv is not None:
            write_text_atomic(args.csv, found.results.to_csv(index=False))
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"normbench-diagnose: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(found)
