"""A training step captured once as a CUDA graph and replayed (``runtime.cuda_graph``).

A small model's step on a GPU is launch-bound: each of its few hundred kernels costs 5-70 µs of host
time and little device time. Captured as one graph, the whole step (forward, backward, optimizer) is
one launch. The step must read its inputs from tensors that stay put (the caller copies each step's
batch indices and learning rates into them), change its state only in place, and never wait for the
device (no ``.item()``, no Python branch on a tensor's value).

Autograd remembers the stream each node was built on and makes the backward wait on it; a capture
fails when that stream is the legacy default stream, or any stream outside the capture (pytorch
#164302). So everything that builds autograd nodes of the captured tensors - the eager steps before
the capture, the warm-up and the capture itself - runs on one side stream: :func:`training_stream`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode


@contextmanager
def training_stream(device: torch.device, enabled: bool) -> Iterator[None]:
    """Inside the block, ``device``'s work runs on a stream of its own (when ``enabled``), ordered
    after everything queued before it and before everything queued after it."""
    if not enabled:
        yield
        return
    outer = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(outer)
    with torch.cuda.stream(stream):
        yield
    outer.wait_stream(stream)


def capture_step(step: Callable[[], None], state: Sequence[Tensor], warmup: int = 2) -> Callable[[], None]:
    """``step`` captured as a CUDA graph on the current stream (a :func:`training_stream`); returns the
    function that replays it.

    Capture needs ``warmup`` eager runs first (they initialise cuBLAS handles and autograd's buffers).
    They would be training steps, so every tensor of ``state`` (whatever ``step`` changes in place:
    parameters, buffers, optimizer state, counters) is saved before them and restored after: the first
    replay is the first step that counts.
    """
    stream = torch.cuda.current_stream()
    if stream == torch.cuda.default_stream():
        raise RuntimeError("capture_step: run it inside training_stream(...), not on the default stream")
    saved = [t.clone() for t in state]
    for _ in range(warmup):
        step()
    with torch.no_grad():
        for t, value in zip(state, saved, strict=True):
            t.copy_(value)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        step()
    return graph.replay


class OperatorCount(TorchDispatchMode):
    """Counts the operators that compute (not views) dispatched inside the block: on a GPU each is about
    one kernel, so their number per training step is about what its captured graph replays (each a few
    µs however small), counted on any device (``scripts/profile_population.py``)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.count += 1
        return func(*args, **(kwargs or {}))
