"""A wide MLP population written by hand in a few lines: the reference that normbench's own wide
population is timed against (``scripts/bench_population.py --forms minimal minimal:graph``).

It is written like the probe that measured what one GPU can do for #29 (K batched-matmul MLPs reached 175k
model-steps/s eagerly on an H100): each Linear one ``torch.baddbmm`` over the members' stacked weights,
each BatchNorm torch's own over the members' features side by side (running statistics included), one
``torch.optim.SGD`` (foreach) over all members, and with ``graph`` the whole step captured as one CUDA
graph as PyTorch's documentation does it. Same shapes, per-member batches, optimizer settings and step
count as normbench's configs, but one learning rate for all and no schedule: a speed reference, not a
run (its numbers are not any member's).
"""

from __future__ import annotations

import itertools
import math
import time

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from normbench.runtime import Runtime
from normbench.tasks.dataset import Dataset

WARMUP = 3  # eager steps before a capture (cuBLAS handles, the optimizer's momentum buffers)


def has_minimal_form(cfg: DictConfig) -> bool:
    """Whether the hand-written population covers ``cfg``: an MLP task with BatchNorm and SGD."""
    return cfg.task.model.arch == "mlp" and cfg.norm.name == "batchnorm" and cfg.optim.name == "sgd"


class HandWideMLP(nn.Module):
    """K MLPs ``in → [Linear → BatchNorm → ReLU] × depth → Linear`` side by side: member k's Linear is
    ``x @ weights[i][k] + biases[i][k]`` and its BatchNorm the k-th block of ``norms[i]``'s channels."""

    def __init__(self, k: int, dims: list[int], device: torch.device, gen: torch.Generator) -> None:
        super().__init__()
        self.weights = nn.ParameterList(
            torch.randn(k, i, o, device=device, generator=gen) / i**0.5 for i, o in itertools.pairwise(dims)
        )
        self.biases = nn.ParameterList(torch.zeros(k, 1, o, device=device) for o in dims[1:])
        self.norms = nn.ModuleList(nn.BatchNorm1d(k * width, device=device) for width in dims[1:-1])

    def forward(self, x: Tensor) -> Tensor:
        """(K, N, in) -> (K, N, classes): member k's batch at [k]."""
        k, n = x.shape[:2]
        for layer, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if layer < len(self.norms):  # each member's features side by side: (N, K·width)
                wide = self.norms[layer](x.transpose(0, 1).reshape(n, -1))
                x = torch.relu(wide.view(n, k, -1).transpose(0, 1))
        return x


def train_minimal(
    cfgs: list[DictConfig], data: Dataset, runtime: Runtime, graph: bool
) -> tuple[float, float]:
    """Seconds to build K = ``len(cfgs)`` MLPs of the members' shape side by side, train them for the
    members' steps and evaluate each on the test set; in all, and in the training loop alone."""
    cfg, k, device = cfgs[0], len(cfgs), runtime.device
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    gen = torch.Generator(device).manual_seed(cfg.seed)
    shape = cfg.task.model
    dims = [math.prod(data.input_shape), *[shape.width] * shape.depth, data.num_classes]
    model = HandWideMLP(k, dims, device, gen)
    optim = cfg.optim
    opt = torch.optim.SGD(
        model.parameters(),
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        foreach=True,
    )
    x_train, y_train = data.x_train.flatten(1), data.y_train
    steps = cfg.train.steps
    draws = torch.randint(len(x_train), (steps, k, cfg.batch_size), device=device, generator=gen)
    idx = draws[0].clone()  # what a step reads, refilled before each

    def step() -> None:
        loss = F.cross_entropy(model(x_train[idx]).flatten(0, 1), y_train[idx].flatten()) * k
        loss.backward()
        opt.step()

    def train(first: int, last: int) -> None:
        for s in range(first, last):
            idx.copy_(draws[s])
            opt.zero_grad(set_to_none=True)
            step()

    sync()
    loop_start = time.perf_counter()
    if not graph:
        train(0, steps)
    else:  # warm-up on a side stream, then the step captured once and replayed (torch.cuda.graphs)
        warm, outer, side = min(WARMUP, steps), torch.cuda.current_stream(device), torch.cuda.Stream(device)
        side.wait_stream(outer)
        with torch.cuda.stream(side):
            train(0, warm)
        outer.wait_stream(side)
        captured = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(captured):
            step()
        for s in range(warm, steps):
            idx.copy_(draws[s])
            captured.replay()
    sync()
    loop = time.perf_counter() - loop_start
    with torch.no_grad():
        model.eval()
        x_test = data.x_test.flatten(1)
        logits = model(x_test.unsqueeze(0).expand(k, *x_test.shape))
        (logits.argmax(-1) != data.y_test).float().mean(1).tolist()  # read back, as a record is
    sync()
    return time.perf_counter() - start, loop
