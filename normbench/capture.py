"""A training step captured once as a CUDA graph and replayed (``runtime.cuda_graph``).

A small model's step on a GPU is launch-bound: each of its few hundred kernels costs 5-70 µs of host
time and little device time. Captured as one graph, the whole step (forward, backward, optimizer) is
one launch. The step must read its inputs from tensors that stay put (the caller copies each step's
batch indices and learning rates into them), change its state only in place, and never wait for the
device (no ``.item()``, no Python branch on a tensor's value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def capture_step(step: Callable[[], None], state: Sequence[Tensor], warmup: int = 2) -> Callable[[], None]:
    """``step`` captured as a CUDA graph; returns the function that replays it.

    Capture needs ``warmup`` eager runs first (on a side stream, as torch's docs prescribe: they
    initialise cuBLAS handles and autograd's buffers). They would be training steps, so every tensor of
    ``state`` (whatever ``step`` changes in place: parameters, buffers, optimizer state, counters) is
    saved before them and restored after: the first replay is the first step that counts.
    """
    saved = [t.clone() for t in state]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    with torch.no_grad():
        for t, value in zip(state, saved, strict=True):
            t.copy_(value)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay
