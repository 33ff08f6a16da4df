"""Helpers shared by the criteria tests: tiny models with a known answer, calibration
files, and ways to read outputs and reports."""
from __future__ import annotations

import numpy as np
import onnx
from criteria_models import conv_relu_conv, three_convs, with_outputs
from oracle import run

SAMPLES = 16  # calibration images of [1, 6, 6]


def normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.normal(size=shape)).astype(np.float32)


def calibration_file(tmp_path, data: np.ndarray, name: str = "calib.npz"):
    """An .npz with one array named after the models' input."""
    path = tmp_path / name
    np.savez(path, input=data)
    return path


def images(rng: np.random.Generator, samples: int = SAMPLES, channels: int = 1) -> np.ndarray:
    return normal(rng, samples, channels, 6, 6)


def output(model: onnx.ModelProto, data: np.ndarray, name: str | None = None) -> np.ndarray:
    """The graph output, or the intermediate tensor `name`, on `data`."""
    if name is None:
        return run(model, {"input": data})[0]
    return run(with_outputs(model, [name]), {"input": data})[-1]


def removed(result, group: int = 0) -> list[int]:
    return result.report["groups"][group]["removed"]


def group_of(result, name: str) -> dict:
    return next(g for g in result.report["groups"] if g["name"] == name)


def assert_same_outputs(pruned: onnx.ModelProto, original: onnx.ModelProto, data: np.ndarray,
                        tolerance: float = 1e-5) -> None:
    """Equal up to `tolerance` of the output's scale (float32 arithmetic in both)."""
    want, got = output(original, data), output(pruned, data)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * float(np.abs(want).max()))


def channel_moments(values: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    moved = np.moveaxis(values.astype(np.float64), axis, -1).reshape(-1, values.shape[axis])
    return moved.mean(axis=0), moved.std(axis=0)


def duplicate_model(consumer_bias: bool = True, kernel: int = 1) -> onnx.ModelProto:
    """conv1 (1 -> 4) -> relu -> conv2 kxk (4 -> 3): channel 2 is an exact copy of channel 0
    (filter and bias), channel 3 has the smallest weights (0.5x) but matters on the data."""
    rng = np.random.default_rng(0)
    w1, b1 = normal(rng, 4, 1, 3, 3), normal(rng, 4, scale=0.3)
    w1[2], b1[2] = w1[0], b1[0]
    w1[3] *= 0.5
    b1[3] *= 0.5
    w2 = normal(rng, 3, 4, kernel, kernel)
    return conv_relu_conv(w1, b1, w2, normal(rng, 3) if consumer_bias else None)


def stacked_model(consumer_bias: bool = True, batch_norm: bool = False) -> onnx.ModelProto:
    """conv1 (1 -> 6) -> relu -> conv2 3x3 (6 -> 5) [-> bn2] -> relu -> conv3 1x1 (5 -> 2)."""
    rng = np.random.default_rng(6)
    bn = None
    if batch_norm:
        bn = dict(scale=normal(rng, 5) + 1, shift=normal(rng, 5), mean=normal(rng, 5),
                  var=np.abs(normal(rng, 5)) + 0.5)
    return three_convs(normal(rng, 6, 1, 3, 3), normal(rng, 6, scale=0.3),
                       normal(rng, 5, 6, 3, 3, scale=0.4), normal(rng, 5, scale=0.3) if consumer_bias else None,
                       normal(rng, 2, 5, 1, 1), normal(rng, 2), bn)


def dead_model() -> onnx.ModelProto:
    """conv1 (1 -> 4) -> relu -> conv2 3x3 (4 -> 3): channel 1 has a zero filter and bias -1,
    so it is 0 after the Relu on any input; the other channels are ordinary."""
    rng = np.random.default_rng(1)
    w1, b1 = normal(rng, 4, 1, 3, 3, scale=0.5), normal(rng, 4, scale=0.2)
    w1[1], b1[1] = 0, -1
    return conv_relu_conv(w1, b1, normal(rng, 3, 4, 3, 3, scale=0.5), normal(rng, 3))
