"""Checks and one-line summaries shared by the fixture export scripts."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx


def max_error(name: str, got: np.ndarray, expected: np.ndarray, atol: float) -> float:
    """Largest difference between onnxruntime's and torch's outputs; fails past `atol`."""
    assert got.shape == expected.shape, (name, got.shape, expected.shape)
    err = float(np.abs(got - expected).max())
    assert err <= atol, f"{name}: max abs error {err:.2e} > {atol}"
    return err


def summary(model: onnx.ModelProto, path: Path, err: float) -> str:
    ops = collections.Counter(n.op_type for n in model.graph.node)
    hist = " ".join(f"{op}:{n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return (f"{path.name:32} {path.stat().st_size / 1024:8.1f}K {params:8d} "
            f"op{opset}/ir{model.ir_version} err={err:.1e}  {hist}")


def print_report(rows: list[str], out_dir: Path, skipped: list[str]) -> None:
    """The summary rows under a header, the folder's total size, and what was skipped."""
    print(f"{'file':32} {'size':>9} {'params':>8} opset/IR  max|err|  ops")
    print("\n".join(rows))
    total = sum(f.stat().st_size for f in out_dir.glob("*.onnx"))
    print(f"total {total / 1024:.1f}K in {len(rows)} files")
    if skipped:
        print("skipped dynamo exports:\n  " + "\n  ".join(skipped))
