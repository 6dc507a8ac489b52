"""A population as one wide model: K members of one architecture side by side in one set of tensors.

Activations hold the members in channel blocks: where one member sees (N, C, *spatial), the wide model
sees (N, K·C, *spatial), member k in channels [k·C, (k+1)·C), each with its own N samples. Then

- a convolution is one grouped convolution (groups = K × its own groups, weights concatenated);
- a Linear is one batched matmul (``torch.baddbmm``) over weights stacked (K, out, in);
- a norm is its plugin's wide form over K·C channels (the registry's ``population="wide"`` and
  ``widen``: BatchNorm and every per-channel formula as it is, GroupNorm with K·G groups, LayerNorm as
  GroupNorm with K groups), on its native kernel;
- ReLU, Flatten and the like, and containers whose ``forward`` only composes their children
  (``nn.Sequential``, ``nn.ModuleList``, and classes that set ``population_form = "wide"``) are
  unchanged. A ``population_form = "wide"`` class may hold per-feature tensors of its own (a bias),
  concatenated like a layer's, and reads ``self.members`` (K on the wide copy, 1 otherwise) where its
  ``forward`` splits features per member (the recurrent net's gates);
- parameters a member shares between modules (the recurrent net's one γ/β for every step) are shared
  in the wide model too.

A population of one is a copy of its member, trivially its own wide form, whatever its parts: a run alone
trained as one (its step captured on a GPU) runs the kernels and accelerated forms of the run itself.

A step costs about one model K times wider instead of K models. Models with a part that has no wide form
(a Transformer's attention, a plugin with ``population="vmap"``, a weight-standardized layer) train
under ``vmap`` instead (:class:`~normbench.population.stacked.Population`): :func:`stack_population`
falls back to it, and with ``form="wide"`` raises :class:`NoWideForm` naming the part.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from normbench.norms import plugin_classes
from normbench.norms._base import wide_copy
from normbench.population.stacked import Population, input_sums, tie_shared
from normbench.tasks.classification import LOGITS
from normbench.tasks.registry import Task

# parameter-free modules that act on each element or only reshape trailing dimensions
_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Identity)


class NoWideForm(Exception):
    """A part of the model has no wide form; the message names it."""


class _StackedLinear(torch.autograd.Function):
    """``x[k] @ weight[k].T + bias[k]`` for each member k, with ``F.linear``'s backward per member: the
    weight's gradient ``g.T @ x`` comes in the weight's own layout (autograd's backward of the batched
    matmul would give it transposed, and a copy or a strided optimizer step per step)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):  # the autocast dtype, as F.linear would take it
            dtype = torch.get_autocast_dtype(device)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        with torch.autocast(device, enabled=False):
            wt = weight.transpose(1, 2)
            y = torch.bmm(x, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, wt)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        g = g.to(x.dtype)
        gx = torch.bmm(g, weight) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        gb = g.sum(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


class WideLinear(nn.Module):
    """K ``nn.Linear`` layers side by side: (N, K·in) → (N, K·out) in one ``torch.baddbmm``.

    ``weight`` is (K, out, in) and ``bias`` (K, out): member k's layer is ``weight[k]``, ``bias[k]``.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: Tensor) -> Tensor:
        k, out, width = self.weight.shape
        members = x.reshape(x.shape[0], k, width).transpose(0, 1)  # (K, N, in)
        y = _StackedLinear.apply(members, self.weight, self.bias)
        return y.transpose(0, 1).reshape(x.shape[0], k * out)

    def extra_repr(self) -> str:
        k, out, width = self.weight.shape
        return f"members={k}, in_features={width}, out_features={out}, bias={self.bias is not None}"


def _stacked(tensors: Sequence[Tensor], name: str) -> Tensor:
    """The members' tensors concatenated along dim 0, or, for 0-dim ones (step counters), the shared
    value, which must be the same in every member."""
    if tensors[0].dim() == 0:
        if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
            raise NoWideForm(f"{name}: a 0-dim buffer differs between members, so it cannot be shared")
        return tensors[0].detach().clone()
    return torch.cat([t.detach() for t in tensors])


def _fill(wide: nn.Module, members: Sequence[nn.Module], where: str) -> nn.Module:
    """Give ``wide``'s own parameters and buffers the members' tensors, concatenated."""
    for name, p in list(wide._parameters.items()):
        if p is not None:
            value = _stacked([m._parameters[name] for m in members], f"{where}.{name}")
            wide._parameters[name] = nn.Parameter(value, requires_grad=p.requires_grad)
    for name, b in list(wide._buffers.items()):
        if b is not None:
            wide._buffers[name] = _stacked([m._buffers[name] for m in members], f"{where}.{name}")
    return wide


def _widen_conv(members: Sequence[nn.Module], where: str) -> nn.Module:
    first, k = members[0], len(members)
    if first.padding_mode != "zeros":
        raise NoWideForm(f"{where}: padding_mode={first.padding_mode!r} (only 'zeros' is widened)")
    wide = type(first)(
        k * first.in_channels,
        k * first.out_channels,
        first.kernel_size,
        stride=first.stride,
        padding=first.padding,
        dilation=first.dilation,
        groups=k * first.groups,
        bias=first.bias is not None,
        device="meta",
    )
    return _fill(wide, members, where)


class _PerMemberRows(nn.Module):
    """A per-output-channel parametrization applied to a :class:`WideLinear`'s (K, out, in) weight: the
    K·out rows are the members' output channels."""

    def __init__(self, parametrization: nn.Module) -> None:
        super().__init__()
        self.parametrization = parametrization

    def forward(self, weight: Tensor) -> Tensor:
        return self.parametrization(weight.flatten(0, 1)).view_as(weight)


def _shallow_copy(module: nn.Module, kind: type) -> nn.Module:
    """A ``kind`` with ``module``'s attributes, its dicts (hooks, tensors, submodules) copied so that
    the copy's can be changed alone; the tensors themselves are shared."""
    twin = nn.Module.__new__(kind)
    twin.__dict__ = {k: v.copy() if isinstance(v, dict) else v for k, v in module.__dict__.items()}
    return twin


def _unparametrized(module: nn.Module) -> nn.Module:
    """A plain twin of a parametrized layer whose weight is its learned tensor (``original``): a
    shallow view built without touching the parametrized class, which torch shares between copies."""
    twin = _shallow_copy(module, type(module).__bases__[0])
    twin._parameters["weight"] = module.parametrizations.weight.original
    del twin._modules["parametrizations"]
    return twin


def _widen_parametrized(members: Sequence[nn.Module], where: str, specs: dict[type, object]) -> nn.Module:
    """A parametrized linear or conv layer (weight standardization): the wide layer of the members'
    unparametrized tensors, with their parametrization on its weight. Only parametrizations that act
    on each output channel alone (``per_output_channel = True``) have this form: on the wide layer's
    weight each output channel is one member's."""
    first = members[0]
    name = type(first).__bases__[0].__name__
    chains = dict(first.parametrizations.items())
    if set(chains) != {"weight"} or not all(
        getattr(p, "per_output_channel", False) for p in chains["weight"]
    ):
        raise NoWideForm(f"{where}: a parametrized {name} whose parametrization is not per output channel")
    wide = _widen_module([_unparametrized(m) for m in members], where, specs)
    for parametrization in chains["weight"]:
        p = copy.deepcopy(parametrization)
        parametrize.register_parametrization(
            wide, "weight", _PerMemberRows(p) if isinstance(wide, WideLinear) else p
        )
    return wide


def _widen_module(members: Sequence[nn.Module], where: str, specs: dict[type, object]) -> nn.Module:
    first, k = members[0], len(members)
    if parametrize.is_parametrized(first):  # checked first: each such module has a class of its own
        return _widen_parametrized(members, where, specs)
    kind = type(first)
    if any(type(m) is not kind for m in members):
        raise NoWideForm(f"{where}: members differ in structure")
    if kind in specs:
        spec = specs[kind]
        if spec.population != "wide":
            raise NoWideForm(f"norm={spec.name} has no wide form (population={spec.population!r})")
        return _fill((spec.widen or wide_copy)(first, k), members, where)
    if kind is nn.Linear:
        return WideLinear(
            torch.stack([m.weight.detach() for m in members]),
            None if first.bias is None else torch.stack([m.bias.detach() for m in members]),
        )
    if kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        return _widen_conv(members, where)
    if isinstance(first, _ELEMENTWISE) or (isinstance(first, nn.Flatten) and first.start_dim == 1):
        return first
    declared = getattr(kind, "population_form", None) == "wide"
    if kind in (nn.Sequential, nn.ModuleList) or declared:
        wide = _shallow_copy(first, kind)
        wide._modules = {}
        for name in first._modules:
            children = [m._modules[name] for m in members]
            wide._modules[name] = _widen_module(children, f"{where}.{name}".lstrip("."), specs)
        if declared:
            wide.members = k
            _fill(wide, members, where)
        return wide
    raise NoWideForm(f"{where or 'the model'}: {kind.__name__} has no wide form")


def to_wide(x: Tensor) -> Tensor:
    """Members' inputs (K, N, C, *) as one wide input (N, K·C, *)."""
    k, n = x.shape[:2]
    return x.transpose(0, 1).reshape(n, k * x.shape[2], *x.shape[3:])


class WidePopulation(Population):
    """K models as one wide model (see the module docstring).

    ``base`` is the wide model; ``params`` and ``buffers`` map each of the members' names to a view
    (K, *its shape) of the wide tensors (0-dim buffers, which the members share, expanded), so that
    in-place updates of member k's slice ([k]) change the wide model, as the stacked tensors of a
    vmap population do.
    """

    form = "wide"

    def __init__(self, wide: nn.Module, shapes: dict[str, torch.Size], size: int) -> None:
        self.members = size
        self._owns_buffers = True
        self._shapes = shapes
        super().__init__(
            wide,
            {n: _member_view(t, shapes[n], size) for n, t in wide.named_parameters()},
            {n: _member_view(t, shapes[n], size) for n, t in wide.named_buffers()},
        )

    def pack_parameters(self) -> None:
        super().pack_parameters()
        # the members' views were made of the tensors' former storage
        self.params = {
            n: _member_view(t, self._shapes[n], self.members) for n, t in self.base.named_parameters()
        }

    @classmethod
    def stack(cls, models: Sequence[nn.Module]) -> WidePopulation:  # type: ignore[override]
        if len(models) == 1:  # one member is its own wide model: its modules, kernels and accelerated forms
            wide = copy.deepcopy(models[0])
        else:
            wide = _widen_module(models, "", plugin_classes())
            tie_shared(models[0], wide)
        shapes = {name: t.shape for name, t in _state(models[0]).items()}
        missing = set(shapes) ^ set(_state(wide))
        if missing:
            raise NoWideForm(f"the wide model's tensors differ from a member's: {sorted(missing)}")
        return cls(wide, shapes, len(models))

    @property
    def size(self) -> int:
        return self.members

    @property
    def storage(self) -> list[Tensor]:
        return [*self.base.parameters(), *self.base.buffers()]

    @property
    def leaves(self) -> list[Tensor]:
        return list(self.base.parameters())

    def member_grads(self, grads: Sequence[Tensor]) -> list[Tensor]:
        return [g.view(p.shape) for g, p in zip(grads, self.params.values(), strict=True)]

    def forward(
        self, x: Tensor, shared_input: bool = False, buffers: dict[str, Tensor] | None = None
    ) -> Tensor:
        k = self.members
        if shared_input:
            x = x.unsqueeze(0).expand(k, *x.shape)
        wide_in = to_wide(x)
        if buffers is None and not self._owns_buffers:
            buffers = self.buffers
        if buffers is None:
            y = self.base(wide_in)
        else:
            own = dict(self.base.named_buffers())
            wide_buffers = {
                n: b[0] if own[n].dim() == 0 else b.view(own[n].shape) for n, b in buffers.items()
            }
            y = functional_call(self.base, wide_buffers, (wide_in,))
        return y.view(y.shape[0], k, -1).transpose(0, 1)

    def with_buffers(self, buffers: dict[str, Tensor]) -> WidePopulation:
        twin = copy.copy(self)
        twin.buffers, twin._owns_buffers = buffers, False
        return twin

    def losses(self, x: Tensor, target: Tensor, task: Task = LOGITS) -> Tensor:
        outputs = self.forward(x)
        each = task.sample_losses(outputs.flatten(0, 1), x.flatten(0, 1), target.flatten(0, 1))
        return each.view(target.shape[:2]).mean(1)

    def match_gradient_layout(self, grads: Sequence[Tensor]) -> None:
        """A no-op: the wide weights keep the members' layout, so every matmul runs with the
        transposition flags of the member's own ``F.linear`` (storing them as their gradients come
        changes the kernels' summation order, and float32 training amplifies that past 1e-5 within
        120 steps); :class:`WideLinear`'s backward gives the weights' gradients in that layout."""

    def layer_sums(
        self, inputs: Tensor, names: Sequence[str], buffers: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], dict[str, int]]:
        sums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}
        with input_sums(self.base, names, sums, counts):
            self.forward(inputs, buffers=buffers)
        k = self.members
        return {n: t.view(2, k, -1).transpose(0, 1) for n, t in sums.items()}, counts


def _state(module: nn.Module) -> dict[str, Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _member_view(t: Tensor, shape: torch.Size, k: int) -> Tensor:
    """``t``, a wide tensor, as (K, *shape): member k's tensor at [k]."""
    if t.dim() == 0:
        return t.expand(k)
    return t if t.shape == (k, *shape) else t.unflatten(0, (k, shape[0]))


POPULATION_FORMS = ("auto", "wide", "vmap")


def stack_population(models: Sequence[nn.Module], form: str = "auto") -> Population:
    """``models`` as one population: wide where every part of the model has a wide form (``auto``;
    ``wide`` insists and raises :class:`NoWideForm` naming the part that has none), else under vmap."""
    if form not in POPULATION_FORMS:
        raise ValueError(f"population form {form!r}: allowed are {', '.join(POPULATION_FORMS)}")
    if form == "vmap":
        return Population.stack(models)
    try:
        return WidePopulation.stack(models)
    except NoWideForm:
        if form == "wide":
            raise
        return Population.stack(models)
