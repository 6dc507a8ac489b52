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

from collections import Counter
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


def _span(t: Tensor) -> int:
    """Bytes of memory ``t`` covers: its size where it is dense, less where it is broadcast (stride 0)."""
    if t.numel() == 0:
        return 0
    return (
        1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True) if st > 0)
    ) * t.element_size()


def _tensors(value: object) -> list[Tensor]:
    items = value if isinstance(value, list | tuple) else (value,)
    return [t for t in items if isinstance(t, Tensor)]


def moved_bytes(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: object) -> int:
    """The bytes an operator reads and writes, from its schema: each tensor argument read once (one it
    updates in place read and written, an ``out=`` tensor written), each new tensor it returns written
    once (not one that shares an argument's memory: an operator that returns only such is a view). An
    estimate from above where an operator reads part of a tensor (indexing is charged the whole of what
    it indexes) and from below where it reads a tensor more than once (a matmul's tiles)."""
    schema = func._schema
    given = {**dict(zip((a.name for a in schema.arguments), args, strict=False)), **kwargs}
    read = written = 0
    memory = set()
    for arg in schema.arguments:
        tensors = _tensors(given.get(arg.name))
        memory.update(t.untyped_storage().data_ptr() for t in tensors)
        size = sum(_span(t) for t in tensors)
        if arg.alias_info is not None and arg.alias_info.is_write:
            written += size
            read += 0 if arg.is_out else size
        else:
            read += size
    returned = [t for value in (out if isinstance(out, tuple) else (out,)) for t in _tensors(value)]
    fresh = [t for t in returned if t.untyped_storage().data_ptr() not in memory]
    if returned and not fresh and not written:  # a view its schema does not mark (``_unsafe_view``)
        return 0
    return read + written + sum(_span(t) for t in fresh)


class OperatorCount(TorchDispatchMode):
    """Counts the operators that compute (not views) dispatched inside the block, and the bytes each
    kind reads and writes (:func:`moved_bytes`, by operator name as profiles list them: ``aten::bmm``).
    On a GPU each operator is about one kernel, so their number per training step is about what its
    captured graph replays (each a few µs however small), and a small model's step is bound by memory:
    its bytes over its kernels' time say how near it runs to the card's bandwidth. Counted on any device
    (``scripts/profile_population.py``); kernels launched around PyTorch's dispatcher (the Triton
    kernels of :mod:`normbench.accel`) are not seen."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.bytes: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not func.is_view:
            self.count += 1
            self.bytes[func._schema.name] += moved_bytes(func, args, kwargs, out)
        return out
