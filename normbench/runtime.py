"""Where and in what arithmetic a run executes: device, autocast precision, memory format, compile.

``runtime.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``; ``auto`` is CUDA when present) holds the
data, the model and every evaluation. ``runtime.precision`` runs forward passes under
``torch.autocast`` in bfloat16 or float16 (float16 with a gradient scaler); parameters, optimizer
state and the norms' statistics stay float32. ``runtime.channels_last`` stores 4-D activations
channels-last (2-D tasks only); ``runtime.compile`` trains a ``torch.compile``-d model.
``runtime.cuda_graph`` captures a population's training step (a run alone's on one GPU: a population of
one) as one CUDA graph and replays it
(:mod:`normbench.capture`): ``null`` (the default) wherever it can (CUDA, no augmentation),
``true`` to insist (refused where it cannot), ``false`` never. ``runtime.kernels`` chooses the norms'
accelerated forms (:mod:`normbench.accel`): ``auto``, ``torch`` (the formulas alone) or one family.

Of these only the precision changes the numbers beyond float reassociation, so only a precision other than
fp32 joins a run's identity (``normbench.schema.NON_IDENTITY_KEYS`` and
``normbench.experiment.identity.LATER_KEYS``): every fp32 run keeps the hash it had before these settings
existed.
"""

from __future__ import annotations

import os
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from normbench.accel import check_setting
from normbench.schema import ConfigError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_problem(spec: str, setting: str = "runtime.device") -> str | None:
    """Why ``runtime.device=spec`` (or another ``setting``) cannot run on this machine, or None."""
    allowed = "auto, cpu, cuda or cuda:N"
    if not isinstance(spec, str) or not _DEVICE.fullmatch(spec):
        return f"{setting}={spec}: must be one of {allowed}"
    if not spec.startswith("cuda"):
        return None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return f"{setting}={spec}: this machine has no CUDA device (allowed here: auto, cpu)"
    index = int(spec.partition(":")[2] or 0)
    if index >= count:
        return f"{setting}={spec}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
    return None


def resolve_device(spec: str, setting: str = "runtime.device") -> torch.device:
    """The device ``spec`` names (``auto``: CUDA where there is one); raises ConfigError, naming
    ``setting``, for one this machine does not have."""
    problem = device_problem(spec, setting)
    if problem:
        raise ConfigError(problem)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


@dataclass(frozen=True)
class Runtime:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    cuda_graph: bool | None = None
    kernels: str = "auto"  # normbench.accel.KERNEL_SETTINGS
    # training steps between divergence checks (each makes the host wait for the device); 0: 1 on the
    # CPU, where the check costs nothing, and 64 on a GPU
    check_interval: int = 0

    @classmethod
    def from_config(cls, runtime: Any) -> Runtime:
        """From the ``runtime`` config node; raises ConfigError for a device or precision that cannot run."""
        precision = str(getattr(runtime.precision, "value", runtime.precision))
        if precision not in PRECISIONS:
            raise ConfigError(f"runtime.precision={precision}: must be one of {', '.join(PRECISIONS)}")
        device = resolve_device(runtime.device)
        graph = runtime.get("cuda_graph")
        if graph is not None and not isinstance(graph, bool):
            raise ConfigError(f"runtime.cuda_graph={graph}: must be true, false or null (where it can)")
        if graph and device.type != "cuda":
            where = f"runtime.device={runtime.device}" + (
                "" if str(runtime.device) == str(device) else f", here {device}"
            )
            raise ConfigError(f"runtime.cuda_graph=true: needs a CUDA device ({where})")
        kernels = str(getattr(runtime.get("kernels", "auto"), "value", runtime.get("kernels", "auto")))
        try:
            check_setting(kernels)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(device, precision, bool(runtime.channels_last), bool(runtime.compile), graph, kernels)

    @property
    def check_every(self) -> int:
        return self.check_interval or (1 if self.device.type == "cpu" else 64)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def autocast(self):
        """The autocast context of forward passes (a no-op in fp32)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """float16 needs loss scaling (its exponent range underflows small gradients); bfloat16 does not."""
        return torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def describe(self) -> dict[str, Any]:
        """What a record states about where it ran."""
        described: dict[str, Any] = {
            "device": str(self.device),
            "precision": self.precision,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "kernels": self.kernels,
        }
        if self.device.type == "cuda":
            described["gpu"] = torch.cuda.get_device_name(self.device)
        return described


def use_deterministic_kernels(device: torch.device, compiles: bool = False) -> None:
    """Deterministic kernels: strict on CPU; on CUDA cuBLAS needs a fixed workspace, and the few ops
    without a deterministic CUDA kernel warn instead of failing the run. ``compiles``: the process may
    run ``torch.compile`` (always assumed on CUDA, where the ``compiled`` kernels may)."""
    warn_only = device.type == "cuda"
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    if compiles or warn_only or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        # the same switch without torch.use_deterministic_algorithms' import of inductor's config (to
        # set its flag), which imports torch._dynamo: 1.2 s of a process that never compiles. A run
        # alone imports it anyway when it builds its torch.optim optimizer (its constructor does); a
        # population's processes, whose optimizer is normbench's own, never do.
        torch._C._set_deterministic_algorithms(True, warn_only=warn_only)


CPU_FP32 = Runtime()  # where a run executes unless told otherwise
