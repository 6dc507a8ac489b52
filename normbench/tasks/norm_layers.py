"""The one interface between norm plugins and models: :class:`NormLayers` builds each norm of a model
from a registry name and options, and places it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from normbench.norms import build_norm, norm_spec


class NormLayers:
    """Builds the norm of a model from a registry name and options, and places it.

    The one interface between plugins and models: ``block(layer, C)`` returns
    ``[layer, norm, activation]``, letting the plugin adapt the preceding layer once
    (``spec.adapt_layer``, e.g. weight standardization) and dropping the activation when the plugin
    includes its own (``spec.replaces_activation``, e.g. EvoNorm).
    """

    def __init__(self, name: str, options: Mapping[str, Any] | None = None) -> None:
        self.spec = norm_spec(name)
        self.options = dict(options or {})
        self.built: list[nn.Module] = []  # every norm layer made, in order

    def __call__(self, num_channels: int) -> nn.Module:
        norm = build_norm(self.spec.name, num_channels, **self.options)
        self.built.append(norm)
        return norm

    def block(self, layer: nn.Module, num_channels: int, activation: bool = True) -> list[nn.Module]:
        if self.spec.adapt_layer is not None:
            layer = self.spec.adapt_layer(layer)
        mods = [layer, self(num_channels)]
        if activation and not self.spec.replaces_activation:
            mods.append(nn.ReLU())
        return mods
