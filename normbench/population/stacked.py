"""K models of one architecture as one: stacked parameters and buffers and a stateless base module."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from normbench.evaluate import channel_sums
from normbench.tasks.classification import LOGITS
from normbench.tasks.registry import Task


@contextmanager
def input_sums(
    model: nn.Module, names: Sequence[str], sums: dict[str, Tensor], counts: dict[str, int]
) -> Iterator[None]:
    """While in the block, each forward of ``model`` stores the per-channel sum and sum of squares of
    the input of its submodules ``names`` in ``sums`` (2, C) and their count in ``counts``."""
    modules = dict(model.named_modules())

    def hook(name: str):
        def accumulate(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            total, total_sq, n = channel_sums(args[0], module)
            counts[name] = counts.get(name, 0) + n  # a module called twice in one forward counts twice
            sums[name] = torch.stack([total, total_sq]) + sums.get(name, 0)

        return accumulate

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def tie_shared(model: nn.Module, twin: nn.Module) -> None:
    """Share in ``twin`` (a copy of ``model``'s structure) the parameters ``model`` shares between
    modules (e.g. the recurrent net's one γ/β for every step), which a copy made module by module
    holds as separate tensors: each later name gets the tensor of the first."""
    first: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(param), name)
        if owner != name:
            module, _, attr = name.rpartition(".")
            twin.get_submodule(module)._parameters[attr] = twin.get_parameter(owner)


def _meta_twin(model: nn.Module) -> nn.Module:
    """``model`` on the meta device with the parameters it shares still shared: ``.to()`` converts
    each module's parameters separately, and ``functional_call`` fills a tied parameter from its first
    name only where the tie survives."""
    twin = copy.deepcopy(model).to("meta")
    tie_shared(model, twin)
    return twin


def pack(tensors: Sequence[Tensor]) -> bool:
    """Rebind ``tensors`` (each contiguous, all of one dtype and device) to consecutive slices of one
    new buffer, each keeping its values and identity; False, and nothing moves, where they are not."""
    kinds = {(t.dtype, t.device) for t in tensors}
    if len(kinds) != 1 or not all(t.is_contiguous() for t in tensors):
        return False
    buffer = torch.cat([t.detach().reshape(-1) for t in tensors])
    start = 0
    for t in tensors:
        t.data = buffer[start : start + t.numel()].view_as(t)
        start += t.numel()
    return True


@dataclass
class Population:
    """K models of one architecture as stacked parameters (K, ...) and buffers, and a stateless
    ``base`` (on the meta device) that :meth:`forward` calls with each member's tensors."""

    base: nn.Module
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    form = "vmap"

    @classmethod
    def stack(cls, models: Sequence[nn.Module]) -> Population:
        params, buffers = stack_module_state(list(models))
        return cls(_meta_twin(models[0]), params, buffers)

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    @property
    def storage(self) -> list[Tensor]:
        """Every tensor that holds the members' parameters and buffers (what a step changes)."""
        return [*self.params.values(), *self.buffers.values()]

    @property
    def leaves(self) -> list[Tensor]:
        """The tensors that gradients are taken of."""
        return list(self.params.values())

    def member_grads(self, grads: Sequence[Tensor]) -> list[Tensor]:
        """Gradients of :attr:`leaves` shaped like :attr:`params` (K, ...)."""
        return list(grads)

    def with_buffers(self, buffers: dict[str, Tensor]) -> Population:
        """The same members with other buffers (e.g. re-estimated running statistics)."""
        return Population(self.base, self.params, buffers)

    def losses(self, x: Tensor, target: Tensor, task: Task = LOGITS) -> Tensor:
        """Each member's ``task.loss`` (K,) on its own batch ``x`` (K, N, ...), ``target`` (K, N); a
        training-mode forward moves the buffers."""

        def member(p: dict[str, Tensor], b: dict[str, Tensor], inputs: Tensor, t: Tensor) -> Tensor:
            return task.loss(functional_call(self.base, (p, b), (inputs,)), inputs, t)

        return vmap(member)(self.params, self.buffers, x, target)

    def layer_sums(
        self, inputs: Tensor, names: Sequence[str], buffers: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, int]]:
        """Per member (K, 2, C): the sum and sum of squares (float64) of each layer ``names``' input over
        the batch's samples and positions, in a training-mode forward of ``inputs`` (K, N, ...) on
        ``buffers``; and how many values per channel each layer's sums hold."""
        counts: dict[str, int] = {}

        def member_sums(p: dict, b: dict, x: Tensor) -> dict[str, Tensor]:
            sums: dict[str, Tensor] = {}
            with input_sums(self.base, names, sums, counts):
                functional_call(self.base, (p, b), (x,))
            return sums

        sums = vmap(member_sums)(self.params, buffers, inputs)
        return sums, counts

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

    def pack_parameters(self) -> None:
        """Lay :attr:`leaves` out one after another in one new buffer (each keeps its identity; where
        they are not all contiguous, of one dtype and on one device, nothing moves), so that the
        optimizer of a population of one updates them as one flat tensor
        (:class:`~normbench.population.optim.PopulationOptimizer`)."""
        pack(self.leaves)

    def unstack_into(self, models: Sequence[nn.Module]) -> None:
        """Copy member k's parameters and buffers into ``models[k]``."""
        with torch.no_grad():
            for k, model in enumerate(models):  # by name, so a parameter two modules share is copied once
                for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                    tensor.copy_((self.params[name] if name in self.params else self.buffers[name])[k])
