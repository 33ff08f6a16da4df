"""Writing models: written atomically, checked before they appear, never over the input.

A model is written into a scratch folder beside its destination (`.spa-<pid>-*`), checked
there, then moved into place. With external data the weights go to a data file whose name
is new for every write (`<model>.<token>.data`): it is moved into place first, then the
model that points at it, so a reader sees either the old pair or the new one, never a model
with another write's data. Data files an earlier write left at that name are removed after,
under a lock on the folder (two spa processes writing one output never delete each other's
data). Scratch folders of processes that no longer exist (killed midway) are removed.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from spa.errors import SpaError
from spa.io.load import external_info, tensor_nbytes

PROTOBUF_LIMIT = 2**31 - 1
INLINE_BYTES = 1024  # smaller tensors stay inside the model file
CHUNK = 64 << 20
SCRATCH_PREFIX = ".spa-"
NAME_MAX = 255
T = TypeVar("T")


def check_outputs(protected: set[Path], outputs: dict[str, Path | None]) -> None:
    """Fail before any work if an output (by role: "output", "report") cannot be written, is
    one of the `protected` files (everything the input reads), or is another output. (A data
    file spa writes has a name no earlier file has, so it cannot replace one.)"""
    seen: dict[Path, str] = {}
    for role, path in outputs.items():
        if path is None:
            continue
        check_writable(path)
        resolved = _resolved(path)
        if resolved in protected:
            raise SpaError(f"refusing to write the {role} over {path}: the input model reads it")
        if resolved in seen:
            raise SpaError(f"the {role} and the {seen[resolved]} are the same file: {path}")
        seen[resolved] = role


def _data_name_pattern(model_name: str) -> re.Pattern:
    return re.compile(re.escape(model_name) + r"\.[0-9a-f]{8}\.data")


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path.absolute()


def check_writable(path: Path, source: Path | None = None) -> None:
    """Fail before any work if `path` cannot be written (or is the input file)."""
    if source is not None and _resolved(path) == _resolved(source):
        raise SpaError(f"refusing to overwrite the input file {path}")
    if not path.name or path.name in (".", ".."):
        raise SpaError(f"cannot write {path}: not a file name")
    if len(os.fsencode(path.name)) + len(".00000000.data") > NAME_MAX:
        raise SpaError(f"cannot write {path}: the file name is too long")
    directory = path.parent if str(path.parent) else Path(".")
    try:
        if path.is_dir():
            raise SpaError(f"cannot write {path}: it is a directory")
        if not directory.is_dir():
            raise SpaError(f"cannot write {path}: no such directory {directory}")
        if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise SpaError(f"cannot write {path}: permission denied")
    except OSError as error:
        raise SpaError(f"cannot write {path}: {error.strerror or error}") from None


def write_json(path: Path, data: dict) -> None:
    """A JSON file, written whole or not at all."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        with tempfile.NamedTemporaryFile("w", dir=directory, prefix=f"{SCRATCH_PREFIX}{os.getpid()}-",
                                         suffix=".json", delete=False) as handle:
            temporary = Path(handle.name)
            json.dump(data, handle, indent=1)
        os.replace(temporary, path)
    except OSError as error:
        with contextlib.suppress(OSError, UnboundLocalError):
            temporary.unlink()
        raise SpaError(f"cannot write {path}: {error.strerror or error}") from None


def save_model(model: onnx.ModelProto, path: Path, external_data: bool = False,
               base_dir: Path | None = None, check: Callable[[Path], T] | None = None,
               protected: set[Path] = frozenset()) -> T | None:
    """Write `model` to `path` through a scratch folder beside it, run `check` on the
    written file, and only then move it into place: a reader never sees a partial or
    unchecked file. With external data (asked for, needed past 2 GB, or weights still
    in `base_dir`) the weights go to `<name>.<token>.data` beside the model, streamed tensor
    by tensor. Files in `protected` are never written or removed. Returns what `check` returned."""
    directory = path.parent if str(path.parent) else Path(".")
    serialized = None if external_data or base_dir is not None else _serialized(model)
    external = serialized is None
    data_name = f"{path.name}.{secrets.token_hex(4)}.data"
    try:
        remove_stale_scratch(directory)
        with tempfile.TemporaryDirectory(dir=directory, prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as scratch:
            temporary = Path(scratch) / path.name
            if external:
                _write_external(model, temporary, data_name, base_dir)
            else:
                temporary.write_bytes(serialized)
            result = check(temporary) if check is not None else None
            with _folder_lock(directory):
                if external:
                    os.replace(Path(scratch) / data_name, directory / data_name)
                os.replace(temporary, path)
                _remove_old_data(path, data_name if external else None, protected)
            return result
    except OSError as error:
        raise SpaError(f"cannot write {path}: {error.strerror or error}") from None


def _serialized(model: onnx.ModelProto) -> bytes | None:
    """The model as one protobuf, or None past the 2 GB protobuf limit. (The weights' bytes
    alone tell when it is surely past; the rest is measured by serializing it, once.)"""
    if sum(map(tensor_nbytes, model.graph.initializer)) > PROTOBUF_LIMIT:
        return None
    try:
        serialized = model.SerializeToString()
    except ValueError:  # protobuf refuses messages past 2 GB
        return None
    return serialized if len(serialized) <= PROTOBUF_LIMIT else None


def _remove_old_data(path: Path, current: str | None, protected: set[Path]) -> None:
    """Data files earlier writes made for this model name, which no model points at now."""
    pattern = _data_name_pattern(path.name)
    for candidate in path.parent.iterdir():
        if candidate.name != current and pattern.fullmatch(candidate.name) \
                and _resolved(candidate) not in protected:
            with contextlib.suppress(FileNotFoundError):
                candidate.unlink()


@contextlib.contextmanager
def _folder_lock(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on the folder itself (no lock file to leave behind)."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def remove_stale_scratch(directory: Path) -> None:
    """Remove scratch folders of spa processes that are gone (killed before they cleaned up)."""
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            match = re.fullmatch(re.escape(SCRATCH_PREFIX) + r"(\d+)-.*", entry.name)
            if match and not _alive(int(match.group(1))):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as error:
        return error.errno == errno.EPERM  # exists, owned by someone else
    return True


def _write_external(model: onnx.ModelProto, path: Path, data_name: str, base_dir: Path | None) -> None:
    """Every initializer over INLINE_BYTES goes to one data file; weights still in the
    input's external data are copied from there in chunks, never loaded whole."""
    with open(path.parent / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            if uses_external_data(tensor):
                source, offset, length = _external_range(tensor, base_dir)
                start = data.tell()
                _copy_range(source, offset, length, data)
                length = data.tell() - start
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


def _external_range(tensor: onnx.TensorProto, base_dir: Path | None) -> tuple[Path, int, int]:
    info = external_info(tensor)
    if base_dir is None:
        raise SpaError(f"tensor '{tensor.name}' refers to external data but no folder was given")
    return base_dir / info["location"], int(info.get("offset", 0)), tensor_nbytes(tensor)


def _copy_range(source: Path, offset: int, length: int, target) -> None:
    with open(source, "rb") as handle:
        handle.seek(offset)
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
