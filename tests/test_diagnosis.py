"""normbench.diagnose: any model's batch statistics, checked against independent computations, and the
promise that the model is never changed."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from normbench import diagnose
from normbench.diagnosis import precise_statistics
from normbench.evaluate import error_and_loss


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv1d(1, 8, 5, padding=2),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Conv1d(8, 8, 5, padding=2),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


def _data(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 20, generator=gen) * 3 + 1, torch.randint(0, 4, (n,), generator=gen)


def _trained(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for idx in torch.arange(len(x)).split(16):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def test_precise_statistics_are_the_population_statistics_of_each_layer_input():
    """One batch of every sample: each layer's input is that of one training-mode forward, and its
    mean and unbiased variance per channel come straight from torch.var_mean."""
    model, (x, _) = _cnn(), _data()
    inputs = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, i=i: inputs.__setitem__(i, args[0].detach()))
        for i, m in enumerate(model)
        if isinstance(m, nn.BatchNorm1d)
    ]
    with torch.no_grad():
        copy.deepcopy(model).train()(x)  # the hooks are copied with the model
    for h in hooks:
        h.remove()
    precise = precise_statistics(model, x, batch_size=len(x))
    for i, seen in inputs.items():
        var, mean = torch.var_mean(seen.transpose(0, 1).reshape(seen.shape[1], -1).double(), dim=1)
        torch.testing.assert_close(precise[i].running_mean, mean.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(precise[i].running_var, var.float(), rtol=1e-5, atol=1e-6)


def test_diagnose_measures_and_never_changes_the_model():
    x, y = _data()
    model = _trained(_cnn(), x, y)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    found = diagnose(model, loader, loader, batch_sizes=(1, 4, len(x)), precise_samples=len(x))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    ema_error, ema_loss = error_and_loss(model, x, y)
    ema = found.results[found.results.statistics == "EMA"].iloc[0]
    assert ema.error == pytest.approx(ema_error) and ema.loss == pytest.approx(ema_loss, rel=1e-5)
    # mini-batch statistics over one batch of every sample = one training-mode forward
    full = found.results[
        (found.results.statistics == "mini-batch") & (found.results.batch_size == len(x))
    ].iloc[0]
    with torch.no_grad():
        out = copy.deepcopy(model).train()(x)
    assert full.error == pytest.approx(float((out.argmax(1) != y).float().mean()))
    assert list(found.layers.layer) == ["1", "4"] and not found.layers.one_value_per_channel_at_batch_1.any()
    assert "test error: " in found.verdict and "with PreciseBN's" in found.verdict
    assert list(found.results.statistics) == ["EMA", "PreciseBN", "mini-batch", "mini-batch", "mini-batch"]


def test_mini_batch_statistics_use_full_batches_only_and_no_batch_above_the_samples():
    """At batch b the test samples, in one fixed random order, are cut into batches of b; a smaller last
    batch would be normalized at another size, so it is left out. A batch size above the samples is
    refused; by default the sizes of (2, 8, 32, 128) the samples hold are used."""
    x, y = _data()  # 96 samples: two full batches of 40, 16 left out
    model = _trained(_cnn(), x, y)
    loader = [(x, y)]
    found = diagnose(model, loader, loader, batch_sizes=(40,), precise_samples=len(x))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:80]
    with torch.no_grad():
        twin = copy.deepcopy(model).train()
        out = torch.cat([twin(x[idx]) for idx in order.split(40)])
    expected = float((out.argmax(1) != y[order]).float().mean())
    assert found.results.query("batch_size == 40").error.item() == pytest.approx(expected)
    default = diagnose(model, loader, loader, precise_samples=len(x))
    assert list(default.results.batch_size.dropna()) == [2, 8, 32]
    with pytest.raises(ValueError, match=r"^diagnose: batch size 128 is more than the 96 test samples$"):
        diagnose(model, loader, loader, batch_sizes=(2, 128))


def test_layers_with_one_value_per_channel_at_batch_1_are_named():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    found = diagnose(mlp, [(x, y)], batch_sizes=(1, 8), precise_samples=64)
    assert list(found.layers.one_value_per_channel_at_batch_1) == [True]
    at_one = found.results[found.results.batch_size == 1].iloc[0]
    assert at_one.error != at_one.error  # NaN: no batch statistics to give a number with
    assert "1 layer(s) see one value per channel at batch 1" in found.verdict and "1." in found.verdict


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_sizes": (0,)}, "batch sizes must be integers >= 1, got 0"),
        ({"precise_samples": 1}, "precise_samples must be an integer >= 2, got 1"),
        ({"device": "tpu"}, "device=tpu: must be one of auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    x, y = _data()
    with pytest.raises(ValueError, match=message):
        diagnose(_cnn(), [(x, y)], **kwargs)


def test_a_model_or_loader_of_another_kind_is_a_type_error_naming_it():
    """They were AttributeError ('int' object has no attribute 'parameters') and 'NoneType' object is
    not iterable, naming neither argument."""
    x, y = _data()
    with pytest.raises(TypeError, match=r"^diagnose: model must be an nn\.Module, got str$"):
        diagnose("resnet18", [(x, y)])
    with pytest.raises(
        TypeError, match=r"^diagnose: train_loader must give \(inputs, targets\) batches .*got NoneType$"
    ):
        diagnose(_cnn(), None)
    with pytest.raises(TypeError, match=r"^diagnose: test_loader must give .*got int$"):
        diagnose(_cnn(), [(x, y)], 5)


@pytest.mark.parametrize(
    "batch, message",
    [
        ("tensor", "a loader's batches must be (inputs, targets) tensors, got a Tensor"),
        (
            "triple",
            "a loader's batches must be (inputs, targets) tensors, got a tuple of 3: Tensor, Tensor, Tensor",
        ),
        ("nan", "1 input values are NaN or infinite"),  # every error would be the argmax of NaN
    ],
)
def test_batches_that_are_not_input_target_pairs_of_finite_inputs_are_refused(batch, message):
    x, y = _data()
    with_nan = x.clone()
    with_nan[5, 0, 7] = float("nan")
    bad = {"tensor": x, "triple": (x, y, y), "nan": (with_nan, y)}
    with pytest.raises(ValueError) as info:
        diagnose(_cnn(), [bad[batch]])
    assert str(info.value) == f"diagnose: {message}"


class _Pair(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out, out


@pytest.mark.parametrize(
    "case, message",
    [
        # each was measured: pairs cut to the shorter side, or targets broadcast against the predictions
        ("short targets", "a batch's inputs (96, 1, 20) and targets (10,) must have one target per input"),
        ("one target", "a batch's inputs (96, 1, 20) and targets () must have one target per input"),  # len()
        (
            "column targets",
            "test_loader's targets must be class indices, one integer per input (shape (N,)), "
            "got shape (N, 1) of torch.int64",
        ),
        (
            "one-hot targets",
            "test_loader's targets must be class indices, one integer per input (shape (N,)), "
            "got shape (N, 4) of torch.int64",
        ),
        (
            "float targets",
            "test_loader's targets must be class indices, one integer per input (shape (N,)), "
            "got shape (N,) of torch.float32",
        ),
        # each was torch's or Python's own error from inside the measurement
        (
            "label 4 of 4 classes",
            "targets must be class indices in [0, 4) for the model's 4 outputs, got 0 to 4",
        ),
        (
            "tuple output",
            "the model must return a (batch, classes) tensor of scores for 96 inputs, got a tuple",
        ),
        ("eval_batch_size=0", "batch sizes must be integers >= 1, got 0"),
        ("batch_sizes=8", "batch_sizes must be a sequence of batch sizes, e.g. (2, 8), got 8"),
    ],
)
def test_targets_outputs_and_sizes_that_would_mismeasure_are_refused_naming_them(case, message):
    x, y = _data()
    model = _cnn()
    test = {
        "short targets": (x, y[:10]),
        "one target": (x, y[0]),
        "column targets": (x, y[:, None]),
        "one-hot targets": (x, nn.functional.one_hot(y, 4)),
        "float targets": (x, y.float()),
        "label 4 of 4 classes": (x, y.clone().index_fill_(0, torch.tensor([3]), 4)),
    }.get(case, (x, y))
    kwargs = {"eval_batch_size=0": {"eval_batch_size": 0}, "batch_sizes=8": {"batch_sizes": 8}}.get(case, {})
    error = TypeError if case == "batch_sizes=8" else ValueError
    with pytest.raises(error) as info:
        diagnose(_Pair(model) if case == "tuple output" else model, [(x, y)], [test], **kwargs)
    assert str(info.value).startswith(f"diagnose: {message}"), str(info.value)


def test_a_half_precision_model_is_measured_on_inputs_of_its_precision():
    """It was torch's dtype mismatch from inside the first forward."""
    x, y = _data()
    model = _trained(_cnn(), x, y).to(torch.bfloat16)
    found = diagnose(model, [(x, y)], [(x, y)], batch_sizes=(len(x),), precise_samples=len(x))
    with torch.no_grad():
        expected = float((model(x.to(torch.bfloat16)).argmax(1) != y).float().mean())
    assert found.results[found.results.statistics == "EMA"].error.item() == pytest.approx(expected)
    assert model.state_dict()["1.running_mean"].dtype == torch.bfloat16  # still the caller's


def test_a_batchnorm_without_running_statistics_beside_one_with_them_is_diagnosed():
    """The layer without them normalizes over the batch in eval mode too: the batch-1 probe of one
    sample was torch's "Expected more than 1 value per channel"; its batch-1 row is undefined."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 8),
        nn.BatchNorm1d(8, track_running_stats=False),
        nn.Linear(8, 8),
        nn.BatchNorm1d(8),
        nn.Linear(8, 3),
    )
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    found = diagnose(model, [(x, y)], [(x, y)], batch_sizes=(1, 8), precise_samples=48)
    assert list(found.layers.layer) == ["3"]  # the layer with running statistics
    at_one = found.results[found.results.batch_size == 1].iloc[0]
    assert at_one.error != at_one.error  # NaN
    with torch.no_grad():
        expected = float((model.eval()(x).argmax(1) != y).float().mean())  # one eval batch of all 48
    assert found.results[found.results.statistics == "EMA"].error.item() == pytest.approx(expected)


def test_frozen_layers_are_named_and_keep_their_statistics_in_the_mini_batch_rows():
    """A frozen BatchNorm (detectron2's kind) normalizes with its running statistics in training mode
    too: with only such layers every mini-batch row is the EMA row, and batch 1 is defined."""
    from normbench import build_norm

    torch.manual_seed(0)
    frozen = nn.Sequential(nn.Linear(6, 8), build_norm("frozen_batchnorm", 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    found = diagnose(frozen, [(x, y)], [(x, y)], batch_sizes=(1, 8), precise_samples=48)
    ema = found.results[found.results.statistics == "EMA"].iloc[0]
    for row in found.results[found.results.statistics == "mini-batch"].itertuples():
        assert (row.error, row.loss) == pytest.approx((ema.error, ema.loss))
    assert found.layers[
        ["layer", "batch_statistics_in_training", "one_value_per_channel_at_batch_1"]
    ].to_dict("records") == [
        {"layer": "1", "batch_statistics_in_training": False, "one_value_per_channel_at_batch_1": False}
    ]
    assert "1 layer(s) normalize with their running statistics in training too (frozen)" in found.verdict
    assert "undefined" not in found.verdict
    plain = diagnose(_cnn(), [_data()], batch_sizes=(8,))
    assert plain.layers.batch_statistics_in_training.all() and "frozen" not in plain.verdict


def test_a_model_without_running_statistics_is_refused_by_name():
    x, y = _data()
    with pytest.raises(ValueError, match="Sequential has no norm layer with running statistics"):
        diagnose(nn.Sequential(nn.Flatten(), nn.Linear(20, 4)), [(x, y)])


def test_the_command_line_diagnoses_a_model_given_by_import_path(tmp_path):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "def model():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))\n"
        "def data():\n"
        "    x, y = torch.randn(64, 1, 20), torch.randint(0, 3, (64,))\n"
        "    return [(x[:32], y[:32]), (x[32:], y[32:])], [(x, y)]\n"
    )
    exe = str(Path(sys.executable).parent / "normbench-diagnose")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # found in the working directory
    command = [exe, "--model", "mymodels:model", "--data", "mymodels:data", "--batch-sizes", "2", "8"]
    proc = subprocess.run([*command, "--csv", "r.csv"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "test error: " in proc.stdout and "mini-batch" in proc.stdout
    assert (tmp_path / "r.csv").read_text().startswith("statistics,batch_size,split,error,loss")
    bad = subprocess.run(
        [exe, "--model", "mymodels:nothing", "--data", "mymodels:data"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "normbench-diagnose: error: mymodels:nothing: cannot import it (module 'mymodels' has no attribute 'nothing')"
    ]


def test_the_command_line_refuses_a_bad_device_checkpoint_or_csv_folder_in_one_line(
    tmp_path, monkeypatch, capsys
):
    from normbench.diagnosis import main

    (tmp_path / "models_here.py").write_text(
        "from torch import nn\n"
        "def model():\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))\n"
        "def data():\n"
        "    import torch\n"
        "    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))\n"
        "    return [(x, y)], [(x, y)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.save(nn.Linear(3, 3).state_dict(), tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    cases = {
        ("--device", "tpu"): "--device=tpu: must be one of auto, cpu, cuda or cuda:N",
        (
            "--checkpoint",
            str(tmp_path / "none.pt"),
        ): f"--checkpoint {tmp_path / 'none.pt'}: No such file or directory",
        (
            "--checkpoint",
            str(tmp_path / "list.pt"),
        ): f"--checkpoint {tmp_path / 'list.pt'}: holds a list, not a state dict",
        (
            "--checkpoint",
            str(tmp_path / "text.pt"),
        ): f"--checkpoint {tmp_path / 'text.pt'}: not a state dict that torch.load reads (",
        (
            "--checkpoint",
            str(tmp_path / "other.pt"),
        ): f"--checkpoint {tmp_path / 'other.pt'}: Error(s) in loading state_dict for Sequential: Missing key(s)",
        (  # refused when parsed, before the model and data load: the results would be lost at the end
            "--csv",
            str(tmp_path / "text.pt" / "r.csv"),
        ): f"argument --csv: {tmp_path / 'text.pt' / 'r.csv'}: {tmp_path / 'text.pt'} is a file, not a folder",
        ("--csv", str(tmp_path)): f"argument --csv: {tmp_path}: is a folder; give the file to write",
    }
    if not torch.cuda.is_available():
        cases["--device", "cuda"] = "--device=cuda: this machine has no CUDA device (allowed here: auto, cpu)"
    for args, message in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(["--model", "models_here:model", "--data", "models_here:data", *args])
        *usage, line = capsys.readouterr().err.strip().splitlines()  # argparse's usage before its errors
        assert not usage or args[0] == "--csv"
        assert exit_info.value.code == 2 and line.startswith(f"normbench-diagnose: error: {message}"), line
