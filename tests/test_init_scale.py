"""task.model.init_scale: every initial weight outside the norm layers scaled, nothing else."""

from __future__ import annotations

import pytest
import torch

from normbench.experiment.build import model_and_norms
from normbench.tasks import load_dataset
from tests.helpers import compose_cfg


@pytest.mark.parametrize("task", ["mnist1d_mlp", "mnist1d_cnn", "digits_lstm"])
def test_weights_scaled_biases_and_norms_kept(task: str) -> None:
    data = load_dataset(compose_cfg(f"task={task}").task.dataset, mnist1d_samples=200)
    built = {}
    for scale in (1.0, 2.5):
        torch.manual_seed(0)
        built[scale] = model_and_norms(compose_cfg(f"task={task}", f"task.model.init_scale={scale}"), data)
    (base, _), (scaled, scaled_norms) = built[1.0], built[2.5]
    norm_params = {id(p) for layer in scaled_norms for p in layer.parameters()}
    assert norm_params, "the model has norm layers with parameters"
    checked = 0
    for (name, p0), (_, p1) in zip(base.named_parameters(), scaled.named_parameters(), strict=True):
        factor = 2.5 if id(p1) not in norm_params and name.rsplit(".", 1)[-1].startswith("weight") else 1.0
        torch.testing.assert_close(p1, p0 * factor, msg=lambda m, n=name: f"{n}: {m}")
        checked += factor != 1.0
    assert checked >= 3


def test_init_scale_must_be_positive() -> None:
    from normbench.config import ConfigError, check_values

    with pytest.raises(
        ConfigError, match=r"task\.model\.init_scale=0\.0: must be a number in \[1e-30, 1e30\]"
    ):
        check_values(compose_cfg("task.model.init_scale=0.0"))
