"""Weight Standardization with Group Normalization (Qiao, Wang, Liu, Shen & Yuille 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from normbench.norms._base import wide_copy
from normbench.norms.groupnorm import GroupNorm
from normbench.norms.registry import register_norm


class StandardizedWeight(nn.Module):
    r"""The parametrization :math:`\hat W_o = (W_o - \mathrm{E}[W_o]) / \sqrt{\mathrm{Var}[W_o] + \epsilon}`,
    statistics per output channel over its fan-in (biased variance)."""

    per_output_channel = True  # each output channel's weights alone: a population may widen the layer

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, weight: Tensor) -> Tensor:
        var, mean = torch.var_mean(weight, dim=tuple(range(1, weight.dim())), unbiased=False, keepdim=True)
        return (weight - mean) / torch.sqrt(var + self.eps)


def standardize_weight(layer: nn.Module) -> nn.Module:
    """Make ``layer`` (a conv or linear layer) use standardized weights, through torch's parametrize:
    the learned tensor stays at ``parametrizations.weight.original``, gradients flow through the
    standardization, and the layer's output is computed with :class:`StandardizedWeight` of it."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer  # adapted already: one standardization, however often a model asks
    if not isinstance(getattr(layer, "weight", None), nn.Parameter) or layer.weight.dim() < 2:
        raise TypeError(
            f"weight standardization needs a conv or linear layer with a weight, got {type(layer).__name__}"
        )
    parametrize.register_parametrization(layer, "weight", StandardizedWeight())
    return layer


@register_norm(
    "ws_groupnorm",
    aliases=("wsgn", "gnws"),
    paper="Qiao et al. 2019, Micro-Batch Training with Batch-Channel Normalization and Weight Standardization, arXiv:1903.10520",
    adapt_layer=standardize_weight,
    population="wide",  # GroupNorm's, and the standardized layer widened with its parametrization
    widen=lambda member, k: wide_copy(member, k, "num_groups"),
)
class WSGroupNorm(GroupNorm):
    r"""GroupNorm whose preceding conv/linear layer uses Weight Standardization (GN+WS).

    The module itself is :class:`~normbench.norms.groupnorm.GroupNorm` (same options and formula); the
    registry's ``adapt_layer`` hook (:func:`standardize_weight`) standardizes the weights of the layer
    before it, once, for every model that places norms through ``NormLayers``:

    .. math::
        \hat W_{o} = \frac{W_{o} - \mathrm{E}_{i}[W_{o,i}]}{\sqrt{\mathrm{Var}_{i}[W_{o,i}] + \epsilon}}

    (per output channel o over its fan-in i). Note: torch cannot pickle parametrized layers (state
    dicts work).

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """
