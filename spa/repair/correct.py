"""Statistics correction: after pruning, give each layer whose inputs lost channels the
output mean and variance it had before, per kept output channel.

For an output channel with mean/std (mu0, s0) before pruning and (mu1, s1) after, on the
same calibration data, with r = s1 / s0:
- a BatchNormalization reading the layer gets running statistics that map the new
  distribution onto the old one: std' = std * r, mean' = mu1 - (mu0 - mean) * r;
- otherwise (BatchNorm folded into the layer by the exporter) the layer's row is scaled
  by 1/r and its bias shifted: y' = (y - mu1) / r + mu0.
Safeguards: r is clipped to [0.1, 10]; where either std is below 1e-8 of the other's
scale (a channel dead before or after), only the mean is restored. Layers are corrected
in graph order, each measured after the ones upstream of it were corrected.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from spa.calibrate.collect import Moments
from spa.calibrate.frontier import DEFAULT_BUDGET, Frontier
from spa.calibrate.layers import LinearLayer, in_graph_order
from spa.calibrate.sources import Calibration
from spa.io.load import read_values
from spa.progress import progress

RATIO_LIMITS = (0.1, 10.0)
ROUNDING = 1e-5  # a std below this share of the layer's largest mean is float32 rounding, not spread
CHUNK_LAYERS = 16  # layers whose reference statistics one segment measures
CHUNK_BYTES = 64 << 20  # and the most bytes of their weights


def output_moments(graph: gs.Graph, layers: list[LinearLayer], calibration: Calibration, ir_version: int,
                   budget: int = DEFAULT_BUDGET) -> dict[str, Moments]:
    """Per layer (by node name): mean and variance of each output channel. Nothing changes
    the graph meanwhile, so consecutive layers are measured together, one segment (one
    onnxruntime session) per chunk of them."""
    moments = {layer.node.name: Moments(layer.channel_axis) for layer in layers}
    with Frontier(graph, calibration, ir_version, budget=budget) as frontier:
        for chunk in progress(_chunks(in_graph_order(graph, layers)), "output statistics"):
            frontier.measure({layer.output.name: [moments[layer.node.name]] for layer in chunk})
    return moments


def _chunks(layers: list[LinearLayer]) -> list[list[LinearLayer]]:
    """Consecutive layers, at most CHUNK_LAYERS, or CHUNK_BYTES of weights (a segment holds
    its layers' weights, and a run returns every layer's output at once)."""
    chunks: list[list[LinearLayer]] = []
    size = 0
    for layer in layers:
        weight_bytes = int(np.prod(layer.weight.shape)) * 4
        if not chunks or len(chunks[-1]) == CHUNK_LAYERS or size + weight_bytes > CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(layer)
        size += weight_bytes
    return chunks


def correct_statistics(graph: gs.Graph, layers: list[LinearLayer], reference: dict[str, Moments],
                       removed_outputs: dict[str, set[int]], calibration: Calibration, ir_version: int,
                       budget: int = DEFAULT_BUDGET, removed: dict[tuple[str, int], set[int]] | None = None) -> None:
    """Restore every layer's kept output channels' moments, measured on the pruned graph
    (`removed`: every removed position, by (initializer, axis), so LayerNormalizations over
    units a hidden group removed normalize over the kept ones, as the pruned model will)."""
    ordered = in_graph_order(graph, layers)
    written = [_weights_written(layer) for layer in ordered]
    with Frontier(graph, calibration, ir_version, written, budget, removed) as frontier:
        for task, layer in enumerate(progress(ordered, "statistics correction")):
            now = Moments(layer.channel_axis)
            norm = _following_batchnorm(layer)
            rows_change = norm is None and layer.bias is not None
            frontier.measure({layer.output.name: [now]}, hold=[layer.output.name] if rows_change else [])
            before = reference[layer.node.name]
            kept = np.setdiff1d(np.arange(len(before.mean)), sorted(removed_outputs.get(layer.node.name, ())))
            ratio = _std_ratio(before.variance, now.variance, before.mean)
            updates = {}
            if norm is not None:
                _restore_batchnorm(norm, before.mean, now.mean, ratio, kept)
            elif rows_change:
                updates[layer.output.name] = _restore_rows(layer, before.mean, now.mean, ratio, kept)
            frontier.done_with(task, updates)


def _weights_written(layer: LinearLayer) -> set[str]:
    """What correcting `layer` changes: its weight and bias, or its BatchNorm's statistics."""
    norm = _following_batchnorm(layer)
    if norm is not None:
        return {norm.inputs[3].name, norm.inputs[4].name}
    return {layer.weight.name} | ({layer.bias.name} if layer.bias is not None else set())


def _std_ratio(variance_before: np.ndarray, variance_after: np.ndarray, mean_before: np.ndarray) -> np.ndarray:
    """s1 / s0 per channel, 1 where either is (near) zero, clipped to RATIO_LIMITS. Near
    zero: below 1e-8 of the layer's largest std, or below ROUNDING of its largest mean (a
    constant channel, e.g. pooled after a BatchNorm renormalized per sample, whose spread
    is float32 rounding of the values summed into it)."""
    before, after = np.sqrt(variance_before), np.sqrt(variance_after)
    tiny = max(1e-8 * float(before.max(initial=0.0)), ROUNDING * float(np.abs(mean_before).max(initial=0.0)), 1e-30)
    usable = (before > tiny) & (after > tiny)
    ratio = np.ones_like(before)
    ratio[usable] = after[usable] / before[usable]
    return np.clip(ratio, *RATIO_LIMITS)


def _following_batchnorm(layer: LinearLayer) -> gs.Node | None:
    readers = layer.output.outputs
    if len(readers) == 1 and readers[0].op == "BatchNormalization" and readers[0].inputs[0] is layer.output \
            and all(isinstance(t, gs.Constant) for t in readers[0].inputs[1:5]):
        return readers[0]
    return None


def _restore_batchnorm(norm: gs.Node, mean_before: np.ndarray, mean_after: np.ndarray,
                       ratio: np.ndarray, kept: np.ndarray) -> None:
    mean_tensor, variance_tensor = norm.inputs[3], norm.inputs[4]
    epsilon = norm.attrs.get("epsilon", 1e-5)
    running_mean, running_variance = read_values(mean_tensor), read_values(variance_tensor)
    mean = running_mean.astype(np.float64)
    std = np.sqrt(running_variance.astype(np.float64) + epsilon)
    new_mean, new_std = mean.copy(), std.copy()
    new_std[kept] = std[kept] * ratio[kept]
    new_mean[kept] = mean_after[kept] - (mean_before[kept] - mean[kept]) * ratio[kept]
    mean_tensor.values = new_mean.astype(running_mean.dtype)
    variance_tensor.values = np.maximum(np.square(new_std) - epsilon, 0).astype(running_variance.dtype)


def _restore_rows(layer: LinearLayer, mean_before: np.ndarray, mean_after: np.ndarray,
                  ratio: np.ndarray, kept: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Scale and shift the layer's rows; returns what that does to its output's values
    (the frontier keeps those instead of running the layer again)."""
    factors, shifts = np.ones(len(ratio)), np.zeros(len(ratio))
    factors[kept] = 1 / ratio[kept]
    shifts[kept] = mean_before[kept] - factors[kept] * mean_after[kept]
    layer.scale_outputs(factors, shifts)
    axis = layer.channel_axis

    def update(values: np.ndarray) -> np.ndarray:
        shape = [1] * values.ndim
        shape[axis] = -1
        return values * factors.reshape(shape).astype(values.dtype) + shifts.reshape(shape).astype(values.dtype)
    return update
