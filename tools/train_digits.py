"""Train three small classifiers on scikit-learn's bundled 8x8 digits and export them to ONNX.

Writes models/trained/: digits_{resnet,mobilenet,transformer}.onnx (dynamic batch "N"), *_b1.onnx
(static batch 1), digits_resnet_bn.onnx (BatchNormalization nodes kept) and digits_data.npz
(calibration + test split, preprocessed exactly as the models expect).

Run from the repo root:  pip install torch==2.13.0 scikit-learn onnxscript; python tools/train_digits.py
Tool-time only: none of torch, scikit-learn or onnxscript is a runtime dependency of spa.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from export_fixtures import conv_bn  # tools/ is on sys.path when run as a script

OUT_DIR = Path(__file__).resolve().parent.parent / "models" / "trained"
SEED = 0
THREADS = 2
ATOL = 1e-4
N_CALIB, N_TEST = 200, 400  # the remaining 1197 samples train
CNN_SIZE = 16  # CNN input is the 8x8 image upsampled (bilinear) to 16x16
PATCH = 2  # transformer tokens are the 16 non-overlapping 2x2 patches of the 8x8 image


# ---------------------------------------------------------------- data


@dataclass
class Split:
    x: np.ndarray  # float32 model input
    y: np.ndarray  # int64 labels


def split_digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified train / calib / test split of the raw images (N, 8, 8) scaled to [0, 1]."""
    digits = load_digits()  # bundled with scikit-learn: no download
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=N_TEST, stratify=labels, random_state=SEED)
    train_x, calib_x, train_y, calib_y = train_test_split(
        rest_x, rest_y, test_size=N_CALIB, stratify=rest_y, random_state=SEED)
    return {"train": (train_x, train_y), "calib": (calib_x, calib_y), "test": (test_x, test_y)}


def upsample(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) -> (N, 1, 16, 16), bilinear."""
    x = torch.from_numpy(images)[:, None]
    return F.interpolate(x, size=(CNN_SIZE, CNN_SIZE), mode="bilinear", align_corners=False).numpy()


def to_tokens(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) -> (N, 16, 4): row-major 2x2 patches, each flattened row-major."""
    n, side = images.shape[0], images.shape[1] // PATCH
    patches = images.reshape(n, side, PATCH, side, PATCH).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(patches.reshape(n, side * side, PATCH * PATCH))


def normalised(raw: dict[str, tuple[np.ndarray, np.ndarray]],
               layout: Callable[[np.ndarray], np.ndarray]) -> dict[str, Split]:
    """Apply layout, then standardise with the train split's scalar mean/std."""
    laid = {name: layout(x) for name, (x, _) in raw.items()}
    mean, std = laid["train"].mean(), laid["train"].std()
    return {name: Split(((x - mean) / std).astype(np.float32), raw[name][1]) for name, x in laid.items()}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip timestamps so reruns give byte-identical files."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


# ---------------------------------------------------------------- models


class BasicBlock(nn.Module):
    """3x3 -> 3x3 with an identity or 1x1-conv + BN shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, act=None))
        self.downsample = (nn.Identity() if stride == 1 and cin == cout
                           else conv_bn(cin, cout, k=1, stride=stride, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.downsample(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 linear project, residual if shapes match."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(conv_bn(cin, hidden, k=1, act=nn.ReLU6),
                                  conv_bn(hidden, hidden, stride=stride, groups=hidden, act=nn.ReLU6),
                                  conv_bn(hidden, cout, k=1, act=None))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class Classifier(nn.Module):
    """features -> global average pool -> Linear."""

    def __init__(self, features: nn.Module, width: int) -> None:
        super().__init__()
        self.features = features
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def digits_resnet() -> nn.Module:
    """16x16: stem 32 -> block 32 -> block 64 (stride 2, 1x1 downsample) -> block 64 -> GAP -> FC."""
    return Classifier(nn.Sequential(conv_bn(1, 32), BasicBlock(32, 32), BasicBlock(32, 64, stride=2),
                                    BasicBlock(64, 64)), 64)


def digits_mobilenet() -> nn.Module:
    """16x16: stem 32 -> IR 32 (x3) -> IR 48 (x4, stride 2) -> IR 48 (x4) -> 1x1 head 96 -> GAP -> FC."""
    return Classifier(nn.Sequential(conv_bn(1, 32, act=nn.ReLU6),
                                    InvertedResidual(32, 32, expand=3),
                                    InvertedResidual(32, 48, expand=4, stride=2),
                                    InvertedResidual(48, 48, expand=4),
                                    conv_bn(48, 96, k=1, act=nn.ReLU6)), 96)


class SelfAttention(nn.Module):
    """Multi-head self-attention from plain Linears, so it exports as MatMul/Reshape/Transpose/Softmax."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.split_heads(self.q(x)), self.split_heads(self.k(x)), self.split_heads(self.v(x))
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.head_dim ** -0.5, dim=-1)
        return self.o((attn @ v).transpose(1, 2).reshape(batch, tokens, dim))


class EncoderLayer(nn.Module):
    """Pre-LN: x + MHSA(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsTransformer(nn.Module):
    """(N, 16, 4) patch tokens -> Linear embed + learned positions -> encoders -> LN -> mean pool -> FC."""

    def __init__(self, tokens: int = 16, patch_dim: int = 4, dim: int = 64, heads: int = 4,
                 mlp: int = 128, depth: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Linear(patch_dim, dim)
        self.dropout = nn.Dropout(dropout)  # on the embedded tokens; an identity in eval/ONNX
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads, mlp) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.dropout(self.embed(x) + self.pos))
        return self.head(self.norm(x).mean(dim=1))


# ---------------------------------------------------------------- training


@dataclass
class Recipe:
    build: Callable[[], nn.Module]
    data: str  # "cnn" or "tokens"
    epochs: int
    lr: float
    weight_decay: float


RECIPES: dict[str, Recipe] = {
    "digits_resnet": Recipe(digits_resnet, "cnn", epochs=20, lr=3e-3, weight_decay=1e-4),
    "digits_mobilenet": Recipe(digits_mobilenet, "cnn", epochs=30, lr=3e-3, weight_decay=1e-4),
    "digits_transformer": Recipe(DigitsTransformer, "tokens", epochs=60, lr=1e-3, weight_decay=5e-2),
}
BATCH = 64


def train(model: nn.Module, data: Split, recipe: Recipe) -> None:
    """AdamW + per-step cosine LR, label smoothing 0.1, seeded shuffling."""
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    steps_per_epoch = -(-len(x) // BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.epochs * steps_per_epoch)
    shuffle = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(x), generator=shuffle).split(BATCH):
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def torch_accuracy(model: nn.Module, data: Split) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(data.x)).argmax(1).numpy()
    return float((pred == data.y).mean())


# ---------------------------------------------------------------- export + check


def export(model: nn.Module, x: torch.Tensor, path: Path, *, dynamic: bool, keep_bn: bool = False) -> None:
    """Legacy TorchScript exporter, opset 17. keep_bn (PRESERVE on an eval model) skips Conv+BN folding."""
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, do_constant_folding=True,
                      input_names=["input"], output_names=["output"],
                      training=torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL,
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}} if dynamic else None)


def check(model: nn.Module, path: Path, batches: list[np.ndarray], keep_bn: bool) -> float:
    """onnx.checker + onnxruntime-vs-torch on each batch; returns the max abs error."""
    onnx.checker.check_model(str(path), full_check=True)
    has_bn = any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    assert has_bn == keep_bn, f"{path.name}: BatchNormalization present={has_bn}, wanted {keep_bn}"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    err = 0.0
    for x in batches:
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        (got,) = session.run(None, {"input": x})
        assert got.shape == expected.shape, (path.name, got.shape, expected.shape)
        err = max(err, float(np.abs(got - expected).max()))
    assert err <= ATOL, f"{path.name}: max abs error {err:.2e} > {ATOL}"
    return err


def ort_accuracy(path: Path, data: Split, batch: int | None) -> float:
    """Test accuracy with onnxruntime; batch=None feeds the whole split at once."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = batch or len(data.x)
    preds = [session.run(None, {"input": data.x[i:i + step]})[0].argmax(1) for i in range(0, len(data.x), step)]
    return float((np.concatenate(preds) == data.y).mean())


def export_all(name: str, model: nn.Module, data: dict[str, Split]) -> list[str]:
    """Every ONNX variant of one model, checked; returns one report line per file."""
    sample = data["test"].x[:1]
    variants = [("", True, False), ("_b1", False, False)] + ([("_bn", True, True)] if "resnet" in name else [])
    rows = []
    for suffix, dynamic, keep_bn in variants:
        path = OUT_DIR / f"{name}{suffix}.onnx"
        export(model, torch.from_numpy(sample), path, dynamic=dynamic, keep_bn=keep_bn)
        batches = [sample, data["test"].x] if dynamic else [sample]
        err = check(model, path, batches, keep_bn)
        acc = ort_accuracy(path, data["test"], batch=None if dynamic else 1)
        shape = "x".join(["N" if dynamic else "1", *map(str, sample.shape[1:])])
        rows.append(f"{path.name:28} {path.stat().st_size / 1024:7.1f}K input {shape:11} "
                    f"ort test acc {acc:.4f}  max|err| {err:.1e}")
    return rows


def seed_everything() -> None:
    torch.manual_seed(SEED)
    np.random.seed(SEED)


def quiet_deterministic_torch() -> None:
    """Exporter warnings off, THREADS threads, deterministic kernels, and OUT_DIR ready."""
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)


def main() -> None:
    quiet_deterministic_torch()
    raw = split_digits()
    datasets = {"cnn": normalised(raw, upsample), "tokens": normalised(raw, to_tokens)}
    save_npz(OUT_DIR / "digits_data.npz", {
        "calib_x": datasets["cnn"]["calib"].x, "calib_y": raw["calib"][1],
        "test_x": datasets["cnn"]["test"].x, "test_y": raw["test"][1],
        "calib_x_tokens": datasets["tokens"]["calib"].x, "test_x_tokens": datasets["tokens"]["test"].x})
    for name, recipe in RECIPES.items():
        seed_everything()
        model, data = recipe.build(), datasets[recipe.data]
        params = sum(p.numel() for p in model.parameters())
        start = time.perf_counter()
        train(model, data["train"], recipe)
        seconds = time.perf_counter() - start
        accs = " ".join(f"{split} {torch_accuracy(model, data[split]):.4f}" for split in ("train", "calib", "test"))
        print(f"{name}: {params} params, {recipe.epochs} epochs in {seconds:.1f}s, torch acc {accs}")
        print("\n".join("  " + row for row in export_all(name, model, data)), flush=True)
    print(f"data: digits_data.npz {(OUT_DIR / 'digits_data.npz').stat().st_size / 1024:.1f}K")


if __name__ == "__main__":
    main()
