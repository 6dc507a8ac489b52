"""One training run: every task with every core norm, faults, configuration errors, determinism."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import QUICK, compose_cfg, normbench_run, normbench_run_here, registered_plugin

import normbench.experiment.record as record_module
from normbench.config import ConfigError
from normbench.experiment.run import execute
from normbench.results import RESULT_FILE, InvalidRecord, load_run
from normbench.tasks import load_dataset

TASKS = ["mnist1d_mlp", "mnist1d_cnn", "mnist1d_resnet", "digits_cnn", "seq_transformer"]
CORE = ["batchnorm", "layernorm", "instancenorm", "groupnorm", "identity"]
# (N, C) inputs to the norm: no spatial positions for instance statistics.
NO_POSITIONS = {("mnist1d_mlp", "instancenorm"), ("seq_transformer", "instancenorm")}


@pytest.mark.parametrize("norm", CORE)
@pytest.mark.parametrize("task", TASKS)
def test_each_task_trains_with_each_core_norm(task, norm, tmp_path):
    cfg = compose_cfg(f"task={task}", f"norm={norm}", "batch_size=8", *QUICK)
    if (task, norm) in NO_POSITIONS:
        with pytest.raises(ConfigError, match=r"needs at least 2 spatial positions"):
            execute(cfg, tmp_path)
        assert not (tmp_path / RESULT_FILE).exists()
        return
    record = execute(cfg, tmp_path)
    assert record["status"] == "completed", record.get("error")
    assert record == load_run(tmp_path)
    assert record["steps"] == 4 and len(record["history"]) == 2
    m = record["metrics"]
    for key in ("test_error", "train_error"):
        assert 0.0 <= m[key] <= 1.0
    assert m["test_loss"] > 0 and m["train_loss"] > 0
    config = record["config"]
    assert (config["task"]["name"], config["norm"]["name"], config["batch_size"], config["seed"]) == (
        task,
        norm,
        8,
        0,
    )


def test_transformer_instancenorm_works_with_sequence_layout(tmp_path):
    cfg = compose_cfg("task=seq_transformer", "norm=instancenorm", "task.model.token_layout=sequence", *QUICK)
    assert execute(cfg, tmp_path)["status"] == "completed"


def test_record_fields_budget_and_lr_scaling(tmp_path):
    cfg = compose_cfg(
        "norm=groupnorm", "norm.num_groups=8", "batch_size=64", "train.epochs=1", "optim.lr=0.1"
    )
    record = execute(cfg, tmp_path)
    n_train = len(load_dataset("mnist1d").split(0.1, 0).y_train)  # the default split holds out 10%
    assert n_train == 3600 and record["steps"] == n_train // 64 == record["steps_per_epoch"]
    assert record["lr"] == pytest.approx(0.1 * 64 / 32)
    assert record["config"]["norm"] == {
        "name": "groupnorm",
        "num_groups": 8,
        "group_size": None,
        "eps": 1e-5,
        "affine": True,
    }
    assert set(record["env"]) >= {"normbench", "torch", "python", "threads"}
    assert record["wall_time_s"] > 0 and record["time_per_step_s"] > 0
    assert [h["step"] for h in record["history"]] == [n_train // 64]
    sqrt = execute(compose_cfg("optim=adamw", "batch_size=128", *QUICK), tmp_path / "b")
    assert sqrt["lr"] == pytest.approx(1e-3 * 2)


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    cfg = compose_cfg("task=mnist1d_cnn", "batch_size=16", *QUICK)
    a = execute(cfg, tmp_path / "a")
    b = execute(cfg, str(tmp_path / "b"))  # a folder as a string, as API callers give it
    assert a["metrics"] == b["metrics"] and a["history"] == b["history"]
    assert b["status"] == "completed" and load_run(tmp_path / "b") == b
    c = execute(compose_cfg("task=mnist1d_cnn", "batch_size=16", "seed=1", *QUICK), tmp_path / "c")
    assert c["metrics"] != a["metrics"]


def test_non_finite_loss_is_recorded_as_diverged(tmp_path):
    cfg = compose_cfg(
        "norm=identity", "optim.lr=1e6", "optim.lr_scaling=none", "train.budget=steps", "train.steps=50"
    )
    record = execute(cfg, tmp_path)
    assert record["status"] == "diverged"
    assert 0 <= record["diverged_at_step"] < 50 and record["steps"] == record["diverged_at_step"]
    assert load_run(tmp_path)["status"] == "diverged"


def test_non_finite_final_metrics_are_recorded_as_diverged(tmp_path, monkeypatch):
    """Finite training losses but a model whose outputs overflow at evaluation: a record, not a crash."""
    real = record_module.final_metrics

    def overflowing(*args):
        return {**real(*args), "test_loss": float("nan"), "train_loss": float("inf")}

    monkeypatch.setattr(record_module, "final_metrics", overflowing)
    record = execute(compose_cfg("norm=identity", *QUICK), tmp_path)
    assert record["status"] == "diverged" and "test_error" in record["metrics"]
    assert "test_loss" not in record["metrics"] and "train_loss" not in record["metrics"]
    assert record["error"] == "non-finite final metrics: test_loss, train_loss"
    assert record["diverged_at_step"] == record["steps"] > 0
    assert load_run(tmp_path)["status"] == "diverged"


class _FailsAtTheSecondStep(torch.nn.Module):
    """The identity, until its second training-mode forward raises (the checks before training run on
    copies and in eval mode)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        if self.calls > 1:
            raise RuntimeError("exploded at the second step")
        return x


def test_exception_during_training_is_recorded_as_failed(tmp_path):
    with registered_plugin("secondstepfails", _FailsAtTheSecondStep, batch_dependent=False) as name:
        cfg = compose_cfg(*QUICK)
        cfg.norm = {"name": name}
        record = execute(cfg, tmp_path)
    assert record["status"] == "failed"
    assert record["error"] == "RuntimeError: exploded at the second step"
    assert record["metrics"] == {}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["batch_size=0"], "batch_size=0: must be an integer >= 1"),
        (
            ["batch_size=1", "norm=batchnorm"],
            "batch_size=1: norm=batchnorm normalizes over the samples of a batch",
        ),
        (
            ["batch_size=4001", "data.val_size=0"],
            "batch_size=4001: must be between 1 and the training set size 4000",
        ),
        (  # the default validation split holds 400 of the 4,000 training samples out
            ["batch_size=3601"],
            r"^batch_size=3601: must be between 1 and the training set size 3600 \(what data\.val_size=0\.1 "
            r"leaves of 4000\)$",
        ),
        (
            ["data.val_size=0.999"],
            r"^batch_size=32: must be between 1 and the training set size 4 \(what data\.val_size=0\.999 leaves",
        ),
        (["norm=groupnorm", "norm.num_groups=48"], "num_channels=256 is not divisible by num_groups=48"),
        (["norm=instancenorm"], r"instancenorm cannot build task=mnist1d_mlp.*\(2, 256\)"),
        (["data.sampler=class_grouped", "data.classes_per_batch=3"], "batch_size=32 is not divisible"),
        (["runtime.threads=0"], "runtime.threads=0"),
        (["task.dataset=imagenet"], "unknown dataset 'imagenet'; available: mnist1d, digits"),
        (  # an index past the net's layers was ignored: a net without the downsampling asked for
            ["task=mnist1d_cnn", "task.model.downsample=[1,2]"],
            r"task\.model\.downsample=\[1, 2\]: 2 is not a stage of this net \(depth=3, residual=False: "
            r"layers 0\.\.1 after the stem\)",
        ),
        (
            ["task=mnist1d_resnet", "task.model.downsample=[-1]"],
            r"task\.model\.downsample=\[-1\]: -1 is not a stage of this net \(depth=9, residual=True: blocks 0\.\.3",
        ),
        (  # a setting its arch does not read: one model trained under several config hashes
            ["task=mnist1d_mlp", "task.model.kernel_size=5"],
            r"task\.model\.kernel_size=5: arch=mlp does not use it \(its settings: width, depth, init_scale\)",
        ),
        (
            ["task=mnist1d_cnn", "task.model.token_layout=sequence"],
            r"task\.model\.token_layout=sequence: arch=cnn1d does not use it \(its settings: width, depth, "
            r"residual, kernel_size, downsample, init_scale\)",
        ),
        (  # failed runs after the data loaded: a block's sum of two lengths; the RNN's error named the norm
            ["task=mnist1d_resnet", "task.model.kernel_size=4"],
            r"task\.model\.kernel_size=4: a residual net needs an odd kernel \(each conv pads kernel_size // 2",
        ),
        (
            ["task=seq_lstm", "task.model.cell=rnn"],
            r"^task\.model\.cell=rnn: not a recurrent cell; available: lstm, gru$",
        ),
        (  # the error named the norm ("norm=batchnorm cannot build task=seq_transformer: layout must be")
            ["task=seq_transformer", "task.model.token_layout=channel"],
            r"^task\.model\.token_layout=channel: must be one of token, sequence \(",
        ),
        (  # torch's AssertionError in MultiheadAttention, a failed run after the data loaded, before
            ["task=seq_transformer", "task.model.heads=3"],
            r"task\.model\.heads=3: must divide task\.model\.width=64 \(each head",
        ),
        (  # the run was all warm-up: its learning rate never reached optim.lr, its cosine never applied
            ["train.budget=steps", "train.steps=50", "optim.warmup_steps=50"],
            r"^optim\.warmup_steps=50: must be fewer than the run's 50 training steps \(batch_size=32, "
            r"train\.budget=steps\); the run would end before its warm-up does$",
        ),
        (  # an epoch budget: the steps depend on the batch size (3600 // 128 = 28 per epoch, 10 epochs)
            ["batch_size=128", "optim.warmup_steps=300"],
            r"^optim\.warmup_steps=300: must be fewer than the run's 280 training steps \(batch_size=128, "
            r"train\.budget=epochs\)",
        ),
        (  # trained as plain GroupNorm: the cell's norms follow no layer to standardize
            ["task=seq_lstm", "norm=ws_groupnorm"],
            r"^norm=ws_groupnorm cannot build task=seq_lstm: ws_groupnorm adapts the conv/linear layer before",
        ),
        (
            ["task.model.arch=vgg"],
            # every built-in arch (an installed task plugin may add its own)
            r"task\.model\.arch=vgg: no registered task builds it; archs: .*cifar_resnet, cnn1d, cnn2d, gan, "
            r".*mlp, .*resnet2d, rnn, .*torchvision, transformer",
        ),
    ],
)
def test_configuration_errors_stop_before_training(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        execute(compose_cfg(*overrides), tmp_path)
    assert not (tmp_path / RESULT_FILE).exists()


def test_help_says_the_study_group_is_for_the_study_script(tmp_path):
    proc = normbench_run("--help", cwd=tmp_path)
    assert (
        proc.returncode == 0
        and "study: cifar, sequence_gan, sequence_gan_v1, small_batch, small_batch_v1" in proc.stdout
    )
    assert "The study group is not selectable" in proc.stdout and "small_batch_study.sh" in proc.stdout


def test_cli_config_error_is_one_line_and_nonzero(tmp_path):
    proc = normbench_run("norm=groupnorm", "norm.num_groups=48", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "normbench-run: error: norm=groupnorm cannot build task=mnist1d_mlp: "
        "GroupNorm: num_channels=256 is not divisible by num_groups=48"
    ]
    assert list(tmp_path.iterdir()) == []  # refused after the data loaded: still no folder left


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("norm=foo", "norm=foo: unknown norm (available: batchnorm, batchrenorm, "),
        ("norm=grupnorm", "norm=grupnorm: unknown norm; did you mean groupnorm? (available: "),
        # the registry's alias, which build_norm takes: a config group's choices are file names
        ("norm=gn", "norm=gn: unknown norm; did you mean groupnorm? (build_norm takes gn for it; a config "),
        (
            "task=nope",
            "task=nope: unknown task (available: cifar100_resnet20, cifar10_resnet20, cifar10_vgg, ",
        ),
        ("optim=rmsprop", "optim=rmsprop: unknown optim (available: adamw, dcgan, sgd)"),
        ("optim.lr=abc", "optim.lr=abc: Value 'abc' of type 'str' could not be converted to Float"),
        ("batch_size=2.5", "batch_size=2.5: Value '2.5' of type 'float' could not be converted to Integer"),
        (
            "norm.scale=1",
            "norm.scale: unknown key for norm=batchnorm (allowed: name, eps, momentum, affine, "
            "track_running_stats, positions)",
        ),
        ("batch_sise=8", "batch_sise: unknown key; did you mean batch_size? (allowed: task, norm, optim, "),
        (
            "optim.lrr=0.1",
            "optim.lrr: unknown key for optim=sgd; did you mean optim.lr? (allowed: name, lr, ",
        ),
        # the keys of the norm the command line chose, not of the default one
        (
            "norm=layernorm norm.positions=2",
            "norm.positions: unknown key for norm=layernorm (allowed: name, eps, affine)",
        ),
        (
            "norm=groupnorm norm.groups=8",
            "norm.groups: unknown key for norm=groupnorm; did you mean norm.num_groups?",
        ),
        ("+foo=1", "foo: unknown key (allowed: batch_size, data, eval, "),
        ("train.budget=hours", "train.budget=hours: Invalid value 'hours', expected one of [epochs, steps]"),
        (
            "runtime.kernels=cuda",
            "runtime.kernels=cuda: Invalid value 'cuda', expected one of [auto, torch, fused, triton, compiled]",
        ),
        ("optim.lr=nan", "optim.lr=nan: must be a number in (0, 1e6]"),
        ("eval.precise_bn_samples=-3", "eval.precise_bn_samples=-3: must be an integer >= 2"),
        (
            "study=small_batch",
            "study=small_batch: conf/study/ holds study descriptions, not run settings; "
            "run a study with scripts/small_batch_study.sh --study conf/study/small_batch.yaml",
        ),
        ("+study=x", "+study=x: conf/study/ holds study descriptions"),
        # the sweep's folder is ${sweep.root}/${sweep.name}: "/default" at the filesystem's root, or the
        # root itself (MLflow refused the empty experiment name once the runs had trained)
        (
            "-m seed=0,1 sweep.root=",
            "sweep.root=: must be a folder (not empty) (sweep job seed=0 sweep.root=)",
        ),
        ("-m seed=0,1 sweep.name=", "sweep.name=: must be a name (not empty) (sweep job seed=0 sweep.name=)"),
    ],
)
def test_bad_overrides_are_refused_in_one_line(override, message, tmp_path, monkeypatch, capsys):
    """In this process, as the console script runs it (test_cli_config_error_is_one_line_and_nonzero
    runs one in its own)."""
    status, stderr = normbench_run_here(
        *override.split(), cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys
    )
    assert status == 2
    assert stderr.splitlines() == [stderr.strip()]  # exactly one line
    assert stderr.startswith(f"normbench-run: error: {message}")
    assert list(tmp_path.iterdir()) == []  # no empty outputs/DATE/TIME folder either


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-1", "optim.lr=-1.0: must be a number in (0, 1e6]"),
        ("optim.lr=inf", "optim.lr=inf: must be a number in (0, 1e6]"),
        ("optim.lr=1e308", "optim.lr=1e+308: must be a number in (0, 1e6]"),  # finite, past float32
        ("task.model.init_scale=1e39", "task.model.init_scale=1e+39: must be a number in [1e-30, 1e30]"),
        ("runtime.threads=100000", "runtime.threads=100000: must be an integer in [1, 256]"),
        ("optim.momentum=nan", "optim.momentum=nan: must be a number in [0, 1)"),
        ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1: must be a number in [0, 1e6]"),
        ("optim.base_batch_size=0", "optim.base_batch_size=0: must be an integer >= 1"),
        ("optim.warmup_steps=-1", "optim.warmup_steps=-1: must be an integer >= 0"),
        ("train.history_points=0", "train.history_points=0: must be an integer >= 1"),
        ("train.steps=0", "train.steps=0: must be an integer >= 1"),
        ("train.epochs=-2", "train.epochs=-2: must be an integer >= 1"),
        (
            "train.max_train_error_diverged=2",
            "train.max_train_error_diverged=2.0: must be a fraction in (0, 1]",
        ),
        ("eval.precise_bn_samples=0", "eval.precise_bn_samples=0: must be an integer >= 2"),
        ("eval.precise_bn_batch_size=-1", "eval.precise_bn_batch_size=-1: must be an integer >= 2, or 0"),
        ("eval.minibatch_samples=-1", "eval.minibatch_samples=-1: must be an integer >= 2"),
        # one sample has no batch statistics: each trained the whole run, then failed evaluating it
        ("eval.precise_bn_samples=1", "eval.precise_bn_samples=1: must be an integer >= 2"),
        ("eval.precise_bn_batch_size=1", "eval.precise_bn_batch_size=1: must be an integer >= 2, or 0"),
        ("eval.minibatch_samples=1", "eval.minibatch_samples=1: must be an integer >= 2"),
        ("data.classes_per_batch=0", "data.classes_per_batch=0: must be an integer >= 1"),
        ("seed=-1", "seed=-1: must be an integer in [0, 2^62)"),
        ("norm.eps=0", "norm.eps=0.0: must be a number in [1e-30, 1e6]"),
        ("norm.momentum=1.5", "norm.momentum=1.5: must be a number in [0, 1] or null"),
        ("task.model.width=0", "task.model.width=0: must be an integer >= 1"),
    ],
)
def test_bad_values_are_refused_before_any_work(override, message, tmp_path):
    """The same rules the CLI applies (see the one-line tests above), checked in process."""
    with pytest.raises(ConfigError) as exc:
        execute(compose_cfg(override), tmp_path)
    assert str(exc.value).startswith(message)  # some rules add what a sentinel means
    assert list(tmp_path.iterdir()) == []


def test_console_script_from_another_directory_writes_record(tmp_path):
    exe = shutil.which("normbench-run", path=str(Path(sys.executable).parent))  # this environment's script
    assert exe, f"normbench-run console script not installed next to {sys.executable}"
    proc = subprocess.run(
        [exe, "task=mnist1d_mlp", "norm=groupnorm", "batch_size=16", "seed=0", *QUICK, "hydra.run.dir=out"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    record = load_run(tmp_path / "out")
    assert record["status"] == "completed" and record["config"]["norm"]["name"] == "groupnorm"
    assert "step 4/4" in (tmp_path / "out" / "normbench.log").read_text()


def test_load_run_rejects_partial_and_foreign_files(tmp_path):
    (tmp_path / "a.json").write_text('{"schema_version": 1, "status": "compl')
    with pytest.raises(InvalidRecord, match="cannot read"):
        load_run(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"schema_version": 1, "status": "completed"}))
    with pytest.raises(InvalidRecord, match="lacks config_hash"):
        load_run(tmp_path / "b.json")
    good = {
        "schema_version": 99,
        "status": "completed",
        "config_hash": "x",
        "choices": {},
        "config": {},
        "metrics": {},
    }
    (tmp_path / "c.json").write_text(json.dumps(good))
    with pytest.raises(InvalidRecord, match="schema_version 99"):
        load_run(tmp_path / "c.json")
    (tmp_path / "d.json").write_text(json.dumps({**good, "schema_version": 1, "status": "done"}))
    with pytest.raises(InvalidRecord, match="status 'done'"):
        load_run(tmp_path / "d.json")


def test_user_config_folder_adds_a_task(tmp_path):
    (tmp_path / "myconf" / "task").mkdir(parents=True)
    (tmp_path / "myconf" / "task" / "tiny_mlp.yaml").write_text(
        "name: tiny_mlp\ndataset: mnist1d\nmodel:\n  arch: mlp\n  width: 16\n  depth: 1\nepochs: 1\nsteps: 3\n"
    )
    proc = normbench_run(
        f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
        "task=tiny_mlp",
        *QUICK,
        "hydra.run.dir=out",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    record = load_run(tmp_path / "out")
    assert record["config"]["task"]["name"] == "tiny_mlp" and record["config"]["task"]["model"]["width"] == 16


def test_regular_install_ships_the_configs(tmp_path):
    """``pip install .`` (not editable): the configs travel inside the package and the app finds them."""
    from helpers import ROOT

    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr
    assert (site / "normbench" / "conf" / "config.yaml").is_file()
    env = {"PYTHONPATH": str(site), "PATH": os.environ["PATH"]}
    proc = subprocess.run(
        [sys.executable, "-c", "import normbench.cli as c; print(c.CONF_DIR)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(site / "normbench" / "conf")
    proc = normbench_run("norm=layernorm", *QUICK, "hydra.run.dir=out", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert load_run(tmp_path / "out")["status"] == "completed"


def test_training_plan_of_both_budgets():
    from normbench.train import training_plan

    epochs = training_plan(compose_cfg("batch_size=16", "train.epochs=3", "optim.lr=0.05"), n_train=100)
    assert (epochs.steps_per_epoch, epochs.total, epochs.eval_every) == (6, 18, 6)
    assert epochs.lr == pytest.approx(0.05 * 16 / 32)  # linear scaling from base batch 32
    steps = training_plan(
        compose_cfg("batch_size=16", "train.budget=steps", "train.steps=25", "train.history_points=4"), 100
    )
    assert (steps.total, steps.eval_every) == (25, 7)  # ceil(25 / 4)


def test_every_path_writes_the_typed_records_fields_in_order(tmp_path):
    """The single run's record is RunRecord.to_json(): its keys are the dataclass's fields in order,
    the optional ones present only once set (a completed run has no error and no diverged step)."""
    from dataclasses import fields

    from normbench.experiment.record import RunRecord

    order = [f.name for f in fields(RunRecord)]
    record = execute(compose_cfg("norm=batchnorm", *QUICK), tmp_path)
    assert list(record) == [k for k in order if k in record]
    assert load_run(tmp_path) == record
    assert {"error", "diverged_at_step", "fd_classifier"}.isdisjoint(record)
    assert {"planned_steps", "steps_per_epoch", "lr", "time_per_step_s", "layers", "finished_at"} <= set(
        record
    )
    assert RunRecord(config_hash="h", config={}, main_metric={}, env={}).to_json() == {
        "schema_version": 2, "status": "failed", "config_hash": "h", "config": {}, "metrics": {},
        "main_metric": {}, "history": [], "steps": 0, "env": {},
    }  # fmt: skip
