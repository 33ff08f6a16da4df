"""Train a BatchNorm-kept residual CNN on a procedurally generated shapes dataset and export it to ONNX.

The second trained dataset, so that pruning quality (data-free pruning above all) is not measured on
scikit-learn's digits alone. The images are drawn here with numpy: no download, no font, no Pillow.

Writes models/trained/: shapes_resnet_bn.onnx (dynamic batch "N", BatchNormalization nodes kept) and
shapes_data.npz (calibration + test split, preprocessed exactly as the model expects, with the array
names of digits_data.npz: calib_x, calib_y, test_x, test_y).

Run from the repo root:  pip install torch==2.13.0 scikit-learn onnxscript; python tools/train_shapes.py
Tool-time only: none of torch, scikit-learn or onnxscript is a runtime dependency of spa.

The dataset: 10 classes of 32x32 grayscale images, one shape each: ring, disk, square, triangle, plus,
x, diamond, hbar, vbar, star. Every image draws, from a seeded numpy Generator: the shape's scale,
position, rotation (+-20 degrees, so plus/x, square/diamond and hbar/vbar stay distinct), aspect
ratio and stroke width; a background level with a linear gradient; the contrast, dark-on-light or
light-on-dark; 0-2 thin clutter strokes; and Gaussian pixel noise of random strength. Edges are
antialiased from the exact distance to the shape's outline, and pixels are quantised to 8 bits.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import nn

from export_fixtures import conv_bn  # tools/ is on sys.path when run as a script
from train_digits import (BasicBlock, Classifier, Recipe, Split, check, export, ort_accuracy,
                          quiet_deterministic_torch, save_npz, seed_everything, torch_accuracy, train)

OUT_DIR = Path(__file__).resolve().parent.parent / "models" / "trained"
NAME = "shapes_resnet_bn"
SEED = 0
SIZE = 32
N_TRAIN, N_CALIB, N_TEST = 4000, 200, 400
CLASSES = ("ring", "disk", "square", "triangle", "plus", "x", "diamond", "hbar", "vbar", "star")
MAX_ROTATION = 20.0  # degrees; under 22.5 keeps plus apart from x and square apart from diamond


# ---------------------------------------------------------------- drawing


def polygon(sides: int, phase: float = 0.0, radii: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """(sides, 2) vertices on the unit circle (radii cycled), the first at angle `phase` from straight up."""
    angles = phase + 2 * np.pi * np.arange(sides) / sides
    r = np.resize(np.asarray(radii), sides)
    return np.stack([r * np.sin(angles), -r * np.cos(angles)], axis=1)


def closed(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The segments (starts, ends) of a closed polyline."""
    return vertices, np.roll(vertices, -1, axis=0)


# Outlines in shape coordinates (unit radius), as segment starts and ends. disk, hbar and vbar are filled.
OUTLINES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "ring": closed(polygon(48)),
    "square": closed(polygon(4, np.pi / 4)),
    "triangle": closed(polygon(3)),
    "diamond": closed(polygon(4) * np.array([0.62, 1.0])),
    "star": closed(polygon(10, radii=(1.0, 0.42))),
    "plus": (np.array([[-1.0, 0.0], [0.0, -1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]])),
    "x": (np.array([[-0.75, -0.75], [-0.75, 0.75]]), np.array([[0.75, 0.75], [0.75, -0.75]])),
}
BARS = {"hbar": np.array([[1.0, 0.0]]), "vbar": np.array([[0.0, 1.0]])}  # half-length axis


def segment_distance(px: np.ndarray, py: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Distance from each pixel centre (px, py) to the nearest of the segments starts[i] -> ends[i]."""
    ax, ay = starts[:, 0, None, None], starts[:, 1, None, None]
    dx, dy = (ends - starts)[:, 0, None, None], (ends - starts)[:, 1, None, None]
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    return np.sqrt((px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2).min(axis=0)


def render(label: int, rng: np.random.Generator) -> np.ndarray:
    """One (SIZE, SIZE) uint8 image of class `label`. Image coordinates run over [-1, 1]."""
    centres = (np.arange(SIZE) + 0.5) / SIZE * 2 - 1
    py, px = np.meshgrid(centres, centres, indexing="ij")
    pixel = 2.0 / SIZE
    name = CLASSES[label]

    scale = rng.uniform(0.4, 0.75)  # shape radius, in image half-widths
    theta = np.deg2rad(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    aspect = np.exp(rng.uniform(-0.15, 0.15))
    stretch = scale * np.array([aspect, 1 / aspect])
    centre = rng.uniform(-(0.95 - scale), 0.95 - scale, size=2)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])

    def to_image(v: np.ndarray) -> np.ndarray:
        return (v * stretch) @ rotation.T + centre

    stroke = rng.uniform(1.2, 3.0) * pixel
    if name == "disk":  # signed distance to the ellipse, approximated in shape coordinates
        local = np.stack([px - centre[0], py - centre[1]], axis=-1) @ rotation
        distance = (np.hypot(local[..., 0] / stretch[0], local[..., 1] / stretch[1]) - 1) * scale
    elif name in BARS:
        axis = BARS[name]
        distance = segment_distance(px, py, to_image(-axis), to_image(axis)) - rng.uniform(0.12, 0.3) * scale
    else:
        starts, ends = OUTLINES[name]
        distance = segment_distance(px, py, to_image(starts), to_image(ends)) - stroke / 2
    coverage = np.clip(0.5 - distance / pixel, 0.0, 1.0)  # antialiased: a 1-pixel ramp across the edge

    image = rng.uniform(0.05, 0.5) + rng.uniform(-0.15, 0.15) * px + rng.uniform(-0.15, 0.15) * py
    contrast = rng.uniform(0.3, 0.7) * rng.choice([-1.0, 1.0])
    for _ in range(rng.integers(0, 3)):  # clutter: short thin strokes anywhere
        start = rng.uniform(-1, 1, size=2)
        angle = rng.uniform(0, np.pi)
        end = start + rng.uniform(0.15, 0.4) * np.array([np.cos(angle), np.sin(angle)])
        d = segment_distance(px, py, start[None], end[None]) - rng.uniform(0.5, 1.2) * pixel / 2
        image = image + contrast * rng.uniform(0.3, 0.7) * np.clip(0.5 - d / pixel, 0.0, 1.0)
    image = image + contrast * coverage + rng.normal(0.0, rng.uniform(0.03, 0.2), size=image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def generate(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (n // 10 of each class, in a seeded random order) as (n, SIZE, SIZE) uint8, and labels."""
    rng = np.random.default_rng(SEED)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int64)
    return np.stack([render(int(label), rng) for label in labels]), labels


# ---------------------------------------------------------------- data


def split_shapes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified train / calib / test split of the images (N, SIZE, SIZE) scaled to [0, 1]."""
    images, labels = generate(N_TRAIN + N_CALIB + N_TEST)
    images = images.astype(np.float32) / 255.0
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=N_TEST, stratify=labels, random_state=SEED)
    train_x, calib_x, train_y, calib_y = train_test_split(
        rest_x, rest_y, test_size=N_CALIB, stratify=rest_y, random_state=SEED)
    return {"train": (train_x, train_y), "calib": (calib_x, calib_y), "test": (test_x, test_y)}


def normalised(raw: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Split]:
    """(N, SIZE, SIZE) -> (N, 1, SIZE, SIZE), standardised with the train split's scalar mean/std."""
    mean, std = raw["train"][0].mean(), raw["train"][0].std()
    return {name: Split(((x[:, None] - mean) / std).astype(np.float32), y) for name, (x, y) in raw.items()}


def linear_baseline(data: dict[str, Split]) -> float:
    """Test accuracy of multinomial logistic regression on the raw pixels: the dataset is not linear."""
    flat = {name: split.x.reshape(len(split.x), -1) for name, split in data.items()}
    classifier = LogisticRegression(max_iter=200).fit(flat["train"], data["train"].y)
    return float(classifier.score(flat["test"], data["test"].y))


# ---------------------------------------------------------------- model


def shapes_resnet() -> nn.Module:
    """32x32: stem 16 -> block 16 -> block 32 (stride 2) -> block 32 -> block 64 (stride 2) -> block 64 -> GAP -> FC."""
    return Classifier(nn.Sequential(conv_bn(1, 16), BasicBlock(16, 16),
                                    BasicBlock(16, 32, stride=2), BasicBlock(32, 32),
                                    BasicBlock(32, 64, stride=2), BasicBlock(64, 64)), 64)


RECIPE = Recipe(shapes_resnet, "cnn", epochs=8, lr=3e-3, weight_decay=1e-4)


def main() -> None:
    quiet_deterministic_torch()
    start = time.perf_counter()
    raw = split_shapes()
    data = normalised(raw)
    print(f"data: {N_TRAIN}/{N_CALIB}/{N_TEST} images of {SIZE}x{SIZE} in {time.perf_counter() - start:.1f}s, "
          f"linear baseline test acc {linear_baseline(data):.4f}", flush=True)
    data_path = OUT_DIR / "shapes_data.npz"
    save_npz(data_path, {"calib_x": data["calib"].x, "calib_y": data["calib"].y,
                         "test_x": data["test"].x, "test_y": data["test"].y})

    seed_everything()
    model = RECIPE.build()
    params = sum(p.numel() for p in model.parameters())
    start = time.perf_counter()
    train(model, data["train"], RECIPE)
    seconds = time.perf_counter() - start
    accs = " ".join(f"{split} {torch_accuracy(model, data[split]):.4f}" for split in ("train", "calib", "test"))
    print(f"{NAME}: {params} params, {RECIPE.epochs} epochs in {seconds:.1f}s, torch acc {accs}")

    path = OUT_DIR / f"{NAME}.onnx"
    sample = data["test"].x[:1]
    export(model, torch.from_numpy(sample), path, dynamic=True, keep_bn=True)
    err = check(model, path, [sample, data["test"].x], keep_bn=True)
    acc = ort_accuracy(path, data["test"], batch=None)
    print(f"  {path.name:28} {path.stat().st_size / 1024:7.1f}K input Nx1x{SIZE}x{SIZE} "
          f"ort test acc {acc:.4f}  max|err| {err:.1e}")
    print(f"  {data_path.name:28} {data_path.stat().st_size / 1024:7.1f}K")


if __name__ == "__main__":
    main()
