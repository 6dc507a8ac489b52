"""The task registry: every run resolves to one registered task, which owns its settings; a task added
from outside normbench (the example package's autoencoder, loaded here from its source) trains alone
and in populations through the same loops, its errors computed by its own formula."""

from __future__ import annotations

import importlib
import math
import subprocess
import sys

import pytest
import torch
from helpers import QUICK, ROOT, compose_cfg
from torch import nn

from normbench.config import ConfigError
from normbench.experiment.build import load_model, prepare_data
from normbench.experiment.run import execute
from normbench.population.grouping import why_not_population
from normbench.population.train import train_population
from normbench.tasks.classification import LogitsTask
from normbench.tasks.registry import (
    REGISTRY,
    Task,
    available_tasks,
    get_task,
    register_task,
    shared_metrics,
    task_for,
)

EXAMPLE_SRC = ROOT / "examples" / "normbench-task-example" / "src"
AUTOENCODER = ("task.name=mnist1d_autoencoder", "task.model.arch=autoencoder", "+task.options.code=4")


@pytest.fixture
def isolated_tasks():
    """The registry's tasks as they are, restored after the test."""
    saved = dict(REGISTRY.tasks())
    yield REGISTRY
    REGISTRY._tasks.clear()
    REGISTRY._tasks.update(saved)


@pytest.fixture
def example_task(isolated_tasks, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    isolated_tasks._tasks.pop("autoencoder", None)  # registered already where the example is installed
    sys.modules.pop("normbench_task_example.autoencoder", None)
    module = importlib.import_module("normbench_task_example.autoencoder")
    yield module
    sys.modules.pop("normbench_task_example.autoencoder", None)


@pytest.mark.parametrize(
    "preset, kind",
    [("mnist1d_mlp", "classification"), ("cifar10_resnet20", "classification"), ("seq_transformer", "classification"),
     ("torchvision", "classification"), ("seq_lstm", "sequence"), ("digits_lstm", "sequence"),
     ("gan_digits", "gan"), ("gan_mnist1d", "gan")],
)  # fmt: skip
def test_every_preset_resolves_to_its_task(preset, kind):
    assert task_for(compose_cfg(f"task={preset}")).name == kind
    assert {"classification", "sequence", "gan"} <= set(available_tasks())


def test_an_arch_no_task_builds_is_refused_naming_it(tmp_path):
    with pytest.raises(
        ConfigError, match=r"task\.model\.arch=mystery: no registered task builds it; archs: .*mlp"
    ):
        execute(compose_cfg("task.model.arch=mystery", *QUICK), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("task=mnist1d_mlp", "task.model.cell=gru"), r"task\.model\.cell=gru: not a setting of task kind 'classification' \(arch=mlp\)"),
        (("task=seq_lstm", "task.model.residual=true"), r"task\.model\.residual=True: not a setting of task kind 'sequence'"),
        (("task=gan_digits", "task.model.heads=2"), r"task\.model\.heads=2: not a setting of task kind 'gan'"),
        (("task=gan_digits", "task.model.depth=5"), r"task\.model\.depth=5: arch=gan does not use it \(its settings: width, latent, g_norm, d_norm, d_batches, init_scale\)"),
        (("task=gan_digits", "task.model.kernel_size=5"), r"task\.model\.kernel_size=5: not a setting of task kind 'gan' \(arch=gan\); its settings: width, latent, g_norm, d_norm, d_batches, init_scale$"),
        (("task=seq_lstm", "task.model.depth=2"), r"task\.model\.depth=2: arch=rnn does not use it \(its settings: width, cell, shared_stats, embed, norm_gain, init_scale\)"),
        (("task=mnist1d_mlp", "+task.options.code=4"), r"task\.options\.code: task kind 'classification' takes its settings in task\.model"),
    ],
)  # fmt: skip
def test_a_setting_of_another_task_is_refused_before_training(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        execute(compose_cfg(*overrides, *QUICK), tmp_path / "run")


@pytest.mark.parametrize(
    "overrides",
    [
        ("task=mnist1d_mlp", "norm=identity"),  # no PreciseBN or mini-batch evaluations
        ("task=mnist1d_cnn", "norm=batchnorm", "data.val_size=0"),
        ("task=mnist1d_mlp", "norm=layernorm", "data.val_size=0", "data.mnist1d_val_samples=200"),
        ("task=digits_lstm", "norm=layernorm"),
        ("task=gan_digits", "optim=dcgan", "norm=identity", "batch_size=16"),
        (*AUTOENCODER, "norm=identity"),
    ],
)
def test_the_metrics_a_task_names_are_what_its_runs_record(example_task, tmp_path, overrides):
    """``Task.metric_names`` (what ``task.metric`` may name) against a trained run's record."""
    cfg = compose_cfg(*overrides, *QUICK)
    names = task_for(cfg).metric_names(cfg)
    record = execute(cfg, tmp_path / "run")
    assert record["status"] == "completed", record.get("error")
    assert names and names <= set(record["metrics"]), names - set(record["metrics"])
    assert all(isinstance(record["metrics"][n], float) for n in names)  # a number a report can tabulate
    assert ("val_error" in names) == ("val_error" in record["metrics"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("task.metric=accuracy",), r"^task\.metric=accuracy: not a metric every run of task=mnist1d_mlp records \(they record: generalization_gap, test_error, test_loss, train_error, train_loss, val_error, val_loss\)$"),
        (("task.metric=val_error", "data.val_size=0"), r"^task\.metric=val_error: not a metric every run of task=mnist1d_mlp records \(they record: generalization_gap, test_error, test_loss, train_error, train_loss\)$"),
        (("task=gan_digits", "optim=dcgan", "task.metric=fdd"), r"^task\.metric=fdd: not a metric every run of task=gan_digits records \(they record: class_share_max, .*fd, fd_classifier_test_error, fd_real, g_loss\)$"),
        ((*AUTOENCODER, "task.metric=snr_db"), r"^task\.metric=snr_db: .* records \(they record: .*test_loss, test_snr_db, train_error"),
    ],
)  # fmt: skip
def test_a_main_metric_no_run_records_is_refused_before_training(example_task, tmp_path, overrides, message):
    """A sweep under it trained every run, and the report then left every record out."""
    with pytest.raises(ConfigError, match=message):
        execute(compose_cfg(*overrides, *QUICK), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_plugin_tasks_unknown_or_mistyped_option_is_refused(example_task, tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"task\.options\.width: not a setting of task kind 'autoencoder'; its settings: code",
    ):
        execute(compose_cfg("task.model.arch=autoencoder", "+task.options.width=4", *QUICK), tmp_path / "a")
    with pytest.raises(
        ConfigError,
        match=r"task\.options\.code=many: Value 'many' of type 'str' could not be converted to Integer",
    ):
        execute(compose_cfg("task.model.arch=autoencoder", "+task.options.code=many", *QUICK), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"^task\.options\.code=0: must be an integer >= 1$"):
        execute(compose_cfg("task.model.arch=autoencoder", "+task.options.code=0", *QUICK), tmp_path / "c")
    assert not (tmp_path / "c").exists()


class Complete(LogitsTask):
    """A task class with every method registration asks for (none is called here)."""

    archs = ("another",)

    def build_model(self, cfg, data):
        raise AssertionError("not built in these tests")


def test_a_task_with_its_own_data_or_metrics_names_its_metrics_or_goes_unchecked():
    """Its own load_data may bring a validation set, its own metrics names only it knows."""

    class OwnData(Complete):
        def load_data(self, cfg):
            raise AssertionError("not loaded here")

    class OwnMetrics(Complete):
        def metrics(self, model, data):
            return {"mine": 0.0}

    cfg = compose_cfg("data.val_size=0", *QUICK)
    assert Complete().metric_names(cfg) == shared_metrics(cfg) == {
        "test_error", "test_loss", "train_error", "train_loss", "generalization_gap"
    }  # fmt: skip
    assert OwnData().metric_names(cfg) is None and OwnMetrics().metric_names(cfg) is None


def test_registration_refuses_taken_names_and_archs_and_bad_names(isolated_tasks):
    class Another(Complete):
        pass

    with pytest.raises(ValueError, match="task kind 'classification' is already registered"):
        register_task("classification")(Another)
    with pytest.raises(ValueError, match="arch 'mlp' is already built by task kind 'classification'"):
        register_task("mine", override=True)(type("Mine", (Complete,), {"archs": ("mlp",)}))
    with pytest.raises(ValueError, match="task kind 'My-Task' must be lower case"):
        register_task("My-Task")(Another)
    with pytest.raises(TypeError, match="registers a Task subclass"):
        register_task("plain")(nn.Module)
    with pytest.raises(KeyError, match=r"unknown task kind 'clasification'\. Did you mean 'classification'"):
        get_task("clasification")
    with pytest.raises(ValueError, match="task kind 3 must be lower case"):
        register_task(3)
    plain = type("Plain", (Task,), {"archs": ("mine",), "build_model": Complete.build_model})
    with pytest.raises(TypeError, match=r"Plain.sample_losses is not implemented"):
        register_task("mine")(plain)  # a Task without the classification's losses and errors
    elsewhere = type("Elsewhere", (Complete,), {"archs": ("elsewhere",)})
    assert register_task("elsewhere", elsewhere) is elsewhere  # a class defined elsewhere, by a call
    assert type(get_task("elsewhere")) is elsewhere


# A fresh interpreter: the built-in tasks load on first use, so this test's process has them already.
BEFORE_THE_BUILT_INS_LOAD = """
import pytest
from normbench import Task, available_tasks, register_task
from normbench.tasks.registry import REGISTRY

class Mine(Task):
    archs = ("mlp",)
    def build_model(self, cfg, data): ...
    def sample_losses(self, outputs, inputs, labels): ...
    def sample_errors(self, outputs, inputs, labels): ...

assert not REGISTRY._loaded
with pytest.raises(ValueError, match="arch 'mlp' is already built by task kind 'classification'"):
    register_task("mine")(Mine)
with pytest.raises(ValueError, match="task kind 'sequence' is already registered"):
    register_task("sequence")(type("Seq", (Mine,), {"archs": ("seq",)}))
assert available_tasks() == ["classification", "gan", "sequence"], available_tasks()
"""


def test_built_in_names_and_archs_are_taken_before_the_built_ins_load():
    """A user's task claiming a built-in's arch got in while the built-ins were not loaded yet; loading
    them then failed on it, and the registry listed the user's task alone."""
    done = subprocess.run(
        [sys.executable, "-c", BEFORE_THE_BUILT_INS_LOAD], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    "attributes, message",
    [
        ({"archs": "mine"}, "Bad.archs must be a non-empty tuple of the task.model.arch names it builds, got 'mine'"),
        ({"archs": ()}, "Bad.archs must be a non-empty tuple of the task.model.arch names it builds, got \\(\\)"),
        ({"archs": ("mine", 3)}, r"Bad.archs must be .*, got \('mine', 3\)"),
        ({"options_type": dict}, "Bad.options_type must be a dataclass or None, got <class 'dict'>"),
        ({"own_training": "yes"}, "Bad.own_training must be True or False, got 'yes'"),
        ({"error_is_fraction": 0}, "Bad.error_is_fraction must be True or False, got 0"),
        ({"build_model": Task.build_model}, r"Bad.build_model is not implemented \(a task without own_training implements build_model, sample_losses, sample_errors\)"),
        ({"own_training": True}, r"Bad.train is not implemented \(a task with own_training implements build_model, train\)"),
        ({"own_training": True, "population_training": True, "train": lambda *a: None}, r"Bad.train_population is not implemented"),
    ],
)  # fmt: skip
def test_registration_refuses_a_class_missing_what_its_training_calls(isolated_tasks, attributes, message):
    bad = type("Bad", (Complete,), {"archs": ("mine",), **attributes})
    with pytest.raises(TypeError, match=rf"^register_task\('mine'\): {message}"):
        register_task("mine")(bad)
    assert "mine" not in available_tasks()


def test_a_task_with_its_own_loop_and_no_population_form_trains_alone(isolated_tasks):
    class OwnLoop(Complete):
        archs = ("ownloop",)
        own_training = True

        def train(self, *args):
            raise AssertionError("not trained here")

    register_task("ownloop")(OwnLoop)
    cfg = compose_cfg("task.model.arch=ownloop")
    assert why_not_population(cfg) == (
        "task=mnist1d_mlp: the ownloop task trains with its own loop, one run at a time"
    )
    OwnLoop.population_training = True  # and with one (it then implements train_population)
    assert why_not_population(cfg) is None


def _mse(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((model(x) - x.flatten(1)) ** 2).mean())


def test_the_example_task_trains_and_its_error_is_its_own_formula(example_task, tmp_path):
    cfg = compose_cfg(*AUTOENCODER, "norm=batchnorm", "train.save_model=true", *QUICK)
    assert task_for(cfg).name == "autoencoder"
    record = execute(cfg, tmp_path / "run")
    assert record["status"] == "completed", record.get("error")
    model = load_model(tmp_path / "run")  # rebuilt through the task registry from the record
    assert model[4].out_features == 4  # task.options.code: Flatten, Linear, norm, ReLU, the code
    data = prepare_data(cfg)
    # the record's errors are the mean squared reconstruction errors, in eval mode (running statistics)
    assert record["metrics"]["test_error"] == pytest.approx(_mse(model, data.x_test), rel=1e-5)
    assert record["metrics"]["val_error"] == pytest.approx(_mse(model, data.x_val), rel=1e-5)
    assert record["metrics"]["test_loss"] == pytest.approx(record["metrics"]["test_error"], rel=1e-12)
    assert 0 < record["metrics"]["test_error_precise_bn"] < 10  # BatchNorm's extra evaluations ran
    signal = float(data.x_test.flatten(1).pow(2).mean())  # the task's own metric, by its formula
    assert record["metrics"]["test_snr_db"] == pytest.approx(
        10 * math.log10(signal / _mse(model, data.x_test)), rel=1e-4
    )
    assert record["history"][-1]["test_error"] == pytest.approx(record["metrics"]["test_error"], rel=1e-5)
    # "diverged" is a training error at chance, a fraction: squared errors have no such threshold
    assert "diverged" not in record["metrics"]


def test_the_example_task_trains_in_a_population_to_its_separate_runs(example_task, tmp_path):
    cfgs = [compose_cfg(*AUTOENCODER, "norm=groupnorm", "batch_size=8", f"seed={s}", *QUICK) for s in (0, 1)]
    together = train_population(cfgs)
    assert {r["env"]["population_form"] for r in together} == {"wide"}
    for i, (cfg, pop) in enumerate(zip(cfgs, together, strict=True)):
        alone = execute(cfg, tmp_path / str(i))
        assert pop["status"] == alone["status"] == "completed"
        for key in ("test_error", "train_error", "val_error", "test_loss", "test_snr_db"):
            assert pop["metrics"][key] == pytest.approx(alone["metrics"][key], rel=1e-5), key
    assert together[0]["metrics"]["test_error"] != together[1]["metrics"]["test_error"]  # own seeds
