"""Each member of a PopulationOptimizer follows its own torch.optim.SGD / AdamW (as
normbench.train.make_optimizer configures them) bit for bit, with its own learning rate schedule,
momentum and weight decay; a member that is not alive keeps its parameters exactly."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from normbench.capture import OperatorCount
from normbench.population.optim import PopulationOptimizer
from normbench.population.stacked import pack
from normbench.train import make_optimizer

LR = (0.1, 0.05, 0.3)
MOMENTUM = (0.9, 0.0, 0.5)
WEIGHT_DECAY = (5e-4, 0.0, 1e-2)


def _members(
    name: str, alive_until: tuple[int, ...] = (99, 99, 99), weight_decay: tuple[float, ...] = WEIGHT_DECAY
):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 5, 4), (3, 4)]
    stacked = [torch.randn(s, generator=gen) for s in shapes]
    separate = [[p[k].clone().requires_grad_() for p in stacked] for k in range(3)]
    opts = [make_optimizer(name, separate[k], LR[k], MOMENTUM[k], weight_decay[k]) for k in range(3)]
    pop = PopulationOptimizer(
        name,
        stacked,
        torch.tensor(MOMENTUM, dtype=torch.float64),
        torch.tensor(weight_decay, dtype=torch.float64),
    )
    for t in range(25):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        scale = 0.5 * (1 + t / 25)  # a schedule: the lr changes every step
        alive = torch.tensor([t < a for a in alive_until])
        pop.step([g.clone() for g in grads], torch.tensor(LR, dtype=torch.float64) * scale, alive)
        for k in range(3):
            if t >= alive_until[k]:
                continue
            for q, g in zip(separate[k], grads, strict=True):
                q.grad = g[k].clone()
            for group in opts[k].param_groups:
                group["lr"] = LR[k] * scale
            opts[k].step()
    return stacked, separate


@pytest.mark.parametrize("weight_decay", [WEIGHT_DECAY, (0.0, 0.0, 0.0)], ids=["decay", "no-decay"])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_each_member_steps_exactly_as_its_own_torch_optimizer(name, weight_decay):
    stacked, separate = _members(name, weight_decay=weight_decay)
    for i, p in enumerate(stacked):
        for k in range(3):
            assert torch.equal(p[k], separate[k][i].detach()), (name, i, k)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_frozen_member_keeps_its_parameters_even_with_nan_gradients(name):
    gen = torch.Generator().manual_seed(1)
    p = torch.randn(2, 6, generator=gen)
    opt = PopulationOptimizer(
        name,
        [p],
        torch.tensor([0.9, 0.9], dtype=torch.float64),
        torch.tensor([1e-2, 1e-2], dtype=torch.float64),
    )
    opt.step(
        [torch.randn(2, 6, generator=gen)],
        torch.tensor([0.1, 0.1], dtype=torch.float64),
        torch.tensor([True, True]),
    )
    frozen = p[1].clone()
    for _ in range(3):
        g = torch.randn(2, 6, generator=gen)
        g[1] = float("nan")
        opt.step([g], torch.tensor([0.1, 0.1], dtype=torch.float64), torch.tensor([True, False]))
    assert torch.equal(p[1], frozen) and torch.isfinite(p).all()


def test_a_member_frozen_midway_matches_its_optimizer_up_to_that_step():
    stacked, separate = _members("sgd", alive_until=(99, 10, 99))
    for i, p in enumerate(stacked):
        assert torch.equal(p[1], separate[1][i].detach())


def test_unknown_optimizer_is_refused_by_name():
    with pytest.raises(ValueError, match=re.escape("optim.name='lamb'; allowed: sgd, adamw")):
        PopulationOptimizer("lamb", [torch.zeros(2, 1)], torch.zeros(2), torch.zeros(2))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_sixteen_members_stay_bit_for_bit_over_300_steps(name):
    """Sixteen members (wider than a vector register of doubles: the per-member factors go through
    torch's vectorised kernels) against their own torch optimizers, three parameter ranks."""
    k, gen = 16, torch.Generator().manual_seed(2)
    lr, momentum = (
        torch.rand(k, generator=gen, dtype=torch.float64),
        0.5 + 0.49 * torch.rand(k, generator=gen),
    )
    decay = 1e-2 * torch.rand(k, generator=gen, dtype=torch.float64)
    shapes = [(k, 5, 4), (k, 4), (k, 3, 3, 3)]
    stacked = [torch.randn(s, generator=gen) for s in shapes]
    separate = [[p[m].clone().requires_grad_() for p in stacked] for m in range(k)]
    opts = [
        make_optimizer(name, separate[m], float(lr[m]), float(momentum[m]), float(decay[m])) for m in range(k)
    ]
    pop = PopulationOptimizer(name, stacked, momentum.double(), decay)
    for _ in range(300):
        grads = [torch.randn(s, generator=gen) for s in shapes]
        pop.step([g.clone() for g in grads], lr, torch.ones(k, dtype=torch.bool), all_alive=True)
        for m in range(k):
            for q, g in zip(separate[m], grads, strict=True):
                q.grad = g[m].clone()
            opts[m].step()
    for i, p in enumerate(stacked):
        for m in range(k):
            assert torch.equal(p[m], separate[m][i].detach()), (name, i, m)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_steps_undone_by_restoring_its_tensors_leave_no_trace(name):
    """What capturing a step as a CUDA graph relies on (normbench.capture.capture_step): the warm-up
    steps are undone by restoring the parameters and ``tensors`` alone, so every count the update
    reads (AdamW's bias corrections) lives there, not on the host."""
    gen = torch.Generator().manual_seed(3)
    start, grads = torch.randn(2, 6, generator=gen), [torch.randn(2, 6, generator=gen) for _ in range(5)]
    momentum, decay, lr = (
        torch.tensor(v, dtype=torch.float64) for v in ([0.9, 0.5], [1e-2, 0.0], [0.1, 0.2])
    )
    alive = torch.tensor([True, True])

    def fresh() -> tuple[Tensor, PopulationOptimizer]:
        p = start.clone()
        return p, PopulationOptimizer(name, [p], momentum, decay)

    p, opt = fresh()
    opt.step([grads[0].clone()], lr, alive)
    state = [p, *opt.tensors]
    saved = [t.clone() for t in state]
    for g in grads[1:3]:  # the warm-up steps
        opt.step([g.clone()], lr, alive)
    for t, value in zip(state, saved, strict=True):
        t.copy_(value)
    for g in grads[1:]:
        opt.step([g.clone()], lr, alive)
    q, reference = fresh()
    for g in grads:
        reference.step([g.clone()], lr, alive)
    assert torch.equal(p, q) and opt.steps == reference.steps == len(grads)


def _run_alone(name: str, shapes: list[tuple[int, ...]], steps: int, packed: bool, alive_until: int = 99):
    """A population of one (parameters (1, *shape), packed into one buffer or not) against its own torch
    optimizer, both stepped ``steps`` times on the same gradients; NaN gradients once not alive."""
    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(1, *s, generator=gen) for s in shapes]
    if packed:
        assert pack(params)
    alone = [p[0].clone().requires_grad_() for p in params]
    reference = make_optimizer(name, alone, 0.1, 0.9, 1e-2)
    opt = PopulationOptimizer(name, params, *(torch.tensor([v], dtype=torch.float64) for v in (0.9, 1e-2)))
    ops = []
    for t in range(steps):
        grads = [torch.randn(1, *s, generator=gen) for s in shapes]
        if t >= alive_until:
            grads = [torch.full_like(g, float("nan")) for g in grads]
        else:
            for q, g in zip(alone, grads, strict=True):
                q.grad = g[0].clone()
            for group in reference.param_groups:
                group["lr"] = 0.1 * (1 - t / steps)
            reference.step()
        lr = torch.tensor([0.1 * (1 - t / steps)], dtype=torch.float64)
        with OperatorCount() as counted:
            opt.step(grads, lr, torch.tensor([t < alive_until]))
        ops.append(counted.count)
    return params, alone, opt, ops


SHAPES = [(5, 4), (4,), (3, 3, 3), (2,)]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_packed_population_of_one_steps_as_its_own_optimizer_in_operations_that_do_not_grow_with_its_tensors(
    name,
):
    params, alone, _, few = _run_alone(name, SHAPES, 6, packed=True)
    for p, q in zip(params, alone, strict=True):
        assert torch.equal(p[0], q.detach())
    _, _, _, more = _run_alone(name, SHAPES * 4, 6, packed=True)
    _, _, _, unpacked = _run_alone(name, SHAPES * 4, 6, packed=False)
    assert few[1:] == more[1:]  # after the first step, which creates the state
    assert unpacked[-1] > 3 * more[-1]  # one set of operations per tensor when they are not packed


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_a_packed_run_alone_frozen_midway_keeps_its_parameters_through_nan_gradients(name):
    params, alone, _, _ = _run_alone(name, SHAPES, 8, packed=True, alive_until=4)
    for p, q in zip(params, alone, strict=True):
        assert torch.equal(p[0], q.detach())


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "one-by-one"])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_state_loaded_into_a_fresh_optimizer_continues_as_the_uninterrupted_one(name, packed):
    """What resuming from a checkpoint relies on: ``state`` per parameter, shaped like it, and
    ``load_state`` of it (with the step count) continue exactly."""
    params, _, opt, _ = _run_alone(name, SHAPES, 5, packed)
    state = [{key: t.clone() for key, t in s.items()} for s in opt.state]
    assert [[t.shape for t in s.values()] for s in state] == [
        [p.shape] * len(s) for p, s in zip(params, state, strict=True)
    ]
    copies = [p.clone() for p in params]
    if packed:
        assert pack(copies)
    twin = PopulationOptimizer(name, copies, opt.momentum, opt.weight_decay)
    twin.load_state(state)
    twin.steps = opt.steps
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        lr, alive = torch.tensor([0.05], dtype=torch.float64), torch.tensor([True])
        opt.step([g.clone() for g in grads], lr, alive)
        twin.step([g.clone() for g in grads], lr, alive)
    assert all(torch.equal(p, q) for p, q in zip(params, copies, strict=True))


def test_pack_lays_tensors_out_one_after_another_keeping_their_values_and_identity():
    tensors = [torch.randn(3, 4), torch.randn(5), torch.randn(2, 2, 2)]
    values, ids = [t.clone() for t in tensors], [id(t) for t in tensors]
    assert pack(tensors)
    assert [id(t) for t in tensors] == ids and all(
        torch.equal(t, v) for t, v in zip(tensors, values, strict=True)
    )
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
    assert [t.storage_offset() for t in tensors] == [0, 12, 17]
    tensors[1].add_(1)  # each is still its own tensor
    assert torch.equal(tensors[0], values[0]) and torch.equal(tensors[1], values[1] + 1)


@pytest.mark.parametrize(
    "tensors",
    [[torch.zeros(2), torch.zeros(2, dtype=torch.float64)], [torch.zeros(3, 2).T, torch.zeros(2)]],
    ids=["two dtypes", "not contiguous"],
)
def test_pack_leaves_tensors_it_cannot_lay_out_as_one_where_they_are(tensors):
    pointers = [t.data_ptr() for t in tensors]
    assert not pack(tensors)
    assert [t.data_ptr() for t in tensors] == pointers
