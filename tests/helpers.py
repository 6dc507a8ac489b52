"""Helpers shared by the run, sweep and report tests."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from normbench import register_norm
from normbench.cli import CONF_DIR
from normbench.norms.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
# a few steps, and the PreciseBN and mini-batch evaluations on a few hundred training samples (their
# defaults, 10,000 and 2,000, were most of such a run's time)
QUICK_EVAL = ("eval.precise_bn_samples=256", "eval.minibatch_samples=256")
QUICK = ("train.budget=steps", "train.steps=4", "train.history_points=2", *QUICK_EVAL)


def compose_cfg(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def csv_rows(path: Path) -> dict[tuple[int, str], float]:
    """A ``logger=csv`` run's ``metrics.csv``: value by (step, name)."""
    with path.open() as f:
        return {(int(r["step"]), r["name"]): float(r["value"]) for r in csv.DictReader(f)}


def tracked_values(record: dict) -> dict[tuple[int, str], float]:
    """What a tracker logs of ``record`` (with layer statistics left out): each history point's values at
    its step, and the numeric final metrics as ``final/NAME`` at the last step."""
    rows = {(p["step"], k): float(v) for p in record["history"] for k, v in p.items() if k != "step"}
    rows |= {
        (record["steps"], f"final/{k}"): float(v)
        for k, v in record["metrics"].items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return rows


def wandb_offline_history(run_dir: Path) -> tuple[set[tuple[str, str, str]], dict[tuple[int, str], float]]:
    """The (id, project, group) of the offline W&B runs in ``run_dir/wandb`` and their logged values by
    (step, name), read from their transaction logs: LevelDB log records (32 KiB blocks, 7-byte headers:
    CRC, length, type full/first/middle/last) after a 7-byte W&B header, each a
    ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    runs, values = set(), {}
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, pending = path.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            if (left := 32768 - pos % 32768) < 7:  # a block's tail too short for a header is padding
                pos += left
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            if kind == 0:
                break
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind not in (1, 4):
                continue
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "run":
                runs.add((record.run.run_id, record.run.project, record.run.run_group))
            elif record.WhichOneof("record_type") == "history":
                items = {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item
                }
                step = items.pop("_step")
                values |= {(step, k): v for k, v in items.items() if not k.startswith("_")}
    return runs, values


def normbench_run(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300):
    """Run ``python -m normbench ARGS`` in a subprocess from ``cwd``."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "normbench", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def normbench_run_here(*args: str, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    """``normbench-run ARGS`` in this process from ``cwd``, for a command refused before any job
    trains: its exit status and what it wrote to stderr (a fresh process's start would be most of such
    a test; the command's environment and signal handlers are restored after it)."""
    from normbench.cli import run

    monkeypatch.chdir(cwd)
    monkeypatch.setattr("sys.argv", ["normbench-run", *args])
    for name in ("HYDRA_FULL_ERROR", "PYTHONWARNINGS"):  # run() sets both for its own process
        monkeypatch.setenv(name, "0" if name == "HYDRA_FULL_ERROR" else os.environ.get(name, ""))
    try:
        run()
    except SystemExit as exc:
        return exc.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


@contextmanager
def registered_plugin(name: str, factory: type, **spec: object) -> Iterator[str]:
    """``factory`` registered as the norm ``name`` (with registry ``spec`` keywords) for the block."""
    register_norm(name, override=True, **spec)(factory)
    try:
        yield name
    finally:
        REGISTRY._specs.pop(name, None)
        REGISTRY._keys.pop(name, None)


def installed_env(package: Path, target: Path) -> dict[str, str]:
    """The environment of a process that sees ``package`` installed (``pip install --no-deps --target
    target``) next to normbench, as a user's separate package would be."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(package),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}


def run_python(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """``python ARGS`` in a subprocess with ``env``, from ``cwd``."""
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )


def write_distribution(root: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A distribution ``name`` installed in ``root`` (a folder on the path): its modules and its
    ``normbench.norms`` entry points, laid out as a third-party plugin package installs them."""
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[normbench.norms]\n{entry_points}\n")
    for mod, src in modules.items():
        (root / f"{mod}.py").write_text(textwrap.dedent(src))


EXPLODING_NORM = '''
    from torch import nn
    from normbench import register_norm

    @register_norm("explodingnorm", paper="test plugin", batch_dependent=False)
    class ExplodingNorm(nn.Module):
        """Raise in every forward."""

        def __init__(self, num_channels: int) -> None:
            super().__init__()

        def forward(self, x):
            raise RuntimeError("plugin exploded")
'''


def exploding_plugin_env(root: Path) -> dict[str, str]:
    """The environment of a process that sees the norm ``explodingnorm`` (from a package installed in
    ``root``): its every forward raises, so a run of it fails though its configuration passes."""
    write_distribution(root, "nb_exploding", "exploding = nb_exploding", {"nb_exploding": EXPLODING_NORM})
    return {"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
