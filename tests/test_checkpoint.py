"""Checkpoints and resume mid-run: a killed run, rerun with the same command, ends with the record of an
uninterrupted run; saved weights rebuild the model that made the record."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import QUICK_EVAL, compose_cfg

from normbench import load_model
from normbench.checkpoint import CHECKPOINT_FILE, MODEL_FILE, Checkpoint
from normbench.config import ConfigError

STEPS = (
    "task=mnist1d_mlp",
    "batch_size=16",
    "train.budget=steps",
    "train.steps=1000",
    "train.history_points=5",
    *QUICK_EVAL,
)


def _normbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "normbench", *args, "runtime.progress=false"]


def _command(folder: Path, *extra: str) -> list[str]:
    return _normbench(*STEPS, f"hydra.run.dir={folder}", *extra)


def _result(folder: Path) -> dict:
    record = json.loads((folder / "result.json").read_text())
    return {k: record[k] for k in ("status", "config_hash", "metrics", "history", "steps", "layers")}


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_command(whole), env=env, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(_command(killed, "train.checkpoint_every=40"), env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / CHECKPOINT_FILE).exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (killed / "result.json").exists()
    saved = torch.load(killed / CHECKPOINT_FILE, weights_only=True)
    assert 0 < saved["step"] < 1000
    rerun = subprocess.run(
        _command(killed, "train.checkpoint_every=40"), env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    log = (killed / "normbench.log").read_text()
    assert "resumed from" in log and "at step" in log
    assert _result(killed) == _result(whole)  # every metric and history value, exactly
    assert not (killed / CHECKPOINT_FILE).exists()  # a final record leaves nothing to resume


def test_a_checkpoint_of_another_config_or_unreadable_is_not_resumed(tmp_path, caplog):
    path = tmp_path / CHECKPOINT_FILE
    Checkpoint(path, 10, "aaaa").save({"step": 5})
    assert Checkpoint(path, 10, "aaaa").load()["step"] == 5
    assert Checkpoint(path, 10, "bbbb").load() is None and "a checkpoint of another config" in caplog.text
    path.write_bytes(b"not a checkpoint")
    assert Checkpoint(path, 10, "aaaa").load() is None and "unreadable checkpoint" in caplog.text


def test_saved_weights_rebuild_the_model_that_made_the_record(tmp_path):
    folder = tmp_path / "run"
    run = _normbench("task=mnist1d_cnn", "train.budget=steps", "train.steps=60", "train.save_model=true")
    subprocess.run([*run, f"hydra.run.dir={folder}"], check=True, capture_output=True, timeout=600)
    from normbench.tasks import load_dataset

    model = load_model(folder)
    data = load_dataset("mnist1d")
    with torch.no_grad():
        error = (model(data.x_test).argmax(1) != data.y_test).float().mean().item()
    assert error == pytest.approx(
        json.loads((folder / "result.json").read_text())["metrics"]["test_error"], abs=1e-6
    )
    result = folder / "result.json"
    record = json.loads(result.read_text())
    record["config"]["optim"]["warmup_steps"] = 60  # a run trained before a rule that now refuses it
    result.write_text(json.dumps(record))
    assert torch.equal(load_model(folder)(data.x_test[:4]), model(data.x_test[:4]))  # no new run's checks
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(tmp_path))}: holds no result\.json"):
        load_model(tmp_path)  # the folder above the run
    with pytest.raises(FileNotFoundError, match=r"result\.json: is a file; give a run's folder"):
        load_model(result)
    with pytest.raises(FileNotFoundError, match=r"/nothing: does not exist; give a run's folder"):
        load_model(tmp_path / "nothing")
    for status, save_model, why in [
        ("completed", False, r"train the run with train\.save_model=true"),
        ("diverged", True, r"the run's status is diverged; the weights of completed runs alone are kept"),
        ("completed", True, r"the run kept them; the file was removed or moved since"),
    ]:
        other = tmp_path / f"{status}_{save_model}"
        other.mkdir()
        changed = {**record, "status": status}
        changed["config"]["train"]["save_model"] = save_model
        (other / "result.json").write_text(json.dumps(changed))
        with pytest.raises(FileNotFoundError, match=rf"model\.pt: no saved weights \({why}\)$"):
            load_model(other)
    with pytest.raises(TypeError, match=r"load_model takes a run's folder \(a str or path\), got 3"):
        load_model(3)
    with pytest.raises(ConfigError, match=r"^device=gpu: "):
        load_model(folder, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^device=cuda: "):
            load_model(folder, device="cuda")
    weights = folder / MODEL_FILE
    state = torch.load(weights, weights_only=True)
    first = next(iter(state))
    for bad, message in [
        (b"cut short", r"not a state dict that torch\.load reads \("),
        ({**state, first: torch.zeros(3)}, rf"Error\(s\) in loading state_dict for ConvNet: size mismatch for {re.escape(first)}: copying a param with shape torch\.Size\(\[3\]\)"),
        ([1, 2], r"holds a list, not a state dict"),
    ]:  # fmt: skip
        weights.write_bytes(bad) if isinstance(bad, bytes) else torch.save(bad, weights)
        with pytest.raises(ValueError, match=rf"^{re.escape(str(weights))}: {message}") as exc:
            load_model(folder)
        assert "\n" not in str(exc.value)  # one line, not torch's several


def test_a_killed_population_resumes_from_its_members_checkpoints_and_ends_as_an_uninterrupted_one(tmp_path):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    grid = ["-m", "norm=batchnorm", "seed=0,1", "optim.lr=0.05,0.1", "hydra/launcher=population", *STEPS[1:]]

    def sweep(root: str, *extra: str) -> list[str]:
        return _normbench(*grid, f"sweep.root={root}", *extra)

    subprocess.run(sweep("whole"), cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(
        sweep("killed", "train.checkpoint_every=40"), cwd=tmp_path, env=env, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob(f"killed/*/*/{CHECKPOINT_FILE}"))) < 4 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # the population's worker process ends with the sweep's (its watchdog)
    assert not list(tmp_path.glob("killed/*/*/result.json"))
    rerun = subprocess.run(
        sweep("killed", "train.checkpoint_every=40"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "population resumed from its members' checkpoints at step" in rerun.stderr + rerun.stdout
    whole = {p.parent.name: _result(p.parent) for p in tmp_path.glob("whole/*/*/result.json")}
    killed = {p.parent.name: _result(p.parent) for p in tmp_path.glob("killed/*/*/result.json")}
    assert len(whole) == 4 and killed == whole  # every member's metrics and history, exactly
    assert not list(tmp_path.glob(f"killed/*/*/{CHECKPOINT_FILE}"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ("train.checkpoint_every=-5",),
            "train.checkpoint_every=-5: must be 0 (never) or a number of steps >= 1",
        ),
    ],
)
def test_checkpoints_that_cannot_work_are_refused_before_training(overrides, message, tmp_path):
    from normbench.config import ConfigError
    from normbench.experiment.run import execute

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        execute(compose_cfg(*overrides, "train.budget=steps", "train.steps=4"), tmp_path)
    assert not (tmp_path / "result.json").exists()


def test_population_members_save_their_own_weights(tmp_path):
    from normbench.population.launcher import Member, train_group
    from normbench.tasks import load_dataset

    quick = ("train.budget=steps", "train.steps=30", "train.history_points=2", "train.save_model=true")
    members = [
        Member(compose_cfg(*quick, f"seed={s}"), tmp_path / str(s), str(tmp_path / f"{s}.log"))
        for s in (0, 1)
    ]
    train_group(members)
    data = load_dataset("mnist1d")
    for m in members:
        record = json.loads((m.out_dir / "result.json").read_text())
        assert record["env"]["population"] == 2
        with torch.no_grad():
            error = (load_model(m.out_dir)(data.x_test).argmax(1) != data.y_test).float().mean().item()
        assert error == pytest.approx(record["metrics"]["test_error"], abs=1e-6)


def test_a_gan_run_interrupted_after_a_checkpoint_resumes_to_the_uninterrupted_record(tmp_path, monkeypatch):
    from normbench.checkpoint import Checkpoint as Saver
    from normbench.experiment.run import execute

    quick = ("task=gan_digits", "optim=dcgan", "batch_size=16", "train.budget=steps", "train.steps=30")
    quick += ("train.history_points=3", "seed=3")
    whole = execute(compose_cfg(*quick), tmp_path / "whole")
    save = Saver.save

    def save_then_stop(self, state):  # the process dies right after its first checkpoint
        save(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(Saver, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        execute(compose_cfg(*quick, "train.checkpoint_every=10"), tmp_path / "cut")
    monkeypatch.setattr(Saver, "save", save)
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = execute(
        compose_cfg(*quick, "train.checkpoint_every=10", "train.save_model=true"), tmp_path / "cut"
    )
    keys = ("status", "config_hash", "metrics", "history", "steps")
    assert {k: resumed[k] for k in keys} == {k: whole[k] for k in keys}
    assert (tmp_path / "cut" / "model.pt").is_file() and not (tmp_path / "cut" / CHECKPOINT_FILE).exists()


@pytest.mark.parametrize("first", ["population", "alone"])
def test_a_checkpoint_of_the_other_training_loop_is_set_aside_and_the_rerun_trains_from_step_0(
    tmp_path, caplog, first
):
    """A run killed as a population's member and rerun alone (another launcher), or the other way round,
    finds a checkpoint of its config that its loop cannot read: it used to fail on a missing key; now
    it says so in one line and trains from step 0, to the record of a run that found none."""
    from normbench.experiment.build import prepare_data, prepare_model
    from normbench.experiment.identity import run_identity
    from normbench.experiment.run import execute, fit_run
    from normbench.population.train import fit_population, train_population
    from normbench.runtime import Runtime

    cfg = compose_cfg(*STEPS[:3], "train.steps=120", "train.history_points=3", "train.checkpoint_every=40")
    data = prepare_data(cfg)
    folder = tmp_path / "killed"
    folder.mkdir()
    checkpoint = Checkpoint(folder / CHECKPOINT_FILE, 40, run_identity(cfg)[1])
    if first == "population":
        fit_population([cfg], [prepare_model(cfg, data)], data, Runtime(), checkpoints=[checkpoint])
    else:
        fit_run(cfg, prepare_model(cfg, data), data, checkpoint=checkpoint)
    assert checkpoint.load()["step"] == 80  # what a kill at step 80-119 leaves
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    if first == "population":  # rerun alone
        rerun, reference = execute(cfg, folder), execute(cfg, fresh)
        other = "a population's member"
    else:
        (rerun,), (reference,) = (train_population([cfg], out_dirs=[d]) for d in (folder, fresh))
        other = "a run alone"
    assert rerun["status"] == "completed"
    assert f"a checkpoint of this config trained as {other}; training from step 0" in caplog.text
    assert rerun["history"] == reference["history"] and rerun["metrics"] == reference["metrics"]
