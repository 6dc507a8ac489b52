"""Population training gives each member the record its separate run gives.

Tolerance (CPU, float32, 60 steps): every final metric and every history point within 1e-5 relative
(1e-5 absolute, for metrics that are themselves small differences; an error rate within one sample of
its split, :func:`one_sample`) of the separate run's, and the same statuses, steps and divergence steps. Exact
equality is impossible: vmap computes a member's matmuls and convolutions as batched kernels whose
sums run in another order, so values differ in the last bits from the first step, and training
amplifies that. Where training is chaotic it amplifies it without bound — BatchNorm at batch 2 turns
a 1e-14 perturbation into a 1e-3 loss difference within 15 steps even in float64 — so no
reimplementation can match such a run beyond its first steps; these tests use well-conditioned
settings (BatchNorm at batch >= 16; batch-independent norms at batch 2) over 60 steps in float32, and the
same computation in float64 to 1e-9, where rounding stays far below any amplification of it. At 60 steps
every setting here agrees to 2e-7 relative (the last bits); at 120 steps three of them drifted past 1e-5
on an AVX2 CPU (AMD EPYC), whose kernels sum in another order, though not on the CPU the tests were
first written on."""

from __future__ import annotations

import math
import re

import pytest
import torch
from helpers import compose_cfg

from normbench.config import ConfigError
from normbench.experiment.build import prepare_data, prepare_model, setup_runtime
from normbench.experiment.run import execute
from normbench.population.train import members_per_population, population_parts, train_population
from normbench.runtime import Runtime

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
RTOL, ATOL = 1e-5, 1e-5  # absolute for metrics that are differences (generalization gap, rel. L2)
STEPS = ("train.budget=steps", "train.steps=60", "train.history_points=3")
EVAL = ("eval.precise_bn_samples=1024", "eval.minibatch_samples=512")  # every evaluation, fewer samples
MEMBERS = [
    ("seed=0", "optim.lr=0.05"),
    ("seed=1", "optim.lr=0.1", "optim.momentum=0.5"),
    ("seed=2", "optim.lr=0.02", "optim.weight_decay=0"),
]


# conv nets at lower learning rates: at 0.05-0.1 their BatchNorm runs are chaotic enough that a 1e-7
# perturbation of the initial weights alone moves the loss by more than 1e-5 within 120 steps
LOW_LR = [
    ("seed=0", "optim.lr=0.02"),
    ("seed=1", "optim.lr=0.01", "optim.momentum=0.5"),
    ("seed=2", "optim.lr=0.005", "optim.weight_decay=0"),
]


def _close(a: float, b: float, flip: float = 0.0) -> bool:
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=max(ATOL, flip))


def one_sample(key: str, sizes: dict[str, int]) -> float:
    """How much one sample moves the error rate ``key`` (``train_error``, ``test_error``, ...) over the
    splits of ``sizes``; 0 for any other metric. An error rate is a step function of the weights: a
    sample whose top two logits nearly tie flips on a difference in the last bits (a recurrent net near
    chance, one of 3,600 training samples), while every loss stays within 1e-5."""
    if key == "generalization_gap":
        return one_sample("train_error", sizes) + one_sample("test_error", sizes)
    split = key.removesuffix("_error")
    return 1 / sizes[split] + 1e-12 if key.endswith("_error") and split in sizes else 0.0


def assert_same_record(
    pop: dict, sep: dict, population: int = 3, sizes: dict[str, int] | None = None
) -> None:
    """``pop`` (a member's record) is ``sep`` (its separate run's) to the module's tolerance; with
    ``sizes`` (the splits' sample counts), an error rate may differ by one sample (:func:`one_sample`)."""
    sizes = sizes or {}
    for key in (
        "status",
        "config_hash",
        "config",
        "steps",
        "diverged_at_step",
        "planned_steps",
        "lr",
        "main_metric",
    ):
        assert pop.get(key) == sep.get(key), key
    assert pop["metrics"].keys() == sep["metrics"].keys()
    for key, value in sep["metrics"].items():
        if isinstance(value, bool):
            assert pop["metrics"][key] == value, key
        else:
            assert _close(pop["metrics"][key], value, one_sample(key, sizes)), (
                key,
                pop["metrics"][key],
                value,
            )
    assert [p["step"] for p in pop["history"]] == [p["step"] for p in sep["history"]]
    for a, b in zip(pop["history"], sep["history"], strict=True):
        assert a.keys() == b.keys()
        assert all(_close(a[k], b[k], one_sample(k, sizes)) for k in b), (a, b)
    assert pop["layers"].keys() == sep["layers"].keys()
    assert pop["env"]["population"] == population and "population" not in sep["env"]


def _compare(tmp_path, *common: str, members=MEMBERS, steps=STEPS, form="auto") -> list[dict]:
    cfgs = [compose_cfg(*common, *steps, *EVAL, *m) for m in members]
    records = train_population(cfgs, form=form)
    data = prepare_data(cfgs[0])
    sizes = {"train": len(data.x_train), "test": len(data.x_test)}
    if data.x_val is not None:
        sizes["val"] = len(data.x_val)
    for i, (cfg, record) in enumerate(zip(cfgs, records, strict=True)):
        assert_same_record(record, execute(cfg, tmp_path / str(i)), sizes=sizes)
    return records


@pytest.mark.parametrize(
    "task, norm, batch, members, model",
    [
        (
            "mnist1d_mlp",
            "batchnorm",
            32,
            MEMBERS,
            (),
        ),  # running statistics, PreciseBN, mini-batch evaluations
        ("mnist1d_mlp", "layernorm", 2, MEMBERS, ()),
        ("mnist1d_mlp", "groupnorm", 4, MEMBERS, ()),
        # cnn1d; a plugin's extra_metrics; running statistics
        ("mnist1d_cnn", "switchnorm", 16, LOW_LR, ("task.model.width=16",)),
        # weight standardization: the wide convs carry the members' parametrization
        ("mnist1d_cnn", "ws_groupnorm", 8, LOW_LR, ("task.model.width=16",)),
        ("digits_cnn", "groupnorm", 8, LOW_LR, ()),  # resnet2d: residual blocks
        # transformer, norms on (N, L, C) tokens
        ("seq_transformer", "rmsnorm", 8, MEMBERS, ("task.model.width=32", "task.model.depth=1")),
        # the recurrent net: per-step norms sharing one γ/β (tied parameters), per-step running
        # statistics, the embedded scalar input
        ("seq_lstm", "layernorm", 8, MEMBERS, ("task.model.width=16",)),
        ("digits_lstm", "batchnorm", 4, MEMBERS, ("task.model.width=16",)),
        ("digits_lstm", "layernorm", 1, MEMBERS, ("task.model.width=16",)),  # online learners
    ],
)
def test_members_get_the_records_of_their_separate_runs(tmp_path, task, norm, batch, members, model):
    records = _compare(
        tmp_path, f"task={task}", f"norm={norm}", f"batch_size={batch}", *model, members=members
    )
    assert all(r["status"] == "completed" for r in records)
    # one model K times wider where every layer has a wide form; vmap for the rest
    wide = task != "seq_transformer"
    assert {r["env"]["population_form"] for r in records} == {"wide" if wide else "vmap"}


@pytest.mark.parametrize("form", ["wide", "vmap"])
def test_either_form_gives_the_separate_runs_records(tmp_path, form):
    records = _compare(
        tmp_path, "task=mnist1d_cnn", "norm=batchnorm", "batch_size=16", members=LOW_LR, form=form
    )
    assert {r["env"]["population_form"] for r in records} == {form}


def test_insisting_on_the_wide_form_for_a_model_without_one_is_a_configuration_error():
    """It was a failed record for every member (a rerun tried it again), not the setting's error."""
    transformer = ("task=seq_transformer", "task.model.width=32", "task.model.depth=1", "batch_size=8")
    cfgs = [compose_cfg("norm=layernorm", *transformer, *STEPS, *m) for m in MEMBERS]
    with pytest.raises(ConfigError) as info:
        train_population(cfgs, form="wide")
    assert str(info.value) == (
        "hydra.launcher.form=wide: the model: SequenceTransformer has no wide form; form=auto trains it under vmap"
    )


def test_adamw_members_too(tmp_path):
    members = [
        ("seed=0", "optim.lr=0.001"),
        ("seed=1", "optim.lr=0.002", "optim.momentum=0.8"),
        ("seed=2", "optim.lr=0.0005", "optim.weight_decay=0"),
    ]
    _compare(tmp_path, "norm=layernorm", "optim=adamw", "batch_size=8", members=members)


@pytest.mark.parametrize(
    "task, model, steps",
    [("cifar10_resnet20", "task.model.depth=8", 24), ("cifar10_vgg", "task.model.width=16", 2)],
)
def test_cifar_members_with_augmentation(tmp_path, task, model, steps):  # cifar_resnet and cnn2d
    from normbench.tasks.cifar import write_fixture

    write_fixture(tmp_path / "data", "cifar10", 64, 32)
    _compare(
        tmp_path,
        f"task={task}",
        f"data.root={tmp_path / 'data'}",
        model,
        "norm=groupnorm",
        "batch_size=8",
        members=LOW_LR,
        # 56 training images: the fit is chaotic (a 1e-7 weight perturbation moves the ResNet's loss by
        # 1e-4 within 120 steps; a 1e-6 one moves the VGG's validation loss by 1.2e-5 within 4 steps on
        # an AMD EPYC, to the value its population member reaches), so this checks the architecture and
        # each member's own augmentation stream over the first steps
        steps=("train.budget=steps", f"train.steps={steps}", "train.history_points=2"),
    )


def test_a_diverging_member_is_frozen_and_recorded_while_the_others_go_on(tmp_path):
    members = [("seed=0", "optim.lr=0.05"), ("seed=1", "optim.lr=30000"), ("seed=2", "optim.lr=0.1")]
    records = _compare(tmp_path, "norm=identity", "batch_size=16", members=members)
    assert [r["status"] for r in records] == ["completed", "diverged", "completed"]
    assert 0 <= records[1]["diverged_at_step"] < 60
    assert len(records[1]["history"]) < len(records[0]["history"]) == 3


def test_a_population_whose_every_member_diverged_stops_with_the_records_of_separate_runs(
    tmp_path, monkeypatch
):
    from normbench.population.optim import PopulationOptimizer

    steps = []
    step = PopulationOptimizer.step
    monkeypatch.setattr(
        PopulationOptimizer, "step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k)
    )
    members = [("seed=0", "optim.lr=30000"), ("seed=1", "optim.lr=10000"), ("seed=2", "optim.lr=3000")]
    records = _compare(tmp_path, "norm=identity", "batch_size=16", members=members)
    assert [r["status"] for r in records] == ["diverged"] * 3
    last = max(r["diverged_at_step"] for r in records)
    # the population stepped until its last member diverged, not the 60 steps planned
    assert len(steps) == last + 1 < 60


def test_an_exception_in_training_fails_every_member_with_its_message(monkeypatch):
    import normbench.population.train as population

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(population, "fit_population", broken)
    cfgs = [compose_cfg(*STEPS, *m) for m in MEMBERS]
    records = train_population(cfgs)
    assert [(r["status"], r["error"]) for r in records] == [("failed", "RuntimeError: out of memory")] * 3
    assert all(r["config_hash"] != records[0]["config_hash"] for r in records[1:])


def test_members_start_from_their_own_initialization_and_data_order():
    from normbench.experiment.build import prepare_data, prepare_model
    from normbench.population.train import Population

    cfgs = [compose_cfg("seed=0"), compose_cfg("seed=1"), compose_cfg("seed=0", "optim.lr=0.2")]
    data = prepare_data(cfgs[0])
    pop = Population.stack([prepare_model(c, data) for c in cfgs])
    w = pop.params["net.1.weight"]
    assert not torch.equal(w[0], w[1]) and torch.equal(w[0], w[2])
    assert torch.equal(w[0], prepare_model(cfgs[0], data).net[1].weight)


@pytest.mark.parametrize("sampler", ["data.sampler=iid", "data.sampler=class_grouped"])
def test_each_member_draws_its_separate_runs_batches_across_epochs(sampler):
    """The population's (K, B) batches per step are, row by row, each member's own sampler stream as
    its separate run draws it (seeded by its seed), into the next epoch: drawn a whole epoch at a time
    for i.i.d. sampling, step by step for the others."""
    import itertools

    from normbench.experiment.build import batch_iterator
    from normbench.population.train import member_batches

    cfgs = [compose_cfg("task=digits_cnn", "batch_size=64", sampler, f"seed={s}") for s in (0, 1, 0, 7)]
    data = prepare_data(cfgs[0])
    steps = len(data.x_train) // 64 + 3  # into the second epoch
    drawn = list(itertools.islice(member_batches(cfgs, data, torch.device("cpu")), steps))
    for k, cfg in enumerate(cfgs):
        own = batch_iterator(cfg, data, torch.Generator().manual_seed(cfg.seed))
        assert all(torch.equal(step[k], next(own)) for step in drawn)
    assert torch.equal(drawn[0][0], drawn[0][2]) and not torch.equal(drawn[0][0], drawn[0][1])
    assert drawn[0].shape == (4, 64)


@pytest.mark.parametrize(
    "task, norm, batch",
    [("mnist1d_mlp", "batchnorm", 32), ("digits_lstm", "batchnorm", 8)],  # the LSTM: per-step statistics
)
def test_in_float64_every_member_follows_its_separate_run_to_1e_9(task, norm, batch):
    """Where float32 rounding is amplified past 1e-5 (these settings at 100 steps and the higher learning
    rates), float64 shows that what remains is rounding, not a different computation: 1e-16 differences
    stay below 1e-9 after 100 steps."""
    import dataclasses

    from normbench.experiment.build import prepare_data, prepare_model
    from normbench.experiment.run import fit_run
    from normbench.population.train import fit_population
    from normbench.runtime import Runtime

    steps = ("train.budget=steps", "train.steps=100", "train.history_points=4")
    cfgs = [compose_cfg(f"task={task}", f"norm={norm}", f"batch_size={batch}", *steps, *m) for m in MEMBERS]
    data32 = prepare_data(cfgs[0])
    data = dataclasses.replace(
        data32, **{f: getattr(data32, f).double() for f in ("x_train", "x_test", "x_val")}
    )
    models = [prepare_model(cfg, data32).double() for cfg in cfgs]
    results = fit_population(cfgs, models, data, Runtime())
    for cfg, model, result in zip(cfgs, models, results, strict=True):
        alone = prepare_model(cfg, data32).double()
        ref = fit_run(cfg, alone, data)
        assert [p["test_error"] for p in result.history] == [p["test_error"] for p in ref.history]
        for ours, theirs in zip(model.state_dict().values(), alone.state_dict().values(), strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_a_diverged_member_keeps_the_parameters_and_running_statistics_it_had_when_it_stopped():
    """A member whose first loss is already non-finite (initial weights scaled by 1e30, so BatchNorm's
    variance overflows) keeps its initial parameters exactly and the buffers of that one forward, as
    its separate run stops there; the healthy member trains on."""
    from normbench.experiment.build import prepare_data
    from normbench.population.train import fit_population

    common = ("train.budget=steps", "train.history_points=2", "batch_size=16")

    def train(steps: int):
        cfgs = [
            compose_cfg(*common, f"train.steps={steps}", "seed=0"),
            compose_cfg(*common, f"train.steps={steps}", "seed=1", "task.model.init_scale=1e30"),
        ]
        data = prepare_data(cfgs[0])
        models = [prepare_model(cfg, data) for cfg in cfgs]
        initial = {k: v.clone() for k, v in models[1].state_dict().items()}
        return fit_population(cfgs, models, data, Runtime()), models, initial

    (healthy, diverged), models, initial = train(40)
    assert healthy.status == "completed" and (diverged.status, diverged.steps) == ("diverged", 0)
    (_, stopped), short, _ = train(1)
    assert (stopped.status, stopped.steps) == ("diverged", 0)
    for name, value in models[1].state_dict().items():
        if "running" in name or "num_batches" in name:  # the buffers of its one training forward
            torch.testing.assert_close(value, short[1].state_dict()[name], rtol=0, atol=0, equal_nan=True)
        else:  # never stepped
            assert torch.equal(value, initial[name]), name
    assert int(models[1].net[2].num_batches_tracked) == 1
    assert not torch.equal(models[0].net[1].weight, short[0].net[1].weight)  # the healthy one trained on


@pytest.mark.parametrize(
    "overrides, setting, captured, refusal",
    [
        ((), None, True, None),
        (("optim=adamw",), None, True, None),  # its step count and bias corrections live on the device
        (("task=cifar10_resnet20",), True, None, "task.augment=crop_flip: augmentation draws from host"),
        ((), False, False, None),
    ],
)
def test_which_steps_are_captured_as_cuda_graphs(overrides, setting, captured, refusal):
    """The decision, made on a CUDA device object (no GPU needed to make it)."""
    from normbench.config import ConfigError
    from normbench.population.train import captures

    cfg = compose_cfg(*overrides)
    runtime = Runtime(torch.device("cuda"), cuda_graph=setting)
    if refusal is None:
        assert captures(runtime, cfg) is captured
    else:
        with pytest.raises(ConfigError, match=f"runtime.cuda_graph=true: {re.escape(refusal)}"):
            captures(runtime, cfg)
    assert captures(Runtime(), cfg) is False  # never on the CPU


@pytest.mark.parametrize(
    "overrides, setting, processes, refusal",
    [
        ((), None, 1, None),
        (
            ("runtime.channels_last=true",),
            True,
            1,
            "runtime.channels_last=true: not supported inside populations",
        ),
        (("runtime.precision=fp16",), True, 1, "runtime.precision=fp16: one gradient scaler"),
        (
            ("task=gan_digits",),
            True,
            1,
            "task=gan_digits trains with a loop of its own, which is not captured",
        ),
        (("task=cifar10_resnet20",), True, 1, "task.augment=crop_flip: augmentation draws from host"),
        ((), True, 2, "torchrun's 2 processes: each would replay a step without the others"),
    ],
)
def test_which_runs_alone_train_as_a_population_of_one_with_their_step_captured(
    overrides, setting, processes, refusal
):
    """On one CUDA device (decided on a device object: no GPU needed), a run alone whose step a
    population can capture trains so; where it cannot, it trains in its own loop unless
    ``runtime.cuda_graph=true`` insists, which is refused naming why."""
    from normbench.config import ConfigError
    from normbench.population.train import trains_captured_alone

    cfg = compose_cfg(*overrides)
    if refusal is None:
        assert trains_captured_alone(cfg, Runtime(torch.device("cuda"), cuda_graph=setting), processes)
    else:
        with pytest.raises(ConfigError, match=f"runtime.cuda_graph=true: {re.escape(refusal)}"):
            trains_captured_alone(cfg, Runtime(torch.device("cuda"), cuda_graph=True), processes)
        assert not trains_captured_alone(cfg, Runtime(torch.device("cuda")), processes)  # null: its own loop
    assert not trains_captured_alone(cfg, Runtime(torch.device("cuda"), cuda_graph=False), processes)
    assert not trains_captured_alone(cfg, Runtime(), processes)  # never on the CPU


def test_cuda_graph_true_for_a_population_of_a_task_with_its_own_loop_is_refused_before_any_work(
    monkeypatch,
):
    """The GANs' populations train in their own loop, which is not captured: ``runtime.cuda_graph=true``
    is refused naming why (faked CUDA runtime: the refusal comes before any data is made)."""
    import normbench.population.train as population
    from normbench.config import ConfigError

    monkeypatch.setattr(
        population, "setup_runtime", lambda cfg: Runtime(torch.device("cuda"), cuda_graph=True)
    )
    monkeypatch.setattr(population, "prepare_data", lambda *a: pytest.fail("work started"))
    cfgs = [compose_cfg("task=gan_digits", f"seed={s}") for s in (0, 1)]
    message = "runtime.cuda_graph=true: task=gan_digits trains with a loop of its own, which is not captured"
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_population(cfgs)


@pytest.mark.parametrize(
    ("n", "size", "parts"),
    [
        (20, 9, [7, 7, 6]),
        (20, None, [20]),
        (20, 64, [20]),
        (5, 1, [1] * 5),
        (16, 8, [8, 8]),
        (10, 4, [4, 3, 3]),
    ],
)
def test_a_group_splits_into_as_few_nearly_equal_populations_as_the_size_allows(n, size, parts):
    slices = population_parts(n, size)
    assert [s.stop - s.start for s in slices] == parts
    assert [i for s in slices for i in range(n)[s]] == list(range(n))  # consecutive, each run once


def test_a_population_holds_as_many_members_as_keep_its_largest_activation_within_the_cache():
    cfg = compose_cfg("task=mnist1d_cnn", "batch_size=32")  # 32 channels over 40 positions
    runtime = setup_runtime(cfg)
    data = prepare_data(cfg, runtime)
    model = prepare_model(cfg, data, runtime)
    member = 32 * 32 * 40 * 4  # bytes of one member's conv output at batch 32, float32
    assert members_per_population(model, data.x_train[:32], 1.5) == int(1.5 * 2**20 // member) == 9
    assert members_per_population(model, data.x_train[:128], 1.5) == 2
    assert members_per_population(model, data.x_train[:32], 0.01) == 1  # never below one
    assert members_per_population(model, data.x_train[:32], 0) is None
    assert model.training  # measured in eval mode, the model's mode restored
    # a recurrent net's norms see one step at a time: (32, 4 x 32 gates) floats each
    cfg = compose_cfg("task=seq_lstm", "batch_size=32")
    data = prepare_data(cfg, runtime)
    lstm = prepare_model(cfg, data, runtime)
    assert members_per_population(lstm, data.x_train[:32], 1.5) == int(
        1.5 * 2**20 // (32 * 4 * cfg.task.model.width * 4)
    )


def test_a_group_larger_than_the_cache_allows_trains_as_several_populations_with_the_same_records(tmp_path):
    common = ("task=mnist1d_cnn", "norm=groupnorm", "batch_size=32", *STEPS, *EVAL)
    cfgs = [compose_cfg(*common, *m) for m in LOW_LR]
    whole = train_population(cfgs)
    # 0.35 MiB holds two members' 160 KiB activations: populations of 2 and 1
    parts = train_population(cfgs, cache_mb=0.35)
    assert [r["env"]["population"] for r in whole] == [3, 3, 3]
    assert [r["env"]["population"] for r in parts] == [2, 2, 1]
    for a, b in zip(parts, whole, strict=True):
        assert a["status"] == b["status"] == "completed" and a["config_hash"] == b["config_hash"]
        assert a["metrics"].keys() == b["metrics"].keys()
        assert all(_close(a["metrics"][k], v) for k, v in b["metrics"].items()), (a["metrics"], b["metrics"])
        assert all(_close(p[k], q[k]) for p, q in zip(a["history"], b["history"], strict=True) for k in q)


def test_a_population_of_one_without_a_wide_form_trains_as_its_member_would_alone(tmp_path):
    """The Transformer has no wide form for several members; one member is its own (a copy of it)."""
    cfg = compose_cfg(
        "task=seq_transformer",
        "norm=rmsnorm",
        "batch_size=8",
        "task.model.width=32",
        "task.model.depth=1",
        *STEPS,
        *EVAL,
    )
    (record,) = train_population([cfg])
    assert record["env"]["population_form"] == "wide"
    assert_same_record(record, execute(cfg, tmp_path), population=1)


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_a_population_of_one_resumed_from_its_checkpoint_ends_as_the_uninterrupted_one(tmp_path, optim):
    """A run alone steps its parameters as one flat tensor; its checkpoint holds each parameter's
    optimizer state, and resuming from it (step 80 of 120) ends bit for bit where training on did."""
    from normbench.checkpoint import Checkpoint
    from normbench.population.train import fit_population

    cfg = compose_cfg(
        "norm=batchnorm",
        "batch_size=16",
        f"optim.name={optim}",
        "train.budget=steps",
        "train.steps=120",
        "train.history_points=3",
    )
    data = prepare_data(cfg)
    checkpoint = Checkpoint(tmp_path / "checkpoint.pt", 40, "h")
    models = [prepare_model(cfg, data) for _ in range(2)]
    (whole,) = fit_population([cfg], models[:1], data, Runtime(), checkpoints=[checkpoint])
    assert checkpoint.load()["step"] == 80
    (resumed,) = fit_population([cfg], models[1:], data, Runtime(), checkpoints=[checkpoint])
    assert resumed.history[-1] == whole.history[-1]
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_population_reads_whether_any_member_is_alive_every_check_interval_steps(monkeypatch):
    """As on a GPU (where reading the members' state makes the host wait): every ``check_every`` steps,
    so a population whose members all diverged stops at the first such step after the last one did."""
    from normbench.population.optim import PopulationOptimizer
    from normbench.population.train import fit_population

    steps = []
    step = PopulationOptimizer.step
    monkeypatch.setattr(
        PopulationOptimizer, "step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k)
    )
    cfgs = [
        compose_cfg("norm=identity", "batch_size=16", *STEPS, f"seed={s}", "optim.lr=30000") for s in (0, 1)
    ]
    data = prepare_data(cfgs[0])
    results = fit_population(cfgs, [prepare_model(c, data) for c in cfgs], data, Runtime(check_interval=16))
    last = max(r.diverged_at_step for r in results)
    assert [r.status for r in results] == ["diverged"] * 2 and last < 16
    assert len(steps) == 16
