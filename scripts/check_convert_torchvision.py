"""convert_norms on real torchvision models (weights=None): every former norm replaced, a forward and a
training step work, the output shape and dtype are unchanged, and BatchNorm statistics carried into
frozen_batchnorm reproduce the eval-mode output. Writes reports/bench/convert_torchvision.md.

Needs an environment where torchvision imports (``pip install "normbench[vision]"`` beside a matching
torch); the CPU test suite checks the same properties on in-project models of the same structure.

    python scripts/check_convert_torchvision.py [--device cpu|cuda] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import platform
from pathlib import Path

import torch
from torch import nn

import normbench
from normbench import convert_norms
from normbench.argtypes import known_device, writable_file
from normbench.convert import norm_channels

MODELS = ("resnet18", "resnet50", "mobilenet_v3_small", "convnext_tiny", "vit_b_16")
TIMM_MODELS = ("efficientnet_b0", "resnet18")  # timm's, where timm is installed (BatchNormAct2d layers)
TARGETS = {  # target norm -> options
    "groupnorm": {"num_groups": 8},
    "layernorm": {},
    "batchrenorm": {},
    "frozen_batchnorm": {},
    "ws_groupnorm": {"num_groups": 8},
    "frn": {},
}


def channel_first_norms(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if n and norm_channels(m) is not None]


def build(name: str) -> nn.Module:
    if name.startswith("timm:"):
        import timm

        return timm.create_model(name[5:], pretrained=False, num_classes=10)
    import torchvision

    return torchvision.models.get_model(name, weights=None, num_classes=10)


def check(name: str, target: str, options: dict, device: str) -> str:
    torch.manual_seed(0)
    model = build(name).to(device)
    size = 224 if name == "vit_b_16" else 64
    x = torch.randn(4, 3, size, size, device=device)
    before = channel_first_norms(model)
    model.eval()
    expected = model(x)
    try:
        done = convert_norms(copy.deepcopy(model), target, **options)  # probe: hooks may refuse
    except ValueError as exc:
        return f"refused: {str(exc).split(':', 1)[1].strip()[:140]}"
    converted = copy.deepcopy(model)
    done = convert_norms(converted, target, **options)
    assert [c.name for c in done] == before
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in converted.modules())
    out = converted(x)
    assert out.shape == expected.shape and out.dtype == expected.dtype
    exact = ""
    all_batchnorm = all(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in map(model.get_submodule, before)
    )
    if target == "frozen_batchnorm" and all_batchnorm:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        exact = ", eval output equal"
    converted.train()
    loss = converted(x).logsumexp(1).mean()
    loss.backward()
    torch.optim.SGD(converted.parameters(), lr=0.01).step()
    assert torch.isfinite(converted(x)).all()
    if not done:
        return "nothing to convert (token LayerNorms only)"
    return f"{len(done)} layers converted, training step ok{exact}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", type=known_device, default="cpu")
    parser.add_argument(
        "--out",
        type=writable_file,
        default=Path(__file__).parents[1] / "reports/bench/convert_torchvision.md",
    )
    args = parser.parse_args()
    try:
        import torchvision
    except ImportError as exc:
        raise SystemExit(f"check_convert_torchvision: needs torchvision beside this torch ({exc})") from None
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "CPU"
    )
    lines = [
        "# convert_norms on torchvision models",
        "",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, normbench {normbench.__version__}, "
        f"device {args.device} ({device_name}). Reproduce: `python scripts/check_convert_torchvision.py "
        f"--device {args.device}`. Models built with weights=None, num_classes=10; inputs of 4 images "
        "(64×64, 224×224 for vit_b_16).",
        "",
        "| model | norm layers | " + " | ".join(TARGETS) + " |",
        "|---|---:|" + "---|" * len(TARGETS),
    ]
    try:
        import timm

        extra = [f"timm:{n}" for n in TIMM_MODELS]
        lines[2] += f" timm {timm.__version__}: rows marked timm:."
    except ImportError:
        extra = []
    for name in (*MODELS, *extra):
        model = build(name)
        cells = [check(name, target, options, args.device) for target, options in TARGETS.items()]
        lines.append(f"| {name} | {len(channel_first_norms(model))} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines += [
        "",
        "Refusals are convert_norms' own messages (cut to 140 characters): a hook the model's structure does "
        "not allow is refused before anything changes. ConvNeXt's blocks normalize with a plain nn.LayerNorm "
        "over the last dimension of channels-last tensors, which is not a channel-first norm and stays; its "
        "LayerNorm2d layers (stem and downsampling) are converted. ViT has token LayerNorms only.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
