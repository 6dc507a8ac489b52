"""GAN tasks: a small DCGAN (Radford et al. 2016) whose generator and discriminator norms come from the
registry, and the measures of what it generates.

Placement, as in DCGAN: the generator is ``z → Linear → norm → ReLU → ConvT(×2) → norm → ReLU →
ConvT(×2) → tanh`` (no norm on its output layer); the discriminator is ``Conv(/2) → LeakyReLU →
Conv(/2) → norm → LeakyReLU → Linear`` (no norm on its input layer). Plugins that include their
activation (FRN, EvoNorm) replace the ReLU / LeakyReLU after them. Inputs are images (C, H, W) or 1-D
signals (C, L) with sides divisible by 4, scaled to [-1, 1].

Quality is measured in the feature space of a fixed classifier trained once on the real training data
(:func:`feature_classifier`, cached on disk by the hash of its configuration so every run uses the same
one): the Fréchet distance between Gaussians fitted to the features of real held-out samples and of
generated ones (Heusel et al. 2017, with this small classifier in place of Inception), and the classes
the generator covers by the classifier's labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from normbench.checkpoint import load_weights, save_atomic
from normbench.tasks.norm_layers import NormLayers

log = logging.getLogger(__name__)

FEATURES = 32  # width of the classifier's feature layer (the Fréchet distance's space)


def _act(norms: NormLayers, leaky: bool) -> list[nn.Module]:
    if norms.spec.replaces_activation:
        return []
    return [nn.LeakyReLU(0.2)] if leaky else [nn.ReLU()]


class Generator(nn.Module):
    def __init__(self, shape: tuple[int, ...], latent: int, width: int, norms: NormLayers) -> None:
        super().__init__()
        dims, (channels, *sides) = len(shape) - 1, shape
        if dims not in (1, 2) or any(s % 4 for s in sides):
            raise ValueError(
                f"a GAN needs (C, L) or (C, H, W) samples with sides divisible by 4, got {shape}"
            )
        convt = nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d
        self.start = (2 * width, *(s // 4 for s in sides))
        self.fc = norms.adapt(nn.Linear(latent, math.prod(self.start)))
        # the fc's output as a feature map
        self.norm0 = nn.Sequential(norms(2 * width, after_adapted=True), *_act(norms, False))
        self.body = nn.Sequential(
            *norms.block(convt(2 * width, width, 4, 2, 1), width, activation=False),
            *_act(norms, False),
            convt(width, channels, 4, 2, 1),
            nn.Tanh(),
        )
        self.latent = latent

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.norm0(self.fc(z).view(-1, *self.start)))


class Discriminator(nn.Module):
    def __init__(self, shape: tuple[int, ...], width: int, norms: NormLayers) -> None:
        super().__init__()
        dims, (channels, *sides) = len(shape) - 1, shape
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        self.net = nn.Sequential(
            conv(channels, width, 4, 2, 1),
            nn.LeakyReLU(0.2),
            *norms.block(conv(width, 2 * width, 4, 2, 1), 2 * width, activation=False),
            *_act(norms, True),
            nn.Flatten(),
            nn.Linear(2 * width * math.prod(s // 4 for s in sides), 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


class GAN(nn.Module):
    """The pair, built with each network's own norm (``g_norms``, ``d_norms``)."""

    def __init__(
        self, shape: tuple[int, ...], latent: int, width: int, g_norms: NormLayers, d_norms: NormLayers
    ) -> None:
        super().__init__()
        self.generator = Generator(shape, latent, width, g_norms)
        self.discriminator = Discriminator(shape, width, d_norms)

    def forward(self, x: Tensor) -> Tensor:
        """The discriminator's logits for ``x`` and for as many generated samples (both networks run:
        the shape checks and the one-sample check before training use this)."""
        z = torch.randn(len(x), self.generator.latent, device=x.device)
        return torch.cat([self.discriminator(x), self.discriminator(self.generator(z))])

    def sample(
        self, n: int, gen: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Tensor:
        z = torch.randn(n, self.generator.latent, generator=gen).to(device)
        return self.generator(z)


# --- the fixed classifier and the measures ------------------------------------------------------------


class FeatureClassifier(nn.Module):
    """``flatten → Linear(128) → ReLU → Linear(FEATURES) → ReLU → Linear(classes)``, no norm: the same
    yardstick for every norm under test."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, 128), nn.ReLU(), nn.Linear(128, FEATURES), nn.ReLU()
        )
        self.head = nn.Linear(FEATURES, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


CLASSIFIER_TRAINING = {"epochs": 60, "batch_size": 64, "lr": 1e-3, "seed": 0}


def classifier_hash(identity: Mapping[str, Any]) -> str:
    blob = json.dumps({**identity, **CLASSIFIER_TRAINING, "features": FEATURES}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_classifier(x: Tensor, y: Tensor, num_classes: int) -> FeatureClassifier:
    """Adam on the real training data, from seed 0: the same inputs give the same classifier."""
    gen = torch.Generator().manual_seed(CLASSIFIER_TRAINING["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(CLASSIFIER_TRAINING["seed"])
        model = FeatureClassifier(x[0].numel(), num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=CLASSIFIER_TRAINING["lr"])
    bs = CLASSIFIER_TRAINING["batch_size"]
    for _ in range(CLASSIFIER_TRAINING["epochs"]):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - bs + 1, bs):
            idx = order[i : i + bs]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def feature_classifier(
    x: Tensor, y: Tensor, num_classes: int, identity: Mapping[str, Any], cache: Path
) -> tuple[FeatureClassifier, str]:
    """The classifier for these data (``identity`` says which: dataset, split, size), loaded from
    ``cache/feature_classifier/<hash>.pt`` or trained and written there atomically; and its hash."""
    digest = classifier_hash(identity)
    path = cache / "feature_classifier" / f"{digest}.pt"
    model = FeatureClassifier(x[0].numel(), num_classes)
    if path.is_file():
        try:
            load_weights(model, path)
            return model.eval(), digest
        except ValueError as exc:  # a cache file cut short or from elsewhere: train it again
            log.warning("%s; training the feature classifier again", exc)
    model = train_classifier(x.cpu(), y.cpu(), num_classes)
    save_atomic(model.state_dict(), path)  # concurrent runs write the same bytes; the last rename wins
    return model, digest


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """``|μ1 − μ2|² + tr(Σ1) + tr(Σ2) − 2 tr((Σ1 Σ2)^½)``, the squared 2-Wasserstein distance between two
    Gaussians. tr((Σ1 Σ2)^½) is computed as the sum of square roots of the eigenvalues of the symmetric
    Σ1^½ Σ2 Σ1^½, which has the same spectrum and stays real."""
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = root1 @ cov2 @ root1
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * trace_root)


def gaussian(features: Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = features.detach().double().cpu().numpy()
    return f.mean(axis=0), np.cov(f, rowvar=False)


def covered_classes(labels: Tensor, num_classes: int) -> tuple[int, float]:
    """Classes given to at least half their uniform share (1 / 2K) of the samples, and the largest
    share any one class gets (1 / K for a perfectly balanced generator, 1 for a collapsed one)."""
    share = torch.bincount(labels.cpu(), minlength=num_classes).double() / len(labels)
    return int((share >= 0.5 / num_classes).sum()), float(share.max())


@torch.no_grad()
def sample_metrics(
    classifier: FeatureClassifier, fake: Tensor, real_stats: tuple[np.ndarray, np.ndarray], num_classes: int
) -> dict[str, float]:
    fake = fake.float().cpu()
    if not torch.isfinite(fake).all():
        return {"fd": math.inf}
    features = classifier.features(fake)
    covered, top_share = covered_classes(classifier.head(features).argmax(1), num_classes)
    return {
        "fd": frechet_distance(*real_stats, *gaussian(features)),
        "classes_covered": float(covered),
        "class_share_max": top_share,
    }


def save_sample_grid(samples: Tensor, path: Path, title: str = "") -> None:
    """A PNG of generated samples: an image grid, or small multiples of 1-D signals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = samples.float().cpu()[:64]
    side = math.ceil(math.sqrt(len(samples)))
    fig, axes = plt.subplots(
        side, side, figsize=(side * 0.9, side * 0.9 if samples.dim() == 4 else side * 0.6)
    )
    for ax, s in zip(np.ravel(axes), samples, strict=False):
        if s.dim() == 3:
            image = s[0] if s.shape[0] == 1 else s.permute(1, 2, 0).add(1).div(2)
            ax.imshow(image.numpy(), cmap="gray", vmin=-1, vmax=1)
        else:
            ax.plot(s[0].numpy(), lw=0.8)
            ax.set_ylim(-1.05, 1.05)
    for ax in np.ravel(axes):
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


# --- training -------------------------------------------------------------------------------------------


def adversarial_step(
    gan: GAN,
    real: Tensor,
    z: Tensor,
    opt_d: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer,
    mixed: bool,
) -> tuple[Tensor, Tensor]:
    """One discriminator and one generator update (non-saturating loss). ``mixed``: real and fake
    samples go through the discriminator as one batch (its batch statistics pool both); otherwise as
    two batches, the usual DCGAN practice. Returns the two losses (tensors: no device sync here)."""
    g, d = gan.generator, gan.discriminator
    bce = nn.functional.binary_cross_entropy_with_logits
    n = len(real)

    def judge(fake: Tensor) -> tuple[Tensor, Tensor]:
        if mixed:
            logits = d(torch.cat([real, fake]))
            return logits[:n], logits[n:]
        return d(real), d(fake)

    fake = g(z)
    d_real, d_fake = judge(fake.detach())
    d_loss = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    fake_logits = judge(fake)[1] if mixed else d(fake)
    g_loss = bce(fake_logits, torch.ones_like(fake_logits))
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    return d_loss.detach(), g_loss.detach()
