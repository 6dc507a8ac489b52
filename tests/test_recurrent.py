"""The recurrent task: per-time-step statistics, shared affine parameters, longer sequences in eval,
one LN-LSTM step against an independent formula, and the task end to end."""

from __future__ import annotations

import pytest
import torch
from helpers import QUICK, compose_cfg

from normbench.config import ConfigError
from normbench.experiment.identity import run_identity
from normbench.experiment.run import execute
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


def test_an_embedded_scalar_input_reaches_layernorm_with_more_than_its_sign():
    torch.manual_seed(0)
    plain = NormRNN(1, 4, 8, 10, NormLayers("layernorm"))
    embedded = NormRNN(1, 4, 8, 10, NormLayers("layernorm"), embed=8)
    x = torch.tensor([[0.5], [2.0]])  # two inputs of the same sign
    for model, sign_only in ((plain, True), (embedded, False)):
        gx = model.norm_x(model.w_x(model.embed(x)), 0)
        # LN(w x) = sign(x) (w - mean w) / std w, up to eps: the same for both inputs without the embedding
        assert (float((gx[0] - gx[1]).abs().max()) < 1e-3) is sign_only
    assert isinstance(embedded.embed[0], torch.nn.Linear) and embedded.w_x.in_features == 8


def test_the_recurrent_norms_start_at_the_given_gain():
    model = NormRNN(8, 4, 16, 10, NormLayers("batchnorm"), norm_gain=0.1)
    for position in (model.norm_x, model.norm_h, model.norm_c):
        for step in position.steps:
            assert torch.equal(step.weight, torch.full_like(step.weight, 0.1))


def test_embed_and_gain_join_the_identity_only_when_set():
    identity, _ = run_identity(compose_cfg("task=seq_lstm", "task.model.embed=0", "task.model.norm_gain=1.0"))
    assert "embed" not in identity["task"]["model"] and "norm_gain" not in identity["task"]["model"]
    identity, _ = run_identity(compose_cfg("task=digits_lstm", "task.model.norm_gain=0.1"))
    assert identity["task"]["model"]["norm_gain"] == 0.1
