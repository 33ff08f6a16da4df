"""How far two models' outputs are apart on the same inputs: A the reference, B (a pruned
model, say) the candidate. Pass or fail as polygraphy decides: an output passes when every
element has |A - B| <= atol + rtol * |A|."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from spa.calibrate.sources import Calibration, load_calibration, synthetic_calibration
from spa.errors import SpaError
from spa.io.inputs import InputSpec, input_specs
from spa.io.load import load_model
from spa.io.runtime import ort_message, session
from spa.tables import Column, render, right
from spa.verify import first_calibration_run

ModelLike = onnx.ModelProto | str | os.PathLike
DEFAULT_ATOL = 1e-5  # polygraphy's defaults
DEFAULT_RTOL = 1e-5
SYNTHETIC_SAMPLES = 16
BATCH = 16  # samples per onnxruntime run


@dataclass
class OutputStats:
    """One output's differences, accumulated over batches."""

    name: str
    shape: list[int] = field(default_factory=list)  # of the first batch
    elements: int = 0
    failing: int = 0
    max_abs: float = 0.0
    max_rel: float = 0.0  # over elements where A is not 0
    dot: float = 0.0
    squares_a: float = 0.0
    squares_b: float = 0.0
    rows: int = 0  # top-1: positions compared (0: not a classifier-like output)
    agree: int = 0

    def add(self, a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> None:
        if not self.shape:
            self.shape = list(a.shape)
        if is_classifier_like(a):
            self.rows += a.size // a.shape[-1]
            self.agree += int((a.reshape(-1, a.shape[-1]).argmax(-1) == b.reshape(-1, b.shape[-1]).argmax(-1)).sum())
        a, b = a.astype(np.float64, copy=False).ravel(), b.astype(np.float64, copy=False).ravel()
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.where(same, 0.0, np.nan_to_num(np.abs(a - b), nan=np.inf))
            self.failing += int((~np.isclose(b, a, rtol=rtol, atol=atol, equal_nan=True)).sum())
            nonzero = a != 0
            if diff.size:
                self.max_abs = max(self.max_abs, float(diff.max()))
            if nonzero.any():
                self.max_rel = max(self.max_rel, float((diff[nonzero] / np.abs(a[nonzero])).max()))
            self.dot += float(a @ b)
            self.squares_a += float(a @ a)
            self.squares_b += float(b @ b)
        self.elements += a.size

    def cosine(self) -> float | None:
        """Over all elements of all batches; None where a value is not finite."""
        if not all(np.isfinite(v) for v in (self.dot, self.squares_a, self.squares_b)):
            return None
        if self.squares_a == 0 or self.squares_b == 0:
            return 1.0 if self.squares_a == self.squares_b else 0.0
        return self.dot / float(np.sqrt(self.squares_a) * np.sqrt(self.squares_b))

    def to_json(self) -> dict:
        finite = lambda v: v if np.isfinite(v) else None  # noqa: E731 - JSON has no inf
        return {"name": self.name, "shape": self.shape, "elements": self.elements, "failing": self.failing,
                "max_abs": finite(self.max_abs), "max_rel": finite(self.max_rel), "cosine": self.cosine(),
                "top1": self.agree / self.rows if self.rows else None, "passed": self.failing == 0}


def is_classifier_like(output: np.ndarray) -> bool:
    """Float scores over a last axis of classes: [batch, classes] or [batch, tokens, vocabulary].
    Higher ranks (feature maps, segmentation with classes on axis 1) are not."""
    return output.dtype.kind == "f" and output.ndim in (2, 3) and output.shape[-1] >= 2 and output.size > 0


def _describe(spec: InputSpec) -> str:
    return f"{spec.name} ({spec.dtype} [{', '.join(str(d) if d is not None else '?' for d in spec.shape)}])"


def check_same_inputs(specs_a: list[InputSpec], specs_b: list[InputSpec]) -> None:
    """Same input names and dtypes; shapes of the same rank, equal where both are fixed."""
    by_name = {spec.name: spec for spec in specs_b}
    if set(by_name) != {spec.name for spec in specs_a}:
        raise SpaError(f"the models take different inputs: A takes {', '.join(_describe(s) for s in specs_a)}; "
                       f"B takes {', '.join(_describe(s) for s in specs_b)}")
    for a in specs_a:
        b = by_name[a.name]
        fixed_differ = any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(a.shape, b.shape))
        if a.dtype != b.dtype or len(a.shape) != len(b.shape) or fixed_differ:
            raise SpaError(f"the models take different inputs: A takes {_describe(a)}, B takes {_describe(b)}")


def _session(source, label: str) -> ort.InferenceSession:
    try:
        return session(source)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
        raise SpaError(f"{label} cannot be loaded by onnxruntime: {ort_message(error)}") from None


def _run(runner: ort.InferenceSession, names: list[str], feed: dict[str, np.ndarray], label: str) -> list[np.ndarray]:
    try:
        return runner.run(names, feed)
    except Exception as error:  # noqa: BLE001
        raise SpaError(f"{label} failed in onnxruntime: {ort_message(error)}") from None


def _inputs(model: onnx.ModelProto, calib: str | Path | None, samples: int | None, seed: int) -> Calibration:
    if calib is not None:
        return load_calibration(calib, model, samples)
    return synthetic_calibration(model, samples or SYNTHETIC_SAMPLES, seed)


def compare(model_a: ModelLike, model_b: ModelLike, calib: str | Path | None = None, samples: int | None = None,
            atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, seed: int = 0) -> dict:
    """Run A and B on the calibration data at `calib` (.npz named after the inputs, as `spa
    prune --calib` reads it; at most `samples`) or on `samples` synthetic samples. Returns
    {"a", "b", "inputs", "samples", "atol", "rtol", "passed", "outputs": [OutputStats.to_json()]}."""
    loaded = [load_model(m) for m in (model_a, model_b)]
    labels = [str(m) if not isinstance(m, onnx.ModelProto) else name for m, name in zip((model_a, model_b), "AB")]
    check_same_inputs(input_specs(loaded[0].model), input_specs(loaded[1].model))
    names, names_b = ([o.name for o in m.model.graph.output] for m in loaded)
    if sorted(names) != sorted(names_b):
        raise SpaError(f"the models give different outputs: A gives {', '.join(names)}; B gives {', '.join(names_b)}")
    data = _inputs(loaded[0].model, calib, samples, seed)
    runners = [_session(m.path if m.path is not None else m.model, label) for m, label in zip(loaded, labels)]
    if data.resized is not None:  # synthetic samples of a guessed size: at one that A runs
        data = first_calibration_run(data, lambda feed: _run(runners[0], names, feed, labels[0]))[2]
    stats = [OutputStats(name) for name in names]
    for feed in data.batches(BATCH):
        outputs_a, outputs_b = (_run(r, names, feed, label) for r, label in zip(runners, labels))
        for stat, a, b in zip(stats, outputs_a, outputs_b):
            if a.shape != b.shape:
                raise SpaError(f"output {stat.name!r} differs in shape: A gives {list(a.shape)}, B {list(b.shape)}")
            if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
                raise SpaError(f"output {stat.name!r} is {a.dtype}/{b.dtype}: only numbers can be compared")
            stat.add(a, b, atol, rtol)
    outputs = [s.to_json() for s in stats]
    return {"a": labels[0], "b": labels[1], "inputs": data.source, "samples": data.samples, "atol": atol,
            "rtol": rtol, "passed": all(o["passed"] for o in outputs), "outputs": outputs}


def _number(value: float | None, spec: str) -> str:
    return "inf" if value is None else format(value, spec)


def format_compare(result: dict) -> str:
    """A table, one row per output, and a verdict line."""
    rows = [(o["name"], str(o["shape"]), _number(o["max_abs"], ".3g"), _number(o["max_rel"], ".3g"),
             "-" if o["cosine"] is None else f"{o['cosine']:.6f}",
             "-" if o["top1"] is None else f"{100 * o['top1']:.1f}%",
             f"{o['failing']} of {o['elements']}", "pass" if o["passed"] else "FAIL")
            for o in result["outputs"]]
    columns = [Column("output"), Column("shape"), right("max abs"), right("max rel"), right("cosine"), right("top-1"),
               right("failing"), Column("result")]
    table = render(columns, rows, title="B against A")
    failed = sum(not o["passed"] for o in result["outputs"])
    tolerance = f"|A-B| <= {result['atol']:g} + {result['rtol']:g}*|A|"
    verdict = (f"FAIL: {failed} of {len(result['outputs'])} outputs differ past {tolerance}" if failed
               else f"pass: every output within {tolerance}")
    source = "synthetic samples" if result["inputs"] == "synthetic" else f"calibration samples from {result['inputs']}"
    lines = [f"A (reference): {result['a']}", f"B: {result['b']}", f"inputs: {result['samples']} {source}",
             "", table, "", verdict]
    return "\n".join(lines)
