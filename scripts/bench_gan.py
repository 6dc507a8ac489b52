"""The GAN task's measures: time to compute the Fréchet distance and class coverage of 2,000 generated
samples (the fixed classifier's features, the Gaussian fit, the matrix square root) on the CPU, median
of rounds, to reports/bench/gan_fd.md.

    python scripts/bench_gan.py
    python scripts/bench_gan.py --task gan_mnist1d --rounds 20
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_args import count, presets
from hydra import compose, initialize_config_dir

import normbench
from normbench.argtypes import writable_file
from normbench.cli import CONF_DIR
from normbench.experiment.build import model_from_config
from normbench.tasks import load_dataset
from normbench.tasks.gan import feature_classifier, gaussian, sample_metrics
from normbench.train_gan import FINAL_SAMPLES, to_unit_range

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--task", choices=[t for t in presets("task") if t.startswith("gan_")], default="gan_digits"
    )
    parser.add_argument("--rounds", type=count, default=10)
    parser.add_argument("--out", type=writable_file, default=ROOT / "reports/bench/gan_fd.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("config", [f"task={args.task}", "norm=batchnorm"])
    data = to_unit_range(load_dataset(cfg.task.dataset))
    gan = model_from_config(cfg, data)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        classifier, _ = feature_classifier(
            data.x_train, data.y_train, data.num_classes, {"bench": 1}, Path(cache)
        )
        train_s = time.perf_counter() - start
    real = gaussian(classifier.features(data.x_test))
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        with torch.no_grad():
            fake = gan.eval().sample(FINAL_SAMPLES, torch.Generator().manual_seed(0))
        sample_metrics(classifier, fake, real, data.num_classes)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    lines = [
        f"# GAN measures on the CPU ({args.task})",
        "",
        f"`python scripts/bench_gan.py --task {args.task} --rounds {args.rounds}`; normbench {normbench.__version__}, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, 1 thread, shared 2-core machine.",
        "",
        "| what | median (s) | min (s) | max (s) |",
        "|---|---:|---:|---:|",
        f"| generate {FINAL_SAMPLES} samples + Fréchet distance + class coverage | {median:.3f} | {min(times):.3f} | {max(times):.3f} |",
        f"| train the fixed classifier once (then cached) | {train_s:.2f} | | |",
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
