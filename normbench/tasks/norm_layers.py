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

    def __call__(self, num_channels: int, after_adapted: bool = False) -> nn.Module:
        """A norm of ``num_channels``. A plugin that adapts the layer before each norm (``adapt_layer``:
        ws_groupnorm's weight standardization) needs that layer adapted first (:meth:`block`, or
        :meth:`adapt` and ``after_adapted=True``); a norm placed after none would silently be the plugin
        without its adaptation, and raises ValueError."""
        if self.spec.adapt_layer is not None and not after_adapted:
            raise ValueError(
                f"{self.spec.name} adapts the conv/linear layer before each of its norms "
                f"({self.spec.adapt_layer.__name__}), and this model places a norm after no such layer "
                "(a recurrent cell's, a Transformer's pre-norm): it would train without its adaptation"
            )
        norm = build_norm(self.spec.name, num_channels, **self.options)
        self.built.append(norm)
        return norm

    def adapt(self, layer: nn.Module) -> nn.Module:
        """``layer`` as the plugin adapts the layer before its norm (itself for most plugins)."""
        return layer if self.spec.adapt_layer is None else self.spec.adapt_layer(layer)

    def block(self, layer: nn.Module, num_channels: int, activation: bool = True) -> list[nn.Module]:
        mods = [self.adapt(layer), self(num_channels, after_adapted=True)]
        if activation and not self.spec.replaces_activation:
            mods.append(nn.ReLU())
        return mods
