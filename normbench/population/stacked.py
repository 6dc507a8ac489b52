"""K models of one architecture as one: stacked parameters and buffers and a stateless base module."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap


@dataclass
class Population:
    """K models of one architecture as stacked parameters (K, ...) and buffers, and a stateless
    ``base`` (on the meta device) that :meth:`forward` calls with each member's tensors."""

    base: nn.Module
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]

    @classmethod
    def stack(cls, models: Sequence[nn.Module]) -> Population:
        params, buffers = stack_module_state(list(models))
        return cls(copy.deepcopy(models[0]).to("meta"), params, buffers)

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def forward(
        self, x: Tensor, shared_input: bool = False, buffers: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Every member's output: on its own inputs ``x`` (K, N, ...) or, with ``shared_input``, all on
        the same ``x`` (N, ...). Training-mode forwards update each member's buffers (``buffers``, if
        given, instead of the population's own)."""

        def member(p: dict[str, Tensor], b: dict[str, Tensor], inputs: Tensor) -> Tensor:
            return functional_call(self.base, (p, b), (inputs,))

        in_dims = (0, 0, None if shared_input else 0)
        return vmap(member, in_dims=in_dims)(self.params, self.buffers if buffers is None else buffers, x)

    def match_gradient_layout(self, grads: Sequence[Tensor]) -> None:
        """Store each stacked parameter in the memory layout of its gradient (vmap's batched matmuls
        give weight gradients transposed): gradients then keep that layout, and the optimizer's
        elementwise updates run over matching strides instead of a transposed copy per step."""
        with torch.no_grad():
            for (name, p), g in zip(list(self.params.items()), grads, strict=True):
                if p.stride() != g.stride():
                    self.params[name] = torch.empty_strided(
                        p.shape, g.stride(), dtype=p.dtype, device=p.device
                    )
                    self.params[name].copy_(p).requires_grad_()

    def unstack_into(self, models: Sequence[nn.Module]) -> None:
        """Copy member k's parameters and buffers into ``models[k]``."""
        with torch.no_grad():
            for k, model in enumerate(models):
                state = {**self.params, **self.buffers}
                model.load_state_dict({name: t[k] for name, t in state.items()}, strict=True)
