"""``convert_norms``: replace every normalization layer of any model with a registry plugin.

timm's ``freeze_batch_norm_2d``, torch's ``convert_sync_batchnorm`` and detectron2's
``convert_frozen_batchnorm`` each do one fixed conversion; this one converts to any norm of the open
registry, the plugins' hooks included.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normbench.norms import NormSpec, build_norm, iter_specs, norm_spec
from normbench.norms.registry import option_type_problem

log = logging.getLogger(__name__)

Predicate = Callable[[str, nn.Module], bool]
# Copied whenever source and target both hold one of the same shape: the per-channel affine transform.
AFFINE = ("weight", "bias")
# Copied only between norms that both keep population statistics of their input (the registry's
# running_stats flag, or torch's BatchNorm tracking them): then they mean the same thing.
RUNNING = ("running_mean", "running_var", "num_batches_tracked")
# Options carried over from the source layer when the target takes them and the caller did not set them
# (track_running_stats=False: BatchNorm normalizing with batch statistics in eval mode too; affine=False:
# no per-channel weight and bias, as before a layer whose bias absorbs them).
CARRIED_OPTIONS = ("eps", "momentum", "track_running_stats", "affine")
NORM_ACT_CHILDREN = ["drop", "act"]  # timm's BatchNormAct2d / GroupNormAct: norm, then drop, then act
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Tanh)


@dataclass(frozen=True)
class Conversion:
    """One replaced layer: its qualified name, the old and new types, and what was copied over."""

    name: str
    old: str
    new: str
    copied: tuple[str, ...]
    removed_activation: str | None = None
    adapted_layer: str | None = None


def _plugin_spec(module: nn.Module) -> NormSpec | None:
    for spec in iter_specs():
        if inspect.isclass(spec.factory) and type(module) is spec.factory:
            return spec
    return None


def norm_channels(module: nn.Module) -> int | None:
    """The channel count of a channel-first normalization layer, or None if ``module`` is not one.

    Recognized: torch's BatchNorm1d/2d/3d and SyncBatchNorm, GroupNorm, InstanceNorm1d/2d/3d, LayerNorm
    subclasses over channels of (N, C, H, W) maps (``LayerNorm2d`` as in torchvision's ConvNeXt and
    timm), and every normbench plugin. A plain ``nn.LayerNorm`` normalizes the last dimension of
    token tensors (Transformers): not channel-first, so not converted."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm) and type(module).__name__.endswith("2d"):
        return module.normalized_shape[0]
    if _plugin_spec(module) is not None:
        return module.num_channels
    return None


def _keeps_running_stats(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.track_running_stats
    spec = _plugin_spec(module)
    return spec is not None and spec.running_stats and getattr(module, "track_running_stats", True)


def _carried(layer: str, source: nn.Module, spec: NormSpec, options: dict[str, Any]) -> dict[str, Any]:
    """``options``, the :data:`CARRIED_OPTIONS` of ``source`` that ``spec`` takes and they do not set, and
    ``bias=True`` for a target with an optional bias (rmsnorm) where ``source`` has one;
    ValueError where a value would be dropped for the target's default, changing what the layer does
    (torch's ``momentum=None``, a cumulative average, into a plugin whose momentum is a rate only)."""
    carried = dict(options)
    for name in CARRIED_OPTIONS:
        if name not in spec.options or name in options or not hasattr(source, name):
            continue
        if name in ("track_running_stats", "affine") and isinstance(
            source, nn.modules.instancenorm._InstanceNorm
        ):
            continue  # torch's InstanceNorm defaults (both False) describe IN, not the norm it becomes
        if name == "affine" and getattr(source, "weight", None) is not None:
            continue  # an affine transform held otherwise (frozen_batchnorm's buffers): copied below
        value = getattr(source, name)
        if option_type_problem(spec.option_types.get(name, Any), value) is None:
            carried[name] = value
        else:
            raise ValueError(
                f"convert_norms: {layer} has {name}={value!r}, which {spec.name} does not take; pass "
                f"{name}=... for the new layers"
            )
    if (
        "bias" in spec.options
        and "bias" not in options
        and isinstance(getattr(source, "bias", None), torch.Tensor)
    ):
        carried["bias"] = True  # a learned shift kept (rmsnorm has none by default): often the net's only one
    return carried


def _copy_state(source: nn.Module, target: nn.Module, running: bool) -> tuple[str, ...]:
    copied = []
    names = AFFINE + (RUNNING if running else ())
    with torch.no_grad():
        for name in names:
            a, b = getattr(source, name, None), getattr(target, name, None)
            if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape:
                b.copy_(a)
                copied.append(name)
    return tuple(copied)


def _replacement(
    name: str, module: nn.Module, channels: int, spec: NormSpec, options: dict[str, Any]
) -> tuple[nn.Module, tuple[str, ...]]:
    """The plugin layer that replaces ``module`` (on its device, dtype and mode, with its state where it
    means the same), and the names of the tensors copied into it."""
    if isinstance(module, nn.modules.lazy.LazyModuleMixin) and module.has_uninitialized_params():
        raise ValueError(
            f"convert_norms: {name} ({type(module).__name__}) has not seen an input yet, so its channels are "
            "unknown; run one forward pass through the model first"
        )
    if spec.frozen_statistics and not _keeps_running_stats(module):
        raise ValueError(
            f"convert_norms: {name} ({type(module).__name__}) keeps no running statistics, and {spec.name} "
            "normalizes with running statistics it never updates: the new layer would use its initial ones "
            "(mean 0, variance 1); exclude it or choose a norm that computes its own statistics"
        )
    carried = _carried(name, module, spec, options)
    try:
        new = build_norm(spec.name, channels, **carried)
    except ValueError as e:  # e.g. channels that the options' groups do not divide: name the layer
        raise ValueError(f"convert_norms: {name} ({type(module).__name__}, {channels} channels): {e}") from e
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    ref = next((t for t in tensors if t.is_floating_point()), None)
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    copied = _copy_state(module, new, _keeps_running_stats(module) and spec.running_stats)
    new.train(module.training)
    if module._modules:  # a norm-act layer: the new norm, then its own dropout and activation
        new = nn.Sequential(new, module.drop, module.act).train(module.training)
    return new, copied


def _placement(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _neighbour(parent: nn.Module, child: str, offset: int) -> tuple[str, nn.Module] | None:
    names = list(parent._modules)
    i = names.index(child) + offset
    return (names[i], parent._modules[names[i]]) if 0 <= i < len(names) else None


def _qualified(parent_name: str, child: str) -> str:
    return f"{parent_name}.{child}" if parent_name else child


def convert_norms(
    model: nn.Module,
    norm: str,
    *,
    include: Predicate | None = None,
    exclude: Predicate | None = None,
    keep_activation: bool = False,
    **options: Any,
) -> list[Conversion]:
    """Replace every channel-first normalization layer of ``model`` (in place) with the registry plugin
    ``norm`` built with ``options``, and return what was converted (also logged).

    Each new layer gets the old one's device, dtype and train/eval mode; its ``eps``, ``momentum``, a
    BatchNorm's ``track_running_stats``, ``affine=False``, and ``bias=True`` where it has a bias and the
    plugin's bias is optional (rmsnorm), unless ``options`` sets them (where the plugin takes them; a
    value it does not take, such as torch's ``momentum=None`` into a plugin whose momentum is a rate,
    is a ValueError); the old affine ``weight``/``bias``; and the running statistics
    where both norms keep population statistics of their input (BatchNorm into frozen_batchnorm,
    batchrenorm or sync_batchnorm carries them exactly). A lazy layer that has not seen an input yet is
    a ValueError. A layer held in several places (shared) becomes one new layer held in the same
    places. Every new layer is built before the model is changed, so an option that one layer cannot
    take (groups that do not divide its channels) leaves the model as it was. ``include``/``exclude``
    are predicates ``(qualified_name, module) -> bool`` choosing which layers to convert.

    Plugin hooks: for a plugin with an ``adapt_layer`` hook (ws_groupnorm) the conv/linear layer
    registered just before the norm in the same parent (``conv1`` before ``bn1``, the previous element
    of an ``nn.Sequential``) is adapted; for a plugin that includes its activation
    (``replaces_activation``: FRN, EvoNorms) the activation module right after the norm in an
    ``nn.Sequential`` is replaced by ``nn.Identity``. A norm-act layer (timm's ``BatchNormAct2d``: a
    BatchNorm with its own ``drop`` and ``act``) becomes ``nn.Sequential(plugin, drop, act)``, its
    ``act`` replaced by ``nn.Identity`` for a plugin that includes one. Where the structure does not
    show that layer or activation (e.g. a ReLU applied in ``forward``), a ValueError names the layer
    before anything is changed; ``keep_activation=True`` keeps the model's activations instead.

    Raises:
        KeyError: unknown norm name (with a "did you mean").
        ValueError: a hook the model's structure does not allow, options the plugin refuses, or a layer
            without running statistics into a plugin that only uses them (frozen_batchnorm).
        TypeError: ``model`` is not a module, ``include``/``exclude`` not callable, or an option the
            plugin does not take or of another type than its annotation.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert_norms: model must be an nn.Module, got {type(model).__name__}")
    for name, predicate in (("include", include), ("exclude", exclude)):
        if predicate is not None and not callable(predicate):
            raise TypeError(
                f"convert_norms: {name} must be a predicate (qualified_name, module) -> bool, "
                f"got {type(predicate).__name__}"
            )
    spec = norm_spec(norm)
    if norm_channels(model) is not None:
        raise ValueError(
            f"convert_norms: the model is itself a normalization layer ({type(model).__name__}); "
            f"convert_norms replaces the layers inside a model (build_norm({spec.name!r}, "
            f"{norm_channels(model)}) builds one)"
        )
    plan = []
    built: dict[int, nn.Module] = {}  # one new layer per old one, however many places hold it
    for name, module in model.named_modules(remove_duplicate=False):
        channels = norm_channels(module)
        if channels is None or not name:
            continue
        if include is not None and not include(name, module):
            continue
        if exclude is not None and exclude(name, module):
            continue
        parent, child = _placement(model, name)
        parent_name = name.rpartition(".")[0]
        adapt = activation = None
        inner = list(module._modules)
        if inner and (inner != NORM_ACT_CHILDREN or _plugin_spec(module) is not None):
            raise ValueError(
                f"convert_norms: {name} ({type(module).__name__}) holds submodules {inner} whose part in its "
                "forward is unknown; exclude it"
            )
        if spec.adapt_layer is not None:
            before = _neighbour(parent, child, -1)
            if before is None or not isinstance(before[1], (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                raise ValueError(
                    f"convert_norms: {norm} adapts the conv/linear layer before each norm, but {name} has "
                    "none registered just before it in its parent module; exclude it or choose another norm"
                )
            adapt = before[0]
        if spec.replaces_activation and not keep_activation and inner:
            activation = f"{child}.2"  # the norm-act layer's own activation (its Sequential's last element)
        elif spec.replaces_activation and not keep_activation:
            after = _neighbour(parent, child, +1) if isinstance(parent, nn.Sequential) else None
            if after is None or not isinstance(after[1], ACTIVATIONS):
                raise ValueError(
                    f"convert_norms: {norm} includes its activation, but {name} is not followed by an "
                    "activation module in an nn.Sequential, so the model's own activation cannot be removed; "
                    "pass keep_activation=True to keep it, exclude the layer, or choose another norm"
                )
            activation = after[0]
        if id(module) not in built:  # every new layer is built before the model is changed
            built[id(module)] = _replacement(name, module, channels, spec, options)
        plan.append((name, module, parent, parent_name, child, adapt, activation))
    conversions = []
    for name, module, parent, parent_name, child, adapt, activation in plan:
        new, copied = built[id(module)]
        setattr(parent, child, new)
        if adapt is not None:
            setattr(parent, adapt, spec.adapt_layer(parent._modules[adapt]))
        if activation is not None:
            owner, _, last = activation.rpartition(".")
            setattr(parent.get_submodule(owner) if owner else parent, last, nn.Identity())
        conversions.append(
            Conversion(
                name,
                type(module).__name__,
                type(new[0] if isinstance(new, nn.Sequential) else new).__name__,
                copied,
                _qualified(parent_name, activation) if activation else None,
                _qualified(parent_name, adapt) if adapt else None,
            )
        )
    if conversions:
        log.info("convert_norms: %d layers to %s", len(conversions), spec.name)
    else:
        log.warning(
            "convert_norms: nothing to convert in %s: it has no channel-first normalization layer "
            "(a plain nn.LayerNorm over the last dimension of token tensors is left as it is)",
            type(model).__name__,
        )
    return conversions
