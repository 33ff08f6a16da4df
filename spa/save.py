"""Writing models: written atomically, checked before they appear, never over the input."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from spa.errors import SpaError
from spa.load import external_info

PROTOBUF_LIMIT = 2**31 - 1
INLINE_BYTES = 1024  # smaller tensors stay inside the model file
CHUNK = 64 << 20
T = TypeVar("T")


def check_writable(path: Path, source: Path | None = None) -> None:
    """Fail before any work if `path` cannot be written (or is the input file)."""
    if source is not None and path.resolve() == source.resolve():
        raise SpaError(f"refusing to overwrite the input file {path}")
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise SpaError(f"cannot write {path}: it is a directory")
    if not directory.is_dir():
        raise SpaError(f"cannot write {path}: no such directory {directory}")
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SpaError(f"cannot write {path}: permission denied")


def save_model(model: onnx.ModelProto, path: Path, external_data: bool = False,
               base_dir: Path | None = None, check: Callable[[Path], T] | None = None) -> T | None:
    """Write `model` to `path` through a temporary folder beside it, run `check` on the
    written file, and only then move it into place: a reader never sees a partial or
    unchecked file. With external data (asked for, needed past 2 GB, or weights still
    in `base_dir`) the weights go to `<name>.data` beside the model, streamed tensor by
    tensor. Returns what `check` returned."""
    directory = path.parent if str(path.parent) else Path(".")
    external = external_data or base_dir is not None or model.ByteSize() > PROTOBUF_LIMIT
    data_name = f"{path.name}.data"
    try:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".spa-") as scratch:
            temporary = Path(scratch) / path.name
            if external:
                _write_external(model, temporary, data_name, base_dir)
            else:
                onnx.save(model, str(temporary))
            result = check(temporary) if check is not None else None
            if (Path(scratch) / data_name).exists():
                os.replace(Path(scratch) / data_name, directory / data_name)
            os.replace(temporary, path)
            return result
    except OSError as error:
        raise SpaError(f"cannot write {path}: {error.strerror or error}") from None


def _write_external(model: onnx.ModelProto, path: Path, data_name: str, base_dir: Path | None) -> None:
    """Every initializer over INLINE_BYTES goes to one data file; weights still in the
    input's external data are copied from there in chunks, never loaded whole."""
    with open(path.parent / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            if uses_external_data(tensor):
                source, offset, length = _external_range(tensor, base_dir)
                start = data.tell()
                _copy_range(source, offset, length, data)
            else:
                raw = _raw_bytes(tensor)
                if len(raw) <= INLINE_BYTES:
                    continue
                start = data.tell()
                data.write(raw)
                length = len(raw)
            _point_to(tensor, data_name, start, length)
    onnx.save(model, str(path))


def _raw_bytes(tensor: onnx.TensorProto) -> bytes:
    if tensor.HasField("raw_data"):
        return tensor.raw_data
    return numpy_helper.from_array(numpy_helper.to_array(tensor)).raw_data


def _external_range(tensor: onnx.TensorProto, base_dir: Path | None) -> tuple[Path, int, int | None]:
    info = external_info(tensor)
    if base_dir is None:
        raise SpaError(f"tensor '{tensor.name}' refers to external data but no folder was given")
    length = int(info["length"]) if "length" in info else None
    return base_dir / info["location"], int(info.get("offset", 0)), length


def _copy_range(source: Path, offset: int, length: int | None, target) -> None:
    with open(source, "rb") as handle:
        handle.seek(offset)
        if length is None:
            shutil.copyfileobj(handle, target, CHUNK)
            return
        while length > 0:
            chunk = handle.read(min(CHUNK, length))
            if not chunk:
                raise SpaError(f"external data file {source} is shorter than the model says")
            target.write(chunk)
            length -= len(chunk)


def _point_to(tensor: onnx.TensorProto, data_name: str, offset: int, length: int) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
