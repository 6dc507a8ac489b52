"""The recurrent task: per-time-step statistics, shared affine parameters, longer sequences in eval,
one LN-LSTM step against an independent formula, and the task end to end."""

from __future__ import annotations

import pytest
import torch
from helpers import QUICK, compose_cfg

from normbench.run import ConfigError, execute
from normbench.tasks import NormLayers
from normbench.tasks.recurrent import NormRNN


def _rnn(norm: str, cell: str = "lstm", shared: bool = False, steps: int = 6) -> NormRNN:
    torch.manual_seed(0)
    return NormRNN(3, steps, 5, 4, NormLayers(norm), cell, shared).double()


def test_batchnorm_lstm_keeps_statistics_per_step_with_one_affine():
    model = _rnn("batchnorm")
    model.train()
    model(torch.randn(16, 3, 6, dtype=torch.float64) * torch.linspace(0.2, 3, 6, dtype=torch.float64))
    means = torch.stack([m.running_mean for m in model.norm_x.steps])
    assert len(model.norm_x.steps) == 6 and not torch.allclose(means[0], means[-1])
    assert all(m.weight is model.norm_x.steps[0].weight for m in model.norm_x.steps)
    # shared parameters are counted once
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in set(model.parameters()))
    shared = _rnn("batchnorm", shared=True)
    assert len(shared.norm_x.steps) == 1


def test_eval_on_a_longer_sequence_uses_the_last_steps_statistics():
    model = _rnn("batchnorm", steps=4)
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, 4, dtype=torch.float64))
    model.eval()
    long = torch.randn(2, 3, 7, dtype=torch.float64)
    out = model(long)
    # the same computation with steps 4..6 pointed explicitly at step 3's module
    for norms in (model.norm_x, model.norm_h, model.norm_c):
        norms.steps.extend([norms.steps[3]] * 3)
    torch.testing.assert_close(model(long), out)


def test_one_layernorm_lstm_step_matches_the_formula():
    model = _rnn("layernorm", steps=1)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 1, dtype=torch.float64)

    def ln(v, m):
        mean, var = v.mean(1, keepdim=True), v.var(1, unbiased=False, keepdim=True)
        return (v - mean) / torch.sqrt(var + m.eps) * m.weight + m.bias

    gx = ln(x[:, :, 0] @ model.w_x.weight.T, model.norm_x.steps[0])
    gh = ln(torch.zeros(4, 20, dtype=torch.float64), model.norm_h.steps[0])  # h_0 = 0
    i, _, o, g = (gx + gh + model.bias).chunk(4, 1)  # f: no c_{t-1} to forget
    c = torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(ln(c, model.norm_c.steps[0]))
    torch.testing.assert_close(model(x), model.head(h))


def test_gru_runs_and_reads_images_row_by_row():
    model = NormRNN(8, 8, 6, 10, NormLayers("layernorm"), "gru")
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 10)
    assert model.norm_c is None


@pytest.mark.parametrize("task", ["seq_lstm", "digits_lstm"])
def test_recurrent_tasks_train(task, tmp_path):
    record = execute(compose_cfg(f"task={task}", "norm=batchnorm", "task.model.width=16", *QUICK), tmp_path)
    assert record["status"] == "completed", record.get("error")
    assert "test_error_precise_bn" in record["metrics"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["task=digits_lstm", "norm=instancenorm"], "instancenorm cannot build task=digits_lstm"),
        (
            ["task=digits_lstm", "batch_size=1", "norm=batchnorm"],
            "batch_size=1: norm=batchnorm normalizes over",
        ),
    ],
)
def test_bad_recurrent_combinations_are_refused(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        execute(compose_cfg(*overrides, *QUICK), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_online_learning_with_a_batch_independent_norm(tmp_path):
    record = execute(compose_cfg("task=digits_lstm", "batch_size=1", "norm=layernorm", *QUICK), tmp_path)
    assert record["status"] == "completed", record.get("error")
