"""The optimizers of a population: each member's SGD or AdamW step, with its own learning rate,
momentum and weight decay, as a few in-place tensor operations over the stacked parameters.

The formulas are torch's (``torch.optim.SGD`` and ``torch.optim.AdamW``, single-tensor path, as
:func:`normbench.train.make_optimizer` configures them); ``tests/test_population_optim.py`` ties each
member's trajectory to a separate torch optimizer. A member that is not ``alive`` keeps its parameters
unchanged. The step count lives on the parameters' device and AdamW's bias corrections are computed
there, so a step captured as a CUDA graph (:mod:`normbench.capture`) replays with the count going on.

One set of operations per parameter tensor, not torch's multi-tensor ``_foreach_*`` calls: with
per-member factors (K, 1, ...) their CUDA fast path does not apply (it needs equal shapes), and on the
CPU they measured no faster (``scripts/bench_optimizer.py``, reports/bench/population_optimizer.md).
A population of one (a run alone, its step captured) whose parameters lie packed in one buffer
(:meth:`normbench.population.stacked.Population.pack_parameters`) is updated as that one flat tensor:
the same operations, each once per step instead of once per parameter tensor, which is what a small
model's captured step costs on a GPU (each kernel a few µs however small). With K > 1 the factors
would have to be spread over every element first, more passes over memory for fewer launches: a
trade only a GPU measurement can settle, so populations keep one set per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch import Tensor

BETA2 = 0.999  # AdamW's β₂, as normbench.train.make_optimizer sets it


class _PerMember:
    """(K,) per-member factors, shaped to broadcast over stacked tensors (K, ...) in their dtype: cast
    once per dtype and rank (computed in double, then rounded once, as torch rounds a Python float)."""

    def __init__(self, values: Tensor) -> None:
        self.values = values
        self._shaped: dict[tuple[torch.dtype, int], Tensor] = {}

    def over(self, like: Tensor) -> Tensor:
        key = (like.dtype, like.dim())
        if key not in self._shaped:
            self._shaped[key] = self.values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
        return self._shaped[key]


class PopulationOptimizer:
    """``name`` (``sgd`` or ``adamw``) over the stacked ``params`` (K, ...) of K members.

    ``momentum`` and ``weight_decay`` are (K,) tensors; for AdamW ``momentum`` is β₁ and β₂ = 0.999,
    as in :func:`normbench.train.make_optimizer`. :meth:`step` takes each member's learning rate as a
    (K,) tensor and the (K,) boolean mask of members to update.
    """

    def __init__(
        self, name: str, params: Sequence[Tensor], momentum: Tensor, weight_decay: Tensor, eps: float = 1e-8
    ) -> None:
        if name not in ("sgd", "adamw"):
            raise ValueError(f"optim.name={name!r}; allowed: sgd, adamw")
        self.name, self.params, self.eps = name, list(params), eps
        self.momentum = momentum.double()
        self.weight_decay = weight_decay.double()
        self._momentum, self._weight_decay = _PerMember(self.momentum), _PerMember(self.weight_decay)
        # torch skips a zero weight decay; adding 0·p would give the same numbers at one more pass
        self._decays = bool(self.weight_decay.any())
        # what one update runs over: the parameters one by one, or the one flat tensor they tile
        self._flat = packed(self.params) if len(self.momentum) == 1 else None
        self._targets = self.params if self._flat is None else [self._flat]
        self._state: list[dict[str, Tensor]] = [{} for _ in self._targets]
        self.count = torch.zeros((), dtype=torch.float64, device=self.momentum.device)

    @classmethod
    def for_members(cls, cfgs: Sequence[DictConfig], params: Sequence[Tensor]) -> PopulationOptimizer:
        """The optimizer of members with configs ``cfgs`` (one ``optim.name``; each its own momentum
        and weight decay) over their stacked ``params``."""
        device = params[0].device
        return cls(
            cfgs[0].optim.name,
            params,
            torch.tensor([c.optim.momentum for c in cfgs], dtype=torch.float64, device=device),
            torch.tensor([c.optim.weight_decay for c in cfgs], dtype=torch.float64, device=device),
        )

    @property
    def steps(self) -> int:
        """Steps taken (read from the device: for checkpoints, not inside the step loop)."""
        return int(self.count.item())

    @steps.setter
    def steps(self, value: int) -> None:
        self.count.fill_(value)

    @property
    def tensors(self) -> list[Tensor]:
        """The optimizer's state tensors (momentum buffers, moments, the step count)."""
        return [*(t for state in self._state for t in state.values()), self.count]

    @property
    def state(self) -> list[dict[str, Tensor]]:
        """Each parameter's state (K, ...) by name (``momentum_buffer``; ``exp_avg``, ``exp_avg_sq``),
        views of the flat state where the parameters are updated as one tensor."""
        if self._flat is None:
            return self._state
        return [{key: _part(t, self._flat, p) for key, t in self._state[0].items()} for p in self.params]

    def load_state(self, state: Sequence[dict[str, Tensor]]) -> None:
        """Set each parameter's state (as :attr:`state` gives it, e.g. from a checkpoint)."""
        if self._flat is None:
            self._state = [dict(s) for s in state]
        else:
            self._state = [{key: torch.cat([s[key].reshape(-1) for s in state]) for key in state[0]}]

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], lr: Tensor, alive: Tensor, all_alive: bool = False) -> None:
        """One step of every member at its learning rate ``lr`` (K,). Members not ``alive`` step with
        gradient 0 and learning rate 0, which leaves their parameters exactly as they are (their
        optimizer state is never read again); ``all_alive=True`` (known on the host) skips zeroing
        their gradients. ``grads`` are consumed (updated in place)."""
        self.count.add_(1)
        lr = torch.where(alive, lr.double(), 0.0)
        frozen = None if all_alive else ~alive
        if self.name == "sgd":
            factors = (_PerMember(-lr),)
            update = self._sgd
        else:
            t = self.count
            factors = (
                _PerMember(1 - lr * self.weight_decay),
                _PerMember(-lr / (1 - self.momentum**t)),
                _PerMember(1 - self.momentum),
                _PerMember((1 - BETA2**t) ** 0.5),  # one value, broadcast over the members
            )
            update = self._adamw
        if self._flat is not None:  # one copy of the gradients instead of a few kernels per parameter
            grads = [torch.cat([g.reshape(-1) for g in grads])]
        for p, g, state in zip(self._targets, grads, self._state, strict=True):
            if frozen is not None:  # a diverged member's NaN gradient must not reach its parameters
                g.masked_fill_(frozen.view(-1, *([1] * (g.dim() - 1))), 0.0)
            update(p, g, state, *factors)

    # In-place forms of torch's own updates; addcmul/addcdiv with the per-member factor inside round
    # as torch's scalar ``alpha``/``value`` forms do: each member's step is bit for bit its own
    # optimizer's on the CPU.

    def _sgd(self, p: Tensor, g: Tensor, state: dict[str, Tensor], neg_lr: _PerMember) -> None:
        # torch.optim.SGD: d = g + wd·p; buf = d (first step) else μ·buf + d; p -= lr·buf
        d = g.addcmul_(p, self._weight_decay.over(p)) if self._decays else g
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = d.clone()
        else:
            state["momentum_buffer"].mul_(self._momentum.over(p)).add_(d)
        p.addcmul_(state["momentum_buffer"], neg_lr.over(p))

    def _adamw(
        self,
        p: Tensor,
        g: Tensor,
        state: dict[str, Tensor],
        decay: _PerMember,
        neg_step_size: _PerMember,
        one_minus_beta1: _PerMember,
        bias_correction2_sqrt: _PerMember,
    ) -> None:
        # torch.optim.AdamW: p ·= 1 − lr·wd; m = lerp(m, g, 1 − β₁); v = β₂·v + (1 − β₂)·g²;
        # p −= lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)   (bias corrections in double, as torch)
        if not state:
            state.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if self._decays:  # a factor of exactly 1 otherwise
            p.mul_(decay.over(p))
        m.lerp_(g, one_minus_beta1.over(p))
        v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
        denom = v.sqrt().div_(bias_correction2_sqrt.over(p)).add_(self.eps)
        p.addcdiv_(m * neg_step_size.over(p), denom)


def packed(params: Sequence[Tensor]) -> Tensor | None:
    """The one flat tensor that ``params`` tile, each contiguous and right after the one before in
    the same storage (as :meth:`~normbench.population.stacked.Population.pack_parameters` lays them
    out), or None."""
    first = params[0]
    end = first.storage_offset()
    for p in params:
        same = p.untyped_storage().data_ptr() == first.untyped_storage().data_ptr() and p.dtype == first.dtype
        if not (same and p.is_contiguous() and p.storage_offset() == end):
            return None
        end += p.numel()
    start = first.storage_offset()
    return first.detach().as_strided((end - start,), (1,), start)


def _part(t: Tensor, flat: Tensor, p: Tensor) -> Tensor:
    """The slice of ``t`` (laid out as ``flat``) that belongs to ``p``, shaped like it."""
    start = p.storage_offset() - flat.storage_offset()
    return t[start : start + p.numel()].view(p.shape)
