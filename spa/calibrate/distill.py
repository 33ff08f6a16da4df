"""Synthetic images that reproduce what a model records about its input.

A model whose first layers end in a BatchNormalization records, in that node's running
mean and variance, the per-channel statistics its stem produced from the training images.
White N(0, 1) noise gives a very different profile: real images are smooth, their power
falling with spatial frequency f roughly as 1/f^slope, and a stem's filters respond to
smooth and noisy inputs very differently. Without data spa therefore draws images as
offset + scale * (noise with a 1/f^slope power spectrum), and picks, without gradients:

- the slope (0 to 5 in steps of 0.5) whose stem output has the per-channel variance
  profile closest to the running variances (log ratios, up to one common factor);
- the scale that then matches their overall level;
- one offset per input channel, by least squares, so the stem output's means match the
  running means (the stem is measured at unit offsets of each channel).

This is the "distilled data" idea of ZeroQ and DFPC, fitted in a few onnxruntime runs of
the stem instead of by back-propagation. It applies to a single float input [N, C, H, W]
with fixed C, H and W whose first BatchNormalization (the first one no other precedes) has
constant statistics; other models keep N(0, 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from spa.io.inputs import constant_tensors, input_specs
from spa.io.runtime import session

SLOPES = tuple(np.arange(0.0, 5.01, 0.5))
FIT_SAMPLES = 16  # images per fitting run at most ...
FIT_PIXELS = 1 << 18  # ... and at least 2, about this many pixels per channel in all
MIN_SIZE = 4  # smaller images have no spectrum worth fitting
RESPONSE_RCOND = 1e-4  # offsets ignore directions of the stem's response below this share of its largest
OFFSET_LIMIT = 4.0  # |offset| at most this many times the images' scale


@dataclass(frozen=True)
class ImageRecipe:
    """How to draw images for input `name`, and what they were fitted to."""

    name: str
    slope: float
    scale: float
    offset: np.ndarray  # per input channel
    norm: str  # the BatchNormalization node whose statistics were matched

    def images(self, shape: list[int], rng: np.random.Generator, dtype: np.dtype) -> np.ndarray:
        noise = colored_noise(shape, self.slope, rng)
        return (self.offset.reshape(1, -1, 1, 1) + self.scale * noise).astype(dtype)

    def describe(self) -> str:
        return (f"images with a 1/f^{self.slope:g} spectrum fitted to the statistics of BatchNorm "
                f"'{self.norm}'")


def colored_noise(shape: list[int], slope: float, rng: np.random.Generator,
                  white: np.ndarray | None = None) -> np.ndarray:
    """[N, C, H, W] noise whose power falls as 1/f^slope, each image and channel scaled to
    mean 0 and variance 1; from the complex spectrum `white` if given (see white_spectrum)."""
    n, c, h, w = shape
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    frequency = np.sqrt(fy ** 2 + fx ** 2)
    frequency[0, 0] = 1.0 / max(h, w)
    amplitude = frequency ** (-slope / 2)
    spectrum = white_spectrum(shape, rng) if white is None else white
    images = np.fft.irfft2(spectrum * amplitude, s=(h, w))
    images -= images.mean(axis=(2, 3), keepdims=True)
    images /= np.maximum(images.std(axis=(2, 3), keepdims=True), 1e-12)
    return images.astype(np.float32)


def white_spectrum(shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Complex white noise for the half spectrum of [N, C, H, W] real images."""
    half = (*shape[:3], shape[3] // 2 + 1)
    return rng.standard_normal(half) + 1j * rng.standard_normal(half)


def image_recipe(model: onnx.ModelProto, seed: int = 0) -> ImageRecipe | None:
    """The recipe for the model's image input, or None where it does not apply."""
    specs = input_specs(model)
    if len(specs) != 1 or specs[0].dtype.kind != "f" or len(specs[0].shape) != 4:
        return None
    spec = specs[0]
    if not all(isinstance(d, int) for d in spec.shape[1:]) or min(spec.shape[2:]) < MIN_SIZE:
        return None
    constants = constant_tensors(model)
    norm = _first_batchnorm(model, spec.name, constants)
    if norm is None:
        return None
    try:
        stem = session(_stem_model(model, spec.name, norm.input[0]))
        samples = int(np.clip(FIT_PIXELS // (spec.shape[2] * spec.shape[3]), 2, FIT_SAMPLES))
        batch = spec.shape[0] if isinstance(spec.shape[0], int) else samples  # a static batch is run as it is
        samples += -samples % batch
        return _fit(stem, spec.name, norm, constants, [samples, *spec.shape[1:]], batch, seed)
    except Exception:  # noqa: BLE001 - a stem onnxruntime cannot run alone (external data, ...): no recipe
        return None


def _stem_model(model: onnx.ModelProto, image: str, output: str) -> onnx.ModelProto:
    """The nodes of `model` that compute `output` from `image`, as a model of its own."""
    producer = {name: node for node in model.graph.node for name in node.output}
    needed, pending = [], [output]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        node = producer.get(name)
        if name in seen or node is None:
            continue
        seen.add(name)
        needed.append(node)
        pending.extend(node.input)
    order = {id(node): index for index, node in enumerate(model.graph.node)}
    nodes = sorted({id(n): n for n in needed}.values(), key=lambda n: order[id(n)])
    read = {name for node in nodes for name in node.input}
    graph = onnx.helper.make_graph(nodes, "stem", [i for i in model.graph.input if i.name == image],
                                   [onnx.helper.make_empty_tensor_value_info(output)],
                                   [t for t in model.graph.initializer if t.name in read])
    stem = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    stem.ir_version = model.ir_version
    return stem


def _first_batchnorm(model: onnx.ModelProto, image: str,
                     constants: dict[str, onnx.TensorProto]) -> onnx.NodeProto | None:
    """The first BatchNormalization computed from `image` with no other before it, if its
    statistics are `constants`."""
    reached, normalized = {image}, set()
    for node in model.graph.node:  # ONNX lists nodes in topological order
        if not any(name in reached for name in node.input):
            continue
        if node.op_type == "BatchNormalization" and not any(name in normalized for name in node.input):
            if len(node.input) == 5 and all(name in constants for name in node.input[3:5]):
                return node
            return None
        reached.update(node.output)
        if node.op_type == "BatchNormalization" or any(name in normalized for name in node.input):
            normalized.update(node.output)
    return None


def _fit(stem, image: str, norm: onnx.NodeProto, constants: dict[str, onnx.TensorProto], shape: list[int],
         batch: int, seed: int) -> ImageRecipe | None:
    """The slope, scale and offsets whose stem output matches `norm`'s running statistics."""
    running_mean = numpy_helper.to_array(constants[norm.input[3]]).astype(np.float64)
    running_variance = numpy_helper.to_array(constants[norm.input[4]]).astype(np.float64)
    rng = np.random.default_rng(seed)

    def moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        runs = [stem.run(None, {image: images[start:start + batch].astype(np.float32)})[0]
                for start in range(0, len(images), batch)]
        out = np.concatenate(runs).astype(np.float64)
        return out.mean(axis=(0, 2, 3)), out.var(axis=(0, 2, 3))

    best = None
    white = white_spectrum(shape, rng)  # the same draws for every slope: only the slope differs
    for slope in SLOPES:
        noise = colored_noise(shape, slope, rng, white)
        _, variance = moments(noise)
        alive = (variance > 0) & (running_variance > 0)  # a dead stem channel says nothing of the spectrum
        if not alive.any():
            continue
        log_ratio = np.log(variance[alive]) - np.log(running_variance[alive])
        mismatch = float(np.mean((log_ratio - log_ratio.mean()) ** 2))
        if best is None or mismatch < best[0]:
            best = (mismatch, slope, float(np.exp(-log_ratio.mean() / 2)), noise)
    if best is None:
        return None
    _, slope, scale, noise = best
    base = scale * noise
    mean0, _ = moments(base)
    response = np.stack([moments(base + np.eye(shape[1])[i].reshape(1, -1, 1, 1))[0] - mean0
                         for i in range(shape[1])], axis=1)
    # the responses are measured in float32: directions they barely move (a stem that is
    # rank-deficient, 3 -> 2 -> 3 channels) are noise, and solving for them gave offsets of 1e8
    offset = np.linalg.lstsq(response, running_mean - mean0, rcond=RESPONSE_RCOND)[0]
    # a stem that responds weakly to offsets asks for huge ones (4e4 beside a scale of 8, on a
    # generated graph), and float32 rounding of such inputs then swamps what is measured:
    # normalized images keep their channel means within a few standard deviations
    offset = np.clip(offset, -OFFSET_LIMIT * scale, OFFSET_LIMIT * scale)
    return ImageRecipe(image, float(slope), scale, offset.astype(np.float64), norm.name or norm.output[0])
