"""The classification task's models. Every norm comes from the registry through :class:`NormLayers`.

Placement, the same in every model: each hidden conv/linear layer is followed by its norm and then the
activation (``layer → norm → ReLU``), as in ResNet and Wu & He 2018; residual blocks are
``conv → norm → ReLU → conv → norm``, added to the shortcut, then ReLU. The Transformer is pre-norm
(``x + attn(norm(x))``, ``x + mlp(norm(x))``, a final norm) with norms applied to (N, L, C) tokens through
:class:`normbench.ChannelLast`. The classifier head has no norm.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from normbench.norms import ChannelLast
from normbench.norms._layout import LAYOUTS
from normbench.schema import ClassifierConfig
from normbench.tasks.norm_layers import NormLayers


class ModelConfigError(ValueError):
    """A model setting that cannot work (unknown torchvision model, missing torchvision, bad depth):
    refused before any training, with this message alone."""


class MLP(nn.Module):
    """``in → [Linear → norm → ReLU] × depth → Linear``; norms see (N, width) features."""

    # forward only composes the children and channel-wise ops: K copies run side by side as one wide
    # model (normbench.population.wide)
    population_form = "wide"

    def __init__(self, in_features: int, width: int, depth: int, num_classes: int, norms: NormLayers):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for i in range(depth):
            layers += norms.block(nn.Linear(in_features if i == 0 else width, width), width)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _conv(dims: int, c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Module:
    cls = nn.Conv1d if dims == 1 else nn.Conv2d
    return cls(c_in, c_out, k, stride=stride, padding=k // 2)


class ResidualBlock(nn.Module):
    """``conv → norm → ReLU → conv → norm`` plus the shortcut (a 1×1 conv + norm when shapes change)."""

    # forward only composes the children and channel-wise ops: K copies run side by side as one wide
    # model (normbench.population.wide)
    population_form = "wide"

    def __init__(self, dims: int, c_in: int, c_out: int, k: int, stride: int, norms: NormLayers):
        super().__init__()
        self.body = nn.Sequential(
            *norms.block(_conv(dims, c_in, c_out, k, stride), c_out),
            *norms.block(_conv(dims, c_out, c_out, k), c_out, activation=False),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(*norms.block(_conv(dims, c_in, c_out, 1, stride), c_out, False))
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ConvNet(nn.Module):
    """1D or 2D conv net: a stem ``conv → norm → ReLU`` then either plain conv layers or residual
    blocks, global average pooling and a linear head.

    ``depth`` counts conv layers on the main path: plain nets have ``depth`` layers; residual nets have
    a stem and ``(depth - 1) // 2`` two-conv blocks (depth 9: stem + 4 blocks). ``downsample`` lists the
    block indices with stride 2 (channels double there).
    """

    # forward only composes the children and channel-wise ops: K copies run side by side as one wide
    # model (normbench.population.wide)
    population_form = "wide"

    def __init__(
        self,
        dims: int,
        in_channels: int,
        width: int,
        depth: int,
        num_classes: int,
        norms: NormLayers,
        residual: bool,
        kernel_size: int,
        downsample: tuple[int, ...] = (),
    ):
        super().__init__()
        k = kernel_size
        layers: list[nn.Module] = norms.block(_conv(dims, in_channels, width, k), width)
        c = width
        if residual:
            for i in range((depth - 1) // 2):
                stride = 2 if i in downsample else 1
                c_out = c * stride
                layers.append(ResidualBlock(dims, c, c_out, k, stride, norms))
                c = c_out
        else:
            for i in range(depth - 1):
                stride = 2 if i in downsample else 1
                layers += norms.block(_conv(dims, c, c * stride, k, stride), c * stride)
                c *= stride
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        return self.head(h.flatten(2).mean(-1))


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: ``x + MHA(norm(x))`` then ``x + MLP(norm(x))`` on (N, L, C) tokens."""

    def __init__(self, width: int, heads: int, norms: NormLayers, layout: str):
        super().__init__()
        self.norm1 = ChannelLast(norms(width), layout)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = ChannelLast(norms(width), layout)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class SequenceTransformer(nn.Module):
    """Reads a (N, C, L) signal as L tokens: linear embedding + learned positions, pre-norm blocks,
    a final norm, mean pooling over tokens and a linear head."""

    def __init__(
        self,
        in_channels: int,
        length: int,
        width: int,
        depth: int,
        heads: int,
        num_classes: int,
        norms: NormLayers,
        layout: str,
    ):
        super().__init__()
        self.embed = nn.Linear(in_channels, width)
        self.pos = nn.Parameter(torch.randn(1, length, width) * 0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(width, heads, norms, layout) for _ in range(depth)))
        self.norm = ChannelLast(norms(width), layout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.embed(x.transpose(1, 2)) + self.pos
        return self.head(self.norm(self.blocks(tokens)).mean(1))


def cifar_resnet(
    in_channels: int, depth: int, num_classes: int, norms: NormLayers, width: int = 16
) -> nn.Module:
    """The CIFAR ResNet of He et al. 2016 (Sec. 4.2): a 3×3 stem of ``width`` channels, three stages of
    n two-conv residual blocks at ``width``, 2·``width`` and 4·``width`` channels (stride 2 entering
    stages 2 and 3), global average pooling and a linear head; ``depth`` = 6n + 2 layers (20, 32, 56,
    110). Shortcuts that change shape are a 1×1 conv + norm (the paper's option B)."""
    if depth < 8 or (depth - 2) % 6:
        raise ModelConfigError(
            f"task.model.depth={depth}: the CIFAR ResNet needs 6n + 2 (20, 32, 44, 56, 110, ...)"
        )
    n = (depth - 2) // 6
    return ConvNet(2, in_channels, width, depth - 1, num_classes, norms, True, 3, (n, 2 * n))


def torchvision_models(name: str) -> Any:
    """``torchvision.models`` once torchvision imports and ``name`` is one of its classifiers
    (ModelConfigError naming what is wrong otherwise)."""
    try:
        import torchvision
    except ImportError as exc:
        raise ModelConfigError(
            f"task.model.arch=torchvision needs torchvision, which does not import here ({exc}); "
            f"install the torchvision build that matches torch {torch.__version__} (e.g. for the CPU build: "
            "pip install torchvision --index-url https://download.pytorch.org/whl/cpu); "
            "'pip install normbench[vision]' from PyPI can replace a CPU torch with a multi-GB CUDA build"
        ) from None
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        close = difflib.get_close_matches(name, available, n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f" (e.g. {', '.join(available[:5])})"
        raise ModelConfigError(f"task.model.name={name}: not a torchvision classifier{hint}")
    return torchvision.models


def torchvision_classifier(
    name: str, input_shape: tuple[int, ...], num_classes: int, norms: NormLayers, small_input: bool
) -> nn.Module:
    """A torchvision classifier (``weights=None``, ``num_classes`` outputs) whose norms are replaced by
    ``norms``' plugin through :func:`normbench.convert_norms`. ``small_input`` adapts a ResNet-style
    stem to 32×32 images: a 3×3 stride-1 first conv and no max-pool."""
    from normbench.convert import convert_norms

    model = torchvision_models(name).get_model(name, weights=None, num_classes=num_classes)
    if small_input and isinstance(getattr(model, "conv1", None), nn.Conv2d):
        old = model.conv1
        model.conv1 = nn.Conv2d(input_shape[0], old.out_channels, 3, 1, 1, bias=old.bias is not None)
        model.maxpool = nn.Identity()
    for done in convert_norms(model, norms.spec.name, **norms.options):
        layer = model.get_submodule(done.name)
        norms.built.append(layer[0] if isinstance(layer, nn.Sequential) else layer)
    return model


def scale_initial_weights(model: nn.Module, scale: float, norm_layers: list[nn.Module]) -> None:
    """Multiply every ``weight`` parameter outside ``norm_layers`` (convolutions, linear and recurrent
    layers, embeddings) by ``scale`` in place; biases and the norms' affine parameters keep their
    initialization. With a scale-invariant norm after a layer its output is unchanged and only the
    effective learning rate moves (∝ 1/scale², van Laarhoven 2017); without one the activations
    grow or shrink by ``scale`` per layer."""
    inside_norms = {id(p) for layer in norm_layers for p in layer.parameters()}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if id(param) not in inside_norms and name.rsplit(".", 1)[-1].startswith("weight"):
                param.mul_(scale)


def _conv_settings(o: ClassifierConfig) -> None:
    if o.residual and o.kernel_size % 2 == 0:
        raise ModelConfigError(
            f"task.model.kernel_size={o.kernel_size}: a residual net needs an odd kernel (each conv pads "
            "kernel_size // 2, which keeps a length only for odd kernels, and a block adds its input to its output)"
        )
    stages = (o.depth - 1) // 2 if o.residual else o.depth - 1  # what downsample indexes, after the stem
    outside = [i for i in o.downsample if not 0 <= i < stages]
    if outside:
        what = f"blocks 0..{stages - 1}" if o.residual else f"layers 0..{stages - 1}"
        raise ModelConfigError(
            f"task.model.downsample={list(o.downsample)}: {outside[0]} is not a stage of this net "
            f"(depth={o.depth}, residual={o.residual}: {what if stages else 'none'} after the stem)"
        )


def _conv_net(o: ClassifierConfig, shape: tuple[int, ...], classes: int, norms: NormLayers) -> nn.Module:
    dims = 1 if o.arch == "cnn1d" else 2
    if len(shape) != dims + 1:
        raise ModelConfigError(
            f"task.model.arch={o.arch}: needs inputs with {dims} spatial dims, got shape {shape}"
        )
    return ConvNet(
        dims, shape[0], o.width, o.depth, classes, norms, o.residual, o.kernel_size, tuple(o.downsample)
    )


def _transformer_settings(o: ClassifierConfig) -> None:
    if o.token_layout not in LAYOUTS:
        raise ModelConfigError(
            f"task.model.token_layout={o.token_layout}: must be one of {', '.join(LAYOUTS)} (norm "
            "statistics per token, or per channel over the sequence)"
        )
    if o.width % o.heads:
        raise ModelConfigError(
            f"task.model.heads={o.heads}: must divide task.model.width={o.width} (each head attends over "
            "width / heads channels)"
        )


def _transformer(o: ClassifierConfig, shape: tuple[int, ...], classes: int, norms: NormLayers) -> nn.Module:
    if len(shape) != 2:
        raise ModelConfigError(f"task.model.arch=transformer: needs (C, L) signals, got shape {shape}")
    return SequenceTransformer(shape[0], shape[1], o.width, o.depth, o.heads, classes, norms, o.token_layout)


def _torchvision_settings(o: ClassifierConfig) -> None:
    torchvision_models(o.name)


def _any_settings(o: ClassifierConfig) -> None:
    """Every value of the settings an arch reads builds it (the schema checks their types)."""


class Classifier(NamedTuple):
    """An arch's builder(settings, input shape (C, *spatial), classes, norms), the ClassifierConfig
    settings it reads besides arch and init_scale (the classification task refuses the others), and the
    check of those settings that needs no data (ModelConfigError; run before any data loads)."""

    build: Callable[[ClassifierConfig, tuple[int, ...], int, NormLayers], nn.Module]
    reads: tuple[str, ...]
    check: Callable[[ClassifierConfig], None] = _any_settings


_CONV = ("width", "depth", "residual", "kernel_size", "downsample")
# task.model.arch -> its Classifier
CLASSIFIERS: dict[str, Classifier] = {
    "mlp": Classifier(
        lambda o, shape, classes, norms: MLP(math.prod(shape), o.width, o.depth, classes, norms),
        ("width", "depth"),
    ),
    "cnn1d": Classifier(_conv_net, _CONV, _conv_settings),
    "cnn2d": Classifier(_conv_net, _CONV, _conv_settings),
    "resnet2d": Classifier(_conv_net, _CONV, _conv_settings),
    "cifar_resnet": Classifier(
        lambda o, shape, classes, norms: cifar_resnet(shape[0], o.depth, classes, norms, o.width),
        ("width", "depth"),
    ),
    "transformer": Classifier(
        _transformer, ("width", "depth", "heads", "token_layout"), _transformer_settings
    ),
    "torchvision": Classifier(
        lambda o, shape, classes, norms: torchvision_classifier(o.name, shape, classes, norms, o.small_input),
        ("name", "small_input"),
        _torchvision_settings,
    ),
}


def build_classifier(
    settings: ClassifierConfig, input_shape: tuple[int, ...], num_classes: int, norms: NormLayers
) -> nn.Module:
    """The classifier ``settings.arch`` (one of :data:`CLASSIFIERS`) for inputs of ``input_shape``
    (C, *spatial), with norms from ``norms``."""
    if settings.arch not in CLASSIFIERS:
        raise ModelConfigError(
            f"task.model.arch={settings.arch}: not a classifier; available: {', '.join(CLASSIFIERS)}"
        )
    classifier = CLASSIFIERS[settings.arch]
    classifier.check(settings)
    return classifier.build(settings, tuple(input_shape), num_classes, norms)
