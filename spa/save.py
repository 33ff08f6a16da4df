"""Writing models: checked first, written atomically, never over the input."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from spa.errors import SpaError

PROTOBUF_LIMIT = 2**31 - 1


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


def save_model(model: onnx.ModelProto, path: Path, external_data: bool = False) -> None:
    """Write `model` to `path` through a temporary file in the same folder, so a reader
    never sees a partial file. Large models (or `external_data`) keep their weights in
    `<name>.data` beside the model."""
    external = external_data or model.ByteSize() > PROTOBUF_LIMIT
    directory = path.parent if str(path.parent) else Path(".")
    try:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".spa-") as scratch:
            temporary = Path(scratch) / path.name
            data_name = f"{path.name}.data"
            onnx.save(model, str(temporary), save_as_external_data=external,
                      all_tensors_to_one_file=True, location=data_name, size_threshold=0)
            if (Path(scratch) / data_name).exists():
                os.replace(Path(scratch) / data_name, directory / data_name)
            os.replace(temporary, path)
    except OSError as error:
        raise SpaError(f"cannot write {path}: {error.strerror or error}") from None
