"""Which route from a pruned ONNX file back to a trainable PyTorch module works on which exports?

For each model (the trained digits models at ratio 0.7 with obs and calibration, and a set of wild-corpus
exports from five frameworks at ratio 0.4 with spa's default criterion, data-free) this prunes with spa,
then tries each converter on the pruned file and prints one row per model x converter:

- converted: the converter returned a module (or its one-line error);
- max|diff|: the module's outputs in eval mode against onnxruntime's on the model's inputs;
- trainable: the fraction of the pruned model's float weights (initializers of more than one element,
  BatchNorm running statistics aside) that the module holds as trainable parameters (the rest are
  frozen buffers the optimizer never sees);
- for spa.finetune, "exported back after a change": every parameter moved by 1% noise, written back
  with export_onnx, and the written file run in onnxruntime against the module.
A model counts as converted when it runs, matches to 1e-4 x max(1, largest output value) and >= 99%
of its weights train.

The re-slicing route (slice the original framework's parameters by the report's channel indices) is
measured by what it needs: "named" is the fraction of those float weights whose initializer still carries a
module-style name (no "onnx::", "/", "spa_" or "val_" prefix): a weight without one has no parameter to
slice. Re-slicing also loses what spa changed in the kept weights (obs and statistics correction repair
them, and may add biases), so even a fully named model does not reproduce the pruned outputs.

Converters: onnx2torch, onnx2pytorch (each if importable) and spa.finetune's (if importable).
Run in an environment with spa, torch and the converters, e.g. (torchvision, which both converters
import, needs a torch build it matches):
  python -m venv ~/.cache/spa/venvs/converters && ~/.cache/spa/venvs/converters/bin/pip install \\
      torch==2.14.1 torchvision==0.29.1 onnx2torch onnx2pytorch -e .
  ~/.cache/spa/venvs/converters/bin/python tools/anytime_converters.py [--models a,b] [--out FILE]
Pruned files are cached in ~/.cache/spa/anytime/pruned. Takes 5-10 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from spa.api import prune

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "models" / "trained"
WILD = Path.home() / ".cache" / "spa" / "wild" / "models"
CACHE = Path.home() / ".cache" / "spa" / "anytime" / "pruned"
DIGITS = ("digits_resnet_bn", "digits_resnet", "digits_mobilenet", "digits_transformer")
WILD_MODELS = ("vision_torch/tv_resnet18", "vision_torch/tv_resnet18_dynamo", "vision_torch/tv_mobilenet_v2",
               "vision_torch/tv_mobilenet_v3_small", "vision_torch/tv_shufflenet_v2_x1_0",
               "vision_torch/tv_squeezenet1_1", "vision_torch/tv_efficientnet_b0", "vision_torch/timm_convnext_atto",
               "vision_torch/timm_convnext_atto_dynamo", "vision_torch/timm_deit_tiny", "vision_torch/yolo_v8n_320",
               "hf_torch/hf_bert", "hf_torch/hf_vit", "hf_torch/hf_gpt2", "tf_keras/tf_mobilenet_v2_a050",
               "tf_keras/tf_text_transformer", "jax_flax/jax_resnet", "jax_flax/jax_vit",
               "paddle_wheels/pd_resnet18", "paddle_wheels/pd_mobilenet_v2")
DIGITS_RATIO, WILD_RATIO = 0.7, 0.4
MACHINE_NAMES = ("onnx::", "/", "spa_", "val_")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def digits_inputs(name: str) -> dict[str, np.ndarray]:
    data = np.load(TRAINED / "digits_data.npz")
    suffix = "_tokens" if "transformer" in name else ""
    return {"input": data[f"calib_x{suffix}"]}


def pruned_model(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    """The pruned file (cached) and the inputs to compare outputs on."""
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"{name.replace('/', '__')}.onnx"
    if name in DIGITS:
        inputs = digits_inputs(name)
        if not target.exists():
            calib = CACHE / f"{name}_calib.npz"
            np.savez(calib, **inputs)
            prune(TRAINED / f"{name}.onnx", DIGITS_RATIO, criterion="obs", calib=calib, output=target, verify=False)
        return target, {k: v[:64] for k, v in inputs.items()}
    inputs = dict(np.load(WILD / f"{name}.npz"))
    if not target.exists():
        prune(WILD / f"{name}.onnx", WILD_RATIO, output=target, verify=False)
    return target, inputs


def float_weights(model: onnx.ModelProto) -> dict[str, int]:
    """Float initializers of more than one element, BatchNorm running statistics aside: name -> element count."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    statistics = {name for node in model.graph.node if node.op_type == "BatchNormalization" for name in node.input[3:5]}
    return {t.name: int(np.prod(t.dims)) for t in model.graph.initializer
            if t.data_type in floats and int(np.prod(t.dims)) > 1 and t.name not in statistics}


def named_fraction(model: onnx.ModelProto) -> float:
    weights = float_weights(model)
    named = sum(n for name, n in weights.items() if not name.startswith(MACHINE_NAMES) and "/" not in name)
    return named / max(1, sum(weights.values()))


def convert_onnx2torch(path: Path):
    import onnx2torch
    return onnx2torch.convert(str(path))


def convert_onnx2pytorch(path: Path):
    import onnx2pytorch
    return onnx2pytorch.ConvertModel(onnx.load(str(path)), experimental=True)


def convert_spa(path: Path):
    from spa.finetune import to_torch
    return to_torch(path)


CONVERTERS: dict[str, tuple[str, Callable]] = {"onnx2torch": ("onnx2torch", convert_onnx2torch),
                                               "onnx2pytorch": ("onnx2pytorch", convert_onnx2pytorch),
                                               "spa.finetune": ("spa.finetune", convert_spa)}


def try_converter(convert: Callable, path: Path, inputs: dict[str, np.ndarray], model: onnx.ModelProto) -> dict:
    import torch
    row: dict = {}
    try:
        start = time.perf_counter()
        module = convert(path).eval()
        row["seconds"] = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001 - the converter's failure is the measurement
        row["error"] = f"convert: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        return row
    names = [i.name for i in model.graph.input if i.name in inputs]
    try:
        with torch.no_grad():
            got = module(*(torch.from_numpy(inputs[n]) for n in names))
    except Exception as error:  # noqa: BLE001
        row["error"] = f"run: {type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
        return row
    got = list(got) if isinstance(got, (tuple, list)) else [got]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {n: inputs[n] for n in names})
    floats = [(np.asarray(g.detach().numpy(), dtype=np.float64), e) for g, e in zip(got, expected) if e.dtype.kind == "f"]
    row["max_diff"] = max((float(np.abs(g - e).max()) for g, e in floats), default=0.0)
    row["scale"] = max((float(np.abs(e).max()) for _, e in floats), default=1.0)
    weights = sum(float_weights(model).values())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    row["trainable"] = min(1.0, trainable / max(1, weights))
    if hasattr(module, "spa_sources"):  # spa.finetune: weights changed as by training, written back, rerun
        row["round_trip"] = round_trip(module, path, inputs)
    return row


def round_trip(module, path: Path, inputs: dict[str, np.ndarray]) -> str:
    """Every parameter moved by 1% noise, export_onnx, then the written file against the module."""
    import torch
    from spa.finetune import export_onnx, max_difference
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.01 * parameter.abs().mean() * torch.randn(parameter.shape, generator=generator))
    target = CACHE / "round_trip.onnx"
    try:
        export_onnx(module, target)
        return f"{max_difference(module, target, inputs):.1e}"
    except Exception as error:  # noqa: BLE001
        return f"{type(error).__name__}: {str(error)[:100]}"


def cell(row: dict) -> str:
    if "error" in row:
        return row["error"]
    back = f", exported back after a change: max\\|diff\\| {row['round_trip']}" if "round_trip" in row else ""
    return f"ok, max\\|diff\\| {row['max_diff']:.1e}, trainable {100 * row['trainable']:.0f}%{back}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", help="comma-separated; default: the digits models and the wild set")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    torch.set_num_threads(2)
    names = args.models.split(",") if args.models else [*DIGITS, *WILD_MODELS]
    converters = {label: convert for label, (module, convert) in CONVERTERS.items()
                  if importlib.util.find_spec(module.split(".")[0]) and
                  (module != "spa.finetune" or importlib.util.find_spec(module))}
    lines = [f"| model | named (re-slicing) | {' | '.join(converters)} |",
             "|---|---|" + "---|" * len(converters)]
    counts = dict.fromkeys(converters, 0)
    for name in names:
        log(name)
        try:
            path, inputs = pruned_model(name)
        except Exception as error:  # noqa: BLE001 - spa could not prune it: not a converter measurement
            log(f"  prune failed: {type(error).__name__}: {error}")
            continue
        model = onnx.load(str(path))
        cells = []
        for label, convert in converters.items():
            row = try_converter(convert, path, inputs, model)
            good = ("error" not in row and row["max_diff"] <= 1e-4 * max(1.0, row["scale"])
                    and row["trainable"] >= 0.99)
            counts[label] += good
            cells.append(cell(row))
            log(f"  {label}: {cell(row)}")
        lines.append(f"| {name} | {100 * named_fraction(model):.0f}% | {' | '.join(cells)} |")
    lines.append("| **converted, equal (max\\|diff\\| <= 1e-4 x max(1, max\\|output\\|)), >= 99% trainable** | | "
                 + " | ".join(f"**{counts[label]} of {len(names)}**" for label in converters) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
