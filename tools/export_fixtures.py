"""Build small, seeded, randomly initialised CNNs and export them as ONNX fixtures.

Run from the repo root:  python tools/export_fixtures.py
Needs torch (and onnxscript for the dynamo exporter); neither is a runtime dependency of spa.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from fixture_report import max_error, print_report, summary  # tools/ is on sys.path when run as a script

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
SEED = 0
ATOL = 1e-4


# ---------------------------------------------------------------- building blocks


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
            act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> optional activation."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))


def shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    """Identity, or a 1x1-conv + BN projection when the shape changes."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return conv_bn(cin, cout, k=1, stride=stride, act=None)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, act=None))
        self.shortcut = shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (optionally grouped, ResNeXt) -> 1x1 expand."""

    def __init__(self, cin: int, width: int, stride: int = 1, groups: int = 1,
                 expansion: int = 4) -> None:
        super().__init__()
        cout = width * expansion
        self.body = nn.Sequential(conv_bn(cin, width, k=1),
                                  conv_bn(width, width, stride=stride, groups=groups),
                                  conv_bn(width, cout, k=1, act=None))
        self.shortcut = shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(s))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block (ReLU6) or, with se=True, EfficientNet MBConv (SiLU + squeeze-excite)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, se: bool = False) -> None:
        super().__init__()
        hidden = cin * expand
        act = nn.SiLU if se else nn.ReLU6
        layers: list[nn.Module] = [conv_bn(cin, hidden, k=1, act=act)] if expand != 1 else []
        layers.append(conv_bn(hidden, hidden, stride=stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcite(hidden, max(1, cin // 4)))
        layers.append(conv_bn(hidden, cout, k=1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class DenseLayer(nn.Module):
    """Pre-activation BN-ReLU-1x1 -> BN-ReLU-3x3; output concatenated to the input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                                  nn.BatchNorm2d(4 * growth), nn.ReLU(),
                                  nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class ReshapeFlatten(nn.Module):
    """`x.view(x.size(0), -1)`, the classic hand-written flatten: Reshape (not Flatten) in ONNX."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.size(0), -1)


class UNet(nn.Module):
    def __init__(self, cin: int = 3, classes: int = 2, w: int = 16) -> None:
        super().__init__()
        self.enc1, self.enc2, self.mid = double_conv(cin, w), double_conv(w, 2 * w), double_conv(2 * w, 4 * w)
        self.dec2, self.dec1 = double_conv(4 * w + 2 * w, 2 * w), double_conv(2 * w + w, w)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up(m), e2], dim=1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="bilinear"), e1], dim=1))
        return self.head(d1)


# ---------------------------------------------------------------- architectures


def classifier(channels: int, classes: int = 10, flatten: nn.Module | None = None) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), flatten or nn.Flatten(), nn.Linear(channels, classes)]


def resnet_basic() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16),
                         BasicBlock(16, 16), BasicBlock(16, 16),
                         BasicBlock(16, 32, stride=2), BasicBlock(32, 32),
                         BasicBlock(32, 64, stride=2),
                         *classifier(64, flatten=ReshapeFlatten()))


def resnet_bottleneck() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16),
                         Bottleneck(16, 8), Bottleneck(32, 8),
                         Bottleneck(32, 16, stride=2), Bottleneck(64, 16),
                         *classifier(64))


def mobilenetv2() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16, act=nn.ReLU6),
                         InvertedResidual(16, 16, 1, expand=1),
                         InvertedResidual(16, 24, 2, expand=6), InvertedResidual(24, 24, 1, expand=6),
                         InvertedResidual(24, 32, 2, expand=6), InvertedResidual(32, 32, 1, expand=6),
                         conv_bn(32, 128, k=1, act=nn.ReLU6),
                         *classifier(128))


def resnext() -> nn.Module:
    return nn.Sequential(conv_bn(3, 32),
                         Bottleneck(32, 32, groups=8, expansion=2), Bottleneck(64, 32, groups=8, expansion=2),
                         Bottleneck(64, 64, stride=2, groups=8, expansion=2),
                         *classifier(128))


def vgg() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16), conv_bn(16, 16), nn.MaxPool2d(2),
                         conv_bn(16, 32), conv_bn(32, 32), nn.MaxPool2d(2),
                         conv_bn(32, 64), conv_bn(64, 64), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(128, 10))


def densenet(growth: int = 8, layers: int = 3) -> nn.Module:
    def block(cin: int) -> tuple[list[nn.Module], int]:
        return [DenseLayer(cin + i * growth, growth) for i in range(layers)], cin + layers * growth

    def transition(cin: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cin // 2, 1, bias=False), nn.AvgPool2d(2)]

    block1, c1 = block(16)
    block2, c2 = block(c1 // 2)
    block3, c3 = block(c2 // 2)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                         *block1, *transition(c1), *block2, *transition(c2), *block3,
                         nn.BatchNorm2d(c3), nn.ReLU(), *classifier(c3))


def unet() -> nn.Module:
    return UNet()


def efficientnet_se() -> nn.Module:
    return nn.Sequential(conv_bn(3, 16, stride=1, act=nn.SiLU),
                         InvertedResidual(16, 16, 1, expand=1, se=True),
                         InvertedResidual(16, 24, 2, expand=4, se=True),
                         InvertedResidual(24, 24, 1, expand=4, se=True),
                         InvertedResidual(24, 40, 2, expand=4, se=True),
                         conv_bn(40, 128, k=1, act=nn.SiLU),
                         *classifier(128))


ARCHS: dict[str, Callable[[], nn.Module]] = {f.__name__: f for f in (
    resnet_basic, resnet_bottleneck, mobilenetv2, resnext, vgg, densenet, unet, efficientnet_se)}
INPUT_SHAPE = (1, 3, 32, 32)
# file-name suffix of each variant beyond <arch>.onnx and <arch>_dynamo.onnx
EXTRA_VARIANTS = {"resnet_basic": ("_bn", "_dynbatch"), "mobilenetv2": ("_bn",)}


def build(arch: str) -> nn.Module:
    """Seeded model with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(SEED)
    model = ARCHS[arch]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


# ---------------------------------------------------------------- export + check


def export_legacy(model: nn.Module, x: torch.Tensor, path: Path, *, keep_bn: bool = False,
                  dynamic_batch: bool = False) -> None:
    """TorchScript exporter. keep_bn exports in PRESERVE mode, which skips the Conv+BN fusion pass."""
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, do_constant_folding=True,
                      input_names=["input"], output_names=["output"],
                      training=torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL,
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None)


def export_dynamo(model: nn.Module, x: torch.Tensor, path: Path) -> None:
    """torch.export-based exporter, saved as one self-contained file.

    Per-node stack traces are dropped: they hold absolute paths of this machine's site-packages.
    """
    proto = torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    onnx.save(proto, str(path), save_as_external_data=False)


def check(path: Path) -> onnx.ModelProto:
    """The file must be self-contained and valid."""
    model = onnx.load(str(path), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer), path
    onnx.checker.check_model(str(path), full_check=True)
    return model


def compare(model: nn.Module, path: Path, x: torch.Tensor) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return max_error(path.name, got, expected, ATOL)


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path], None]] = {
    "": export_legacy,
    "_dynamo": export_dynamo,
    "_bn": partial(export_legacy, keep_bn=True),
    "_dynbatch": partial(export_legacy, dynamic_batch=True),
}


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" noise
    MODELS_DIR.mkdir(exist_ok=True)
    rows, skipped = [], []
    for arch in ARCHS:
        model = build(arch)
        x = torch.randn(*INPUT_SHAPE, generator=torch.Generator().manual_seed(SEED))
        for suffix in ("", "_dynamo", *EXTRA_VARIANTS.get(arch, ())):
            path = MODELS_DIR / f"{arch}{suffix}.onnx"
            try:
                EXPORTERS[suffix](model, x, path)
            except Exception as e:  # noqa: BLE001 - a dynamo failure is skipped, anything else is fatal
                if suffix != "_dynamo":
                    raise
                path.unlink(missing_ok=True)
                skipped.append(f"{path.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
                continue
            onnx_model = check(path)
            err = compare(model, path, x)
            if suffix == "_dynbatch":
                err = max(err, compare(model, path, x.repeat(3, 1, 1, 1)))
            if suffix == "_bn":
                assert any(n.op_type == "BatchNormalization" for n in onnx_model.graph.node), path.name
            rows.append(summary(onnx_model, path, err))
    print_report(rows, MODELS_DIR, skipped)


if __name__ == "__main__":
    main()
