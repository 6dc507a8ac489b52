"""Mid-run checkpoints: a run's training state saved every N steps (``train.checkpoint_every``), so that a
killed run, rerun with the same command, continues where it stopped and writes the record an
uninterrupted run writes (on the CPU bit for bit, times aside).

The state is the model's and the optimizer's ``state_dict`` (with the norms' running statistics), the
step, the history so far and the loss accumulated since its last point, the gradient scaler's state,
and every random stream the loop draws from after it starts (torch's global generators and the
augmentation's own). The batch sampler is not saved: its stream is a function of the seed, so a
resumed run replays it up to the step (index draws only, no training). The file is written atomically
(a killed save leaves the previous checkpoint) and read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from normbench.results import atomic_file

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` at ``path`` so that readers see the old file or the complete new one."""
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


@dataclass(frozen=True)
class Checkpoint:
    """Where a run keeps its training state, how often it saves it, and the config it belongs to."""

    path: Path
    every: int
    config_hash: str

    def due(self, done: int, total: int) -> bool:
        return done % self.every == 0 and done < total

    def save(self, state: dict[str, Any]) -> None:
        save_atomic({**state, "config_hash": self.config_hash}, self.path)

    def load(self, holds: str | None = None) -> dict[str, Any] | None:
        """The saved state, or None (no file; one line when it is unreadable, of another config or,
        with ``holds`` - a key every state of the reading loop has - written by the other training
        loop: a run killed as a population's member and rerun alone, or the other way round)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a file from elsewhere, or cut short by a full disk: train from step 0
            log.warning("%s: unreadable checkpoint (%s); training from step 0", self.path, exc)
            return None
        if not isinstance(state, dict) or state.get("config_hash") != self.config_hash:
            log.warning("%s: a checkpoint of another config; training from step 0", self.path)
            return None
        if holds is not None and holds not in state:
            other = "a population's member" if "group" in state else "a run alone"
            log.warning(
                "%s: a checkpoint of this config trained as %s; training from step 0", self.path, other
            )
            return None
        return state


def saved_config_hash(path: Path) -> str | None:
    """The config hash of the run that saved the checkpoint at ``path``; None where there is none, or
    none readable."""
    if not path.exists():
        return None
    try:  # mapped, not read: a resumed run's checkpoint is read once, by Checkpoint.load
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable: Checkpoint.load says so and trains from step 0
        return None
    digest = state.get("config_hash") if isinstance(state, dict) else None
    return digest if isinstance(digest, str) else None


MODEL_FILE = "model.pt"


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """``model``'s ``state_dict`` at ``path``, written atomically (``train.save_model=true``)."""
    save_atomic(model.state_dict(), path)


def load_weights(model: torch.nn.Module, path: str | Path, label: str = "") -> None:
    """Load the ``state_dict`` saved at ``path`` into ``model``; ValueError in one line, starting with
    ``label`` (default: the path), when the file cannot be read or does not fit the model."""
    label = label or str(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ValueError(f"{label}: {exc.strerror or exc}") from None
    except Exception as exc:  # torch.load's unpickling errors are many kinds, and several lines long
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{label}: not a state dict that torch.load reads ({first})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{label}: holds a {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # its message lists every missing and unexpected key, a line each
        raise ValueError(f"{label}: {' '.join(str(exc).split())}") from None


def random_state(generators: list[torch.Generator]) -> dict[str, Any]:
    """torch's global random streams and ``generators``' states."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state(), "own": [g.get_state() for g in generators]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any], generators: list[torch.Generator]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for gen, saved in zip(generators, state["own"], strict=True):
        gen.set_state(saved)


__all__ = [
    "CHECKPOINT_FILE",
    "MODEL_FILE",
    "Checkpoint",
    "load_weights",
    "random_state",
    "restore_random_state",
    "save_weights",
    "saved_config_hash",
]
