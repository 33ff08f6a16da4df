"""Calibration data for data-driven pruning criteria.

`load_calibration` reads a .npz file (one array per graph input, samples on axis 0), a .npy file, or a
folder of them (read lazily, one file at a time, in sorted name order). `synthetic_calibration` draws
random data from the input specs. Either way `Calibration.batches()` yields onnxruntime feeds with the
model's batch rule: if an input's first axis is a static int B, every batch has exactly B samples and a
trailing partial batch is dropped (never padded; `samples` counts only what is fed); otherwise batches
hold `batch_size` samples and the last may be smaller. All checks run up front on file headers only.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
import numpy as np
import onnx

from spa.calibrate.distill import image_recipe
from spa.errors import SpaError, first_line
from spa.io.inputs import InputMaker, InputSpec, input_specs

Feed = dict[str, np.ndarray]
_READ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
_ACCEPTS = {"f": "fiu", "i": "iub", "u": "iub", "b": "b"}  # input dtype kind -> data kinds cast silently


def _fixed_batch(specs: list[InputSpec]) -> int | None:
    """The static batch size B if some input fixes axis 0, else None (any batch size works).
    Scalar inputs (a flag, a sample rate) have no batch axis: every batch gets their one value."""
    if specs and all(not spec.shape for spec in specs):
        raise SpaError(f"every input of the model is a scalar ({', '.join(repr(s.name) for s in specs)}): "
                       "there is no batch axis to calibrate over")
    fixed = {spec.shape[0] for spec in specs if spec.shape and isinstance(spec.shape[0], int)}
    if len(fixed) > 1:
        raise SpaError(f"model inputs disagree on the batch size: {sorted(fixed)}")
    return fixed.pop() if fixed else None


@dataclass
class Calibration:
    """Calibration samples for a model; `samples` is how many batches() will actually feed."""

    source: str
    specs: list[InputSpec]
    samples: int
    chunks: Callable[[], Iterator[Feed]]  # yields consecutive runs of samples, already cast
    batchnorm: bool = False  # data-free: BatchNorm nodes renormalize with batch statistics
    inputs: str | None = None  # data-free: how synthetic images were fitted to the model, if they were
    estimate_folded: bool = False  # data-free: renormalize Convs a BatchNorm may have been folded into
    # data-free: per Conv output, the (mean, std) estimated for a BatchNorm folded into it,
    # taken from the model before pruning (spa.calibrate.batchnorm.folded_estimates)
    folded: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    # synthetic, with open sizes past the batch axis: the size they take, and the same
    # calibration with another (a model may reject the first guess: verify tries others)
    open_size: int | None = None
    resized: Callable[[int], Calibration] | None = None

    def _step(self, batch_size: int) -> int:
        if batch_size < 1:
            raise SpaError(f"calibration batch size must be at least 1, got {batch_size}")
        return _fixed_batch(self.specs) or batch_size

    def smallest_batch(self, batch_size: int = 32) -> int:
        """The fewest samples a batch of batches(batch_size) holds."""
        step = self._step(batch_size)
        return min(step, self.samples % step or step)

    def batch_count(self, batch_size: int = 32) -> int:
        return math.ceil(self.samples / self._step(batch_size))

    def batches(self, batch_size: int = 32) -> Iterator[Feed]:
        """Feeds for onnxruntime, dtype = input dtype; stops reading once `samples` are fed."""
        step, fed, pending, size = self._step(batch_size), 0, [], 0
        for chunk in self.chunks():
            scalars = {k: v for k, v in chunk.items() if not v.ndim}  # the same value in every batch
            batched = {k: v for k, v in chunk.items() if v.ndim}
            count, start = len(next(iter(batched.values()))), 0
            while start < count and fed + size < self.samples:
                take = min(count - start, step - size, self.samples - fed - size)
                pending.append({k: v[start : start + take] for k, v in batched.items()})
                size, start = size + take, start + take
                if size == step or fed + size == self.samples:
                    yield {**{k: np.concatenate([p[k] for p in pending]) for k in batched}, **scalars}
                    fed, pending, size = fed + size, [], 0
            if fed >= self.samples:
                return


def _finish(source: str, specs: list[InputSpec], available: int, samples: int | None, chunks) -> Calibration:
    if samples is not None and samples < 1:
        raise SpaError(f"calibration sample count (--calib-samples) must be at least 1, got {samples}")
    count = available if samples is None else min(samples, available)
    batch = _fixed_batch(specs) or 1
    if count < batch:
        raise SpaError(f"calibration data {source} has {count} sample(s), fewer than the fixed batch size {batch}")
    return Calibration(source, specs, count - count % batch, chunks)


# ---- files --------------------------------------------------------------------------------------


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(f)
    return shape, dtype


@dataclass
class _Piece:
    path: Path
    keys: dict[str, str]  # input name -> array name (empty for .npy)
    count: int
    one_sample: bool = False  # a .npy holding a single sample (no batch axis)


def _scan(path: Path, specs: list[InputSpec], symbols: dict[str, int]) -> _Piece:
    """Check one file from its headers only: names, shapes, dtypes, sample counts."""
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                headers = {"": _npy_header(f)}
                shape, dtype = headers[""]
                if f.tell() + math.prod(shape) * dtype.itemsize > path.stat().st_size:
                    raise ValueError("file is truncated")
        else:
            with zipfile.ZipFile(path) as zf:
                headers = {}
                for name in zf.namelist():
                    if name.endswith(".npy"):
                        with zf.open(name) as f:
                            headers[name[:-4]] = _npy_header(f)
    except _READ_ERRORS as error:
        raise SpaError(f"cannot read calibration file {path}: {first_line(error)}") from None
    names = [spec.name for spec in specs]
    if path.suffix == ".npy":
        if len(specs) != 1:
            raise SpaError(f"calibration file {path}: .npy needs a single-input model; use .npz with arrays {names}")
        keys = {names[0]: ""}
    elif len(specs) == 1 and len(headers) == 1:
        keys = {names[0]: next(iter(headers))}
    else:
        missing = [n for n in names if n not in headers]
        if missing:
            present = sorted(headers)
            raise SpaError(f"calibration file {path} has no array for input(s) {missing}; arrays present: {present}")
        keys = {n: n for n in names}
    counts, one_sample = {}, False
    for spec in specs:
        shape, dtype = headers[keys[spec.name]]
        label = f"calibration file {path}: array {keys[spec.name] or 'data'!r} for input {spec.name!r}"
        if dtype.kind not in _ACCEPTS.get(spec.dtype.kind, ""):
            raise SpaError(f"{label} has dtype {dtype}, incompatible with the input's {spec.dtype}")
        if path.suffix == ".npy" and len(shape) == len(spec.shape) - 1:
            shape, one_sample = (1, *shape), True
        if len(shape) != len(spec.shape):
            layout = "a scalar, one value for every sample" if not spec.shape else "samples on axis 0"
            raise SpaError(f"{label} has shape {list(shape)}; the input is {spec.shape} ({layout})")
        if not spec.shape:
            continue
        for axis, (dim, got) in enumerate(zip(spec.shape[1:], shape[1:]), 1):
            want = symbols.setdefault(dim, got) if isinstance(dim, str) else dim
            if want is not None and want != got:
                why = f"{dim!r} was {want} earlier" if isinstance(dim, str) else f"the input is {spec.shape}"
                raise SpaError(f"{label} has sample shape {list(shape[1:])}; axis {axis} must be {want} ({why})")
        counts[keys[spec.name] or spec.name] = shape[0]
    if len(set(counts.values())) > 1:
        raise SpaError(f"calibration file {path}: arrays have different sample counts {counts}")
    return _Piece(path, keys, next(iter(counts.values())), one_sample)


def _read(piece: _Piece, specs: list[InputSpec]) -> Feed:
    try:
        if not piece.keys[specs[0].name]:
            array = np.load(piece.path)
            arrays = {specs[0].name: array[None] if piece.one_sample else array}
        else:
            with np.load(piece.path) as data:
                arrays = {name: data[key] for name, key in piece.keys.items()}
    except _READ_ERRORS as error:
        raise SpaError(f"cannot read calibration file {piece.path}: {first_line(error)}") from None
    return {spec.name: arrays[spec.name].astype(spec.dtype, copy=False) for spec in specs}


def load_calibration(path: str | Path, model: onnx.ModelProto, samples: int | None = None) -> Calibration:
    """Calibration from a .npz/.npy file or a folder of them (streamed lazily, sorted by name)."""
    path, specs = Path(path), input_specs(model)
    if not path.exists():
        raise SpaError(f"calibration data not found: {path}")
    files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy")) if path.is_dir() else [path]
    if not files:
        raise SpaError(f"calibration folder {path} has no .npz or .npy files")
    _fixed_batch(specs)
    symbols: dict[str, int] = {}
    pieces = [_scan(p, specs, symbols) for p in files]
    chunks = lambda: (_read(piece, specs) for piece in pieces if piece.count)  # noqa: E731
    return _finish(str(path), specs, sum(p.count for p in pieces), samples, chunks)


# ---- synthetic ----------------------------------------------------------------------------------


def synthetic_calibration(
    model: onnx.ModelProto, samples: int = 64, seed: int = 0, default_dim: int = 16, batchnorm: bool = False,
    estimate_folded: bool = False,
) -> Calibration:
    """Random samples from spa.io.inputs.InputMaker (the same rules as every synthetic input):
    floats ~ N(0,1), table indices within the table, masks 0/1 padding masks. Open non-batch
    dims the graph does not fix take `default_dim`. With `batchnorm`, calibration passes give
    BatchNormalization outputs the moments training gave them (spa.calibrate.batchnorm), and
    with `estimate_folded` too the Convs a BatchNorm may have been folded into."""
    maker = InputMaker(model)
    specs = maker.specs
    _fixed_batch(specs)
    recipe = image_recipe(model, seed) if batchnorm else None

    def chunks(size: int = 32) -> Iterator[Feed]:
        for index, start in enumerate(range(0, samples, size)):
            feeds = maker.feeds(seed + index, default_dim=default_dim, batch=min(size, samples - start))
            if recipe is not None:
                drawn = feeds[recipe.name]
                feeds[recipe.name] = recipe.images(list(drawn.shape), np.random.default_rng([seed, index]), drawn.dtype)
            yield feeds

    calibration = _finish("synthetic", specs, samples, None, chunks)
    calibration.batchnorm, calibration.estimate_folded = batchnorm, batchnorm and estimate_folded
    calibration.inputs = recipe.describe() if recipe is not None else None
    if maker.has_open_sizes():
        calibration.open_size = default_dim
        calibration.resized = lambda size: synthetic_calibration(model, samples, seed, size, batchnorm, estimate_folded)
    return calibration
