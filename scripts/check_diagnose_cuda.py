"""normbench.diagnose on CUDA against the same diagnosis on the CPU: a small conv net with BatchNorm,
trained briefly on the 8x8 digits, diagnosed on both devices; errors and losses per statistics and
batch size and the per-layer drift must agree (float reassociation aside), and the model must come
back unchanged. Writes a markdown table (GPU check of issue #32; run by scripts/gpu_checks.sh).

    python scripts/check_diagnose_cuda.py --out reports/bench/diagnose_cuda.md
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from normbench import diagnose
from normbench.argtypes import writable_file
from normbench.tasks import load_dataset


def trained_model(data) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(len(data.x_train), (32,), generator=gen)
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=writable_file, required=True)
    args = parser.parse_args()
    data = load_dataset("digits")
    model = trained_model(data)
    train = list(zip(data.x_train.split(64), data.y_train.split(64), strict=True))
    test = list(zip(data.x_test.split(64), data.y_test.split(64), strict=True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"batch_sizes": (2, 8, 32), "precise_samples": 1024, "precise_batch_size": 32}
    cpu = diagnose(model, train, test, device="cpu", **kwargs)
    cuda = diagnose(model.cuda(), train, test, device="cuda", **kwargs)
    unchanged = all(torch.equal(before[k], v.cpu()) for k, v in model.state_dict().items())
    merged = cpu.results.merge(
        cuda.results, on=["statistics", "batch_size", "split"], suffixes=("_cpu", "_cuda")
    )
    merged["error_diff"] = (merged.error_cpu - merged.error_cuda).abs()
    merged["loss_rel_diff"] = (merged.loss_cpu - merged.loss_cuda).abs() / merged.loss_cpu.abs().clip(
        lower=1e-12
    )
    lines = [
        f"# normbench.diagnose on CUDA ({torch.cuda.get_device_name()}) against the CPU",
        "",
        "Command: `python scripts/check_diagnose_cuda.py --out ...`",
        "",
        f"- Model unchanged after both diagnoses: {unchanged}.",
        f"- Largest |error CPU - CUDA|: {merged.error_diff.max():.4f}; largest relative loss difference: "
        f"{merged.loss_rel_diff.max():.2e}.",
        "",
        merged.to_markdown(index=False),
        "",
        "CUDA verdict: " + cuda.verdict,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
