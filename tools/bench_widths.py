"""Which channel counts does onnxruntime's CPU provider run at full speed per MAC?

Pruning promises latency proportional to MACs, but kernels tuned for blocked channel
layouts may run an odd width no faster than the next aligned one. For each op kind,
base width and thread count this times every width from base-32 to base, with all
widths of a group interleaved in random order in one process, and prints

    latency(width) / (latency(base) * MACs(width) / MACs(base))

i.e. 1.00 = as fast per MAC as the unpruned base width, 1.25 = 25% slower than the
linear MAC expectation. It ends by recommending the smallest --round-to N whose
multiples get within a tolerance of the best per-MAC efficiency of any N.

A grouped conv's alignment is that of its per-group width (the "align" column and the
round-to classes count channels per group for grouped3x3).

`--attention` times the attention core instead, at 1 to 12 heads of 64: heads are pruned
whole, so the question there is whether some head counts run slower per MAC.

Usage: python tools/bench_widths.py [--rounds 50] [--tolerance 0.05] [--ops grouped3x3 ...] [--attention]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

LAYERS = 3
BASE_SPATIAL = {64: 56, 128: 28, 256: 14}  # base width -> feature map side, as in ResNet stages
OFFSETS = range(-32, 1)
THREADS = (1, 2)
CANDIDATE_N = (1, 2, 4, 8, 16)
WARMUP = 3


def _model(nodes, x_shape, y_name, y_shape, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, y_shape)],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _weight(name: str, shape: tuple[int, ...], fan_in: int, rng: np.random.Generator):
    values = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    return numpy_helper.from_array(values.astype(np.float32), name)


def conv_stack(width: int, side: int, kernel: int, groups: int = 1) -> onnx.ModelProto:
    """LAYERS x (Conv kernel x kernel, width -> width in `groups` groups, same padding, + Relu)
    on a 1 x width x side x side input."""
    rng = np.random.default_rng(width)
    nodes, initializers, current = [], [], "x"
    per_group = width // groups
    grouping = {"group": groups} if groups > 1 else {}
    for layer in range(LAYERS):
        shape = (width, per_group, kernel, kernel)
        initializers.append(_weight(f"w{layer}", shape, per_group * kernel * kernel, rng))
        pads = [kernel // 2] * 4
        nodes.append(helper.make_node("Conv", [current, f"w{layer}"], [f"c{layer}"], pads=pads, **grouping))
        nodes.append(helper.make_node("Relu", [f"c{layer}"], [f"r{layer}"]))
        current = f"r{layer}"
    shape = [1, width, side, side]
    return _model(nodes, shape, current, shape, initializers)


def matmul_stack(width: int, side: int) -> onnx.ModelProto:
    """LAYERS x (MatMul width -> width + Relu) on side*side tokens: the Gemm path, same MACs
    as the 1x1 conv."""
    rng = np.random.default_rng(width)
    nodes, initializers, current = [], [], "x"
    for layer in range(LAYERS):
        initializers.append(_weight(f"w{layer}", (width, width), width, rng))
        nodes.append(helper.make_node("MatMul", [current, f"w{layer}"], [f"m{layer}"]))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [f"r{layer}"]))
        current = f"r{layer}"
    shape = [side * side, width]
    return _model(nodes, shape, current, shape, initializers)


# op kind -> (model builder(width, side), kernel area for MACs)
OPS: dict[str, tuple[Callable[[int, int], onnx.ModelProto], int]] = {
    "conv3x3": (lambda width, side: conv_stack(width, side, 3), 9),
    "conv1x1": (lambda width, side: conv_stack(width, side, 1), 1),
    "matmul": (matmul_stack, 1),
    # depthwise: the memory-bound middle of a MobileNet or EfficientNet block; grouped: a
    # ResNeXt or RegNet block's middle (pruning keeps the groups equal: widths step by GROUPS)
    "depthwise3x3": (lambda width, side: conv_stack(width, side, 3, groups=width), 9),
    "grouped3x3": (lambda width, side: conv_stack(width, side, 3, groups=GROUPS), 9),
}
DEPTHWISE = {"depthwise3x3"}  # MACs grow with the width, not its square
GROUPED = {"grouped3x3"}  # widths step by GROUPS; alignment is the per-group width's
GROUPS = 2  # per-group widths base/2 - 16 .. base/2: multiples of 16 below the base occur


def macs(op: str, width: int, side: int) -> int:
    per_output = 1 if op in DEPTHWISE else width // GROUPS if op in GROUPED else width
    return LAYERS * side * side * width * per_output * OPS[op][1]


def offsets(op: str) -> list[int]:
    """The width offsets from the base an op kind is timed at (bases are multiples of 16)."""
    return [o for o in OFFSETS if op not in GROUPED or o % GROUPS == 0]


def aligned_width(op: str, width: int) -> int:
    """The channel count the kernels' alignment is about: per group for a grouped conv."""
    return width // GROUPS if op in GROUPED else width


def session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spin-waiting pools of idle sessions would steal the cores of the one being timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def time_models(models: dict[int, onnx.ModelProto], threads: int, rounds: int,
                rng: np.random.Generator) -> dict[int, float]:
    """Median latency in ms of each model (one float input), all interleaved each round."""
    sessions = {key: session(model, threads) for key, model in models.items()}
    feeds = {}
    for key, sess in sessions.items():
        x = sess.get_inputs()[0]
        feeds[key] = {x.name: rng.standard_normal(x.shape).astype(np.float32)}
        for _ in range(WARMUP):
            sess.run(None, feeds[key])
    samples: dict[int, list[float]] = {key: [] for key in models}
    for _ in range(rounds):
        for key in rng.permutation(list(models)):
            start = time.perf_counter()
            sessions[key].run(None, feeds[key])
            samples[key].append((time.perf_counter() - start) * 1000.0)
    return {key: float(np.median(times)) for key, times in samples.items()}


def time_group(
    op: str, base: int, threads: int, rounds: int, rng: np.random.Generator
) -> dict[int, float]:
    """Median latency in ms of every width around `base`, widths interleaved each round."""
    side = BASE_SPATIAL[base]
    return time_models({base + o: OPS[op][0](base + o, side) for o in offsets(op)}, threads, rounds, rng)


def relative_latency(op: str, base: int, latency: dict[int, float]) -> dict[int, float]:
    """latency / linear-MAC expectation from the base width (1.0 at the base)."""
    side = BASE_SPATIAL[base]
    per_mac_base = latency[base] / macs(op, base, side)
    return {w: ms / (per_mac_base * macs(op, w, side)) for w, ms in latency.items()}


def alignment(width: int) -> int:
    """Largest candidate N dividing width."""
    return max(n for n in CANDIDATE_N if width % n == 0)


def geomean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def class_means(op: str, rel: dict[tuple[int, int], dict[int, float]]) -> dict[int, float]:
    """Per N, geometric mean relative latency of widths that are multiples of N (per group
    for a grouped conv), over all (threads, base) groups; the base widths, 1.0 by
    definition, are left out."""
    return {
        n: geomean([r for (_, base), by_width in rel.items() for w, r in by_width.items()
                    if aligned_width(op, w) % n == 0 and w != base])
        for n in CANDIDATE_N
    }


def pick_round_to(means: dict[int, float], tolerance: float) -> int:
    best = min(means.values())
    return min(n for n, mean in means.items() if mean <= best * (1 + tolerance))


def format_table(header: list[str], rows: list[list[str]]) -> str:
    table = [header] + rows
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table)


def op_table(op: str, rel: dict, latency: dict) -> str:
    groups = [(threads, base) for threads in THREADS for base in BASE_SPATIAL]
    header = ["width", "align"] + [f"t{t}:{b}@{BASE_SPATIAL[b]}" for t, b in groups]
    # Bases are multiples of 32, so the (per-group) width is as aligned at every base as at 64.
    rows = [
        [f"base{offset:+d}" if offset else "base", f"x{alignment(aligned_width(op, 64 + offset))}"]
        + [f"{rel[group][group[1] + offset]:.2f}" for group in groups]
        for offset in offsets(op)
    ]
    rows.append(["base ms", ""] + [f"{latency[group][group[1]]:.3f}" for group in groups])
    return format_table(header, rows)


HEAD_DIM = 64
HEADS = range(1, 13)
SEQUENCES = (128, 197)  # a BERT sequence, a ViT-B/16 image's tokens


def attention_stack(heads: int, sequence: int) -> onnx.ModelProto:
    """LAYERS x attention core (softmax(q kᵀ / sqrt(d)) v, q = k = v = the input) over
    `heads` heads of HEAD_DIM: what pruning heads shrinks besides the projections (MatMul)."""
    width = heads * HEAD_DIM
    nodes, initializers, current = [], [], "x"
    initializers.append(numpy_helper.from_array(np.array([sequence, heads, HEAD_DIM], dtype=np.int64), "split"))
    initializers.append(numpy_helper.from_array(np.array([sequence, width], dtype=np.int64), "merge"))
    initializers.append(numpy_helper.from_array(np.array(HEAD_DIM ** -0.5, dtype=np.float32), "scale"))
    for layer in range(LAYERS):
        nodes += [
            helper.make_node("Reshape", [current, "split"], [f"s{layer}"]),
            helper.make_node("Transpose", [f"s{layer}"], [f"h{layer}"], perm=[1, 0, 2]),  # [heads, seq, dim]
            helper.make_node("Transpose", [f"s{layer}"], [f"k{layer}"], perm=[1, 2, 0]),  # [heads, dim, seq]
            helper.make_node("MatMul", [f"h{layer}", f"k{layer}"], [f"q{layer}"]),
            helper.make_node("Mul", [f"q{layer}", "scale"], [f"m{layer}"]),
            helper.make_node("Softmax", [f"m{layer}"], [f"p{layer}"], axis=-1),
            helper.make_node("MatMul", [f"p{layer}", f"h{layer}"], [f"o{layer}"]),
            helper.make_node("Transpose", [f"o{layer}"], [f"t{layer}"], perm=[1, 0, 2]),
            helper.make_node("Reshape", [f"t{layer}", "merge"], [f"y{layer}"]),
        ]
        current = f"y{layer}"
    shape = [sequence, width]
    return _model(nodes, shape, current, shape, initializers)


def attention_table(rounds: int, rng: np.random.Generator) -> str:
    """Per head count: latency / (latency at the most heads * heads / most heads) (its MACs,
    2·seq²·heads·dim, are linear in the heads), per sequence length and thread count."""
    groups = [(threads, sequence) for threads in THREADS for sequence in SEQUENCES]
    relative = {}
    for threads, sequence in groups:
        print(f"timing attention threads={threads} sequence={sequence}", file=sys.stderr, flush=True)
        latency = time_models({h: attention_stack(h, sequence) for h in HEADS}, threads, rounds, rng)
        most = max(HEADS)
        relative[threads, sequence] = {h: ms / (latency[most] * h / most) for h, ms in latency.items()}
    header = ["heads"] + [f"t{t}:seq{s}" for t, s in groups]
    rows = [[str(h)] + [f"{relative[group][h]:.2f}" for group in groups] for h in HEADS]
    parity = [geomean([relative[g][h] for g in groups for h in HEADS if h % 2 == r and h != max(HEADS)])
              for r in (0, 1)]
    return (format_table(header, rows)
            + f"\ngeometric mean (12 heads excluded): even head counts {parity[0]:.3f}, odd {parity[1]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50, help="timed runs per width")
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed per-MAC slowdown")
    parser.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS), help="op kinds to time")
    parser.add_argument("--attention", action="store_true",
                        help="time the attention core at 1-12 heads of 64 instead (heads are pruned whole)")
    args = parser.parse_args()
    if args.attention:
        print(f"onnxruntime {ort.__version__} CPUExecutionProvider, ORT_ENABLE_ALL, {args.rounds} rounds, "
              f"{LAYERS} layers; cells: latency / (latency(12 heads) * heads / 12)\n")
        print(attention_table(args.rounds, np.random.default_rng(0)))
        return

    rng = np.random.default_rng(0)
    started = time.perf_counter()
    ops = args.ops
    rel: dict[str, dict] = {op: {} for op in ops}
    latency: dict[str, dict] = {op: {} for op in ops}
    for op in ops:
        for threads in THREADS:
            for base in BASE_SPATIAL:
                print(f"timing {op} threads={threads} base={base}", file=sys.stderr, flush=True)
                latency[op][threads, base] = time_group(op, base, threads, args.rounds, rng)
                rel[op][threads, base] = relative_latency(op, base, latency[op][threads, base])

    print(f"onnxruntime {ort.__version__} CPUExecutionProvider, ORT_ENABLE_ALL, "
          f"{args.rounds} rounds, {LAYERS} layers per model")
    print("cells: latency / (latency(base) * MACs(width) / MACs(base)); t<threads>:<base>@<side>")
    for op in ops:
        print(f"\n{op}\n{op_table(op, rel[op], latency[op])}")

    means = {op: class_means(op, rel[op]) for op in ops}
    header = ["round-to N"] + ops
    rows = [[str(n)] + [f"{means[op][n]:.3f}" for op in ops] for n in CANDIDATE_N]
    print("\ngeometric mean latency / MAC expectation of widths that are multiples of N "
          f"(base excluded)\n{format_table(header, rows)}")
    picks = {op: pick_round_to(means[op], args.tolerance) for op in ops}
    per_op = ", ".join(f"{op} {n}" for op, n in picks.items())
    print(f"smallest N within {args.tolerance:.0%} of the best N: {per_op}")
    print(f"elapsed {time.perf_counter() - started:.0f} s")
    print(f"recommended default: --round-to {max(picks.values())}")


if __name__ == "__main__":
    main()
