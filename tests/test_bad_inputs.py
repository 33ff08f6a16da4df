"""Bad input, faults and misuse, as a hostile user would bring them, through the real `spa`
command: every case ends with its exit code, at most one stderr line naming the problem,
no traceback, no file left behind but the promised output, the input (and its data files)
byte-identical, and any written model valid under onnx.checker and onnxruntime."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import bad_models
import numpy as np
import onnx
import pytest
from conftest import MODELS
from oracle import run

import spa
from spa.io.inputs import make_inputs

RESNET = MODELS / "resnet_basic.onnx"
SPA = [sys.executable, "-m", "spa.cli"]


def spa_command(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(SPA + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) with a digest of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_valid_model(path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    run(model, make_inputs(model, default_dim=2))  # open dims the graph fixes (channels) get their size


def save(model: onnx.ModelProto, path: Path, external: str | None = None) -> Path:
    if external:
        onnx.save(model, str(path), save_as_external_data=True, location=external, size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def resnet_external(folder: Path, name: str = "model.onnx", data: str = "model.onnx.data") -> Path:
    return save(onnx.load(str(RESNET)), folder / name, external=data)


@dataclass
class Case:
    """`setup(folder)` writes the input files and returns spa's arguments. `error`: a regex the
    one stderr line must match (None: stderr stays empty). `writes`: regexes of the files
    that may appear; each written .onnx must be valid."""
    setup: Callable[[Path], list[str]]
    code: int
    error: str | None
    writes: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()  # existing files the command may replace (its output)


def _model_case(build: Callable[[], onnx.ModelProto], code: int, error: str | None, *extra: str,
                writes: tuple[str, ...] = (r"out\.onnx",)) -> Case:
    def setup(folder: Path) -> list[str]:
        save(build(), folder / "in.onnx")
        return ["prune", "in.onnx", "-o", "out.onnx", "--ratio", "0.5", "--round-to", "1", *extra]
    return Case(setup, code, error, writes if code == 0 else ())


def _file_case(content: Callable[[Path], None], code: int, error: str) -> Case:
    def setup(folder: Path) -> list[str]:
        content(folder / "in.onnx")
        return ["prune", "in.onnx", "-o", "out.onnx", "--ratio", "0.4"]
    return Case(setup, code, error)


def _external_case(damage: Callable[[Path], None], error: str) -> Case:
    def setup(folder: Path) -> list[str]:
        resnet_external(folder)
        damage(folder / "model.onnx.data")
        return ["prune", "model.onnx", "-o", "out.onnx", "--ratio", "0.4"]
    return Case(setup, 1, error)


def _over_external_data(folder: Path) -> list[str]:
    """Defect 1: the input reads model.onnx.data; writing model.onnx must not touch it."""
    resnet_external(folder, "orig.onnx", "model.onnx.data")
    return ["prune", "orig.onnx", "-o", "model.onnx", "--ratio", "0.4"]


def _onto_input_data(folder: Path) -> list[str]:
    resnet_external(folder)
    return ["prune", "model.onnx", "-o", "model.onnx.data", "--ratio", "0.4"]


def _report_onto(target: str) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        resnet_external(folder)
        return ["prune", "model.onnx", "-o", "out.onnx", "--ratio", "0.4", "--report", target]
    return setup


def _calibration(values: float) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        shutil.copy(RESNET, folder / "in.onnx")
        rng = np.random.default_rng(0)
        np.savez(folder / "calib.npz", input=(rng.standard_normal((4, 3, 32, 32)) * values).astype(np.float32))
        return ["prune", "in.onnx", "-o", "out.onnx", "--ratio", "0.5", "--round-to", "1",
                "--criterion", "obs", "--calib", "calib.npz"]
    return setup


def _bench(second: Callable[[], onnx.ModelProto]) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        save(bad_models.plain(), folder / "a.onnx")
        save(second(), folder / "b.onnx")
        return ["bench", "a.onnx", "b.onnx", "--runs", "2", "--warmup", "1"]
    return setup


def _args(*args: str, model: Callable[[], onnx.ModelProto] = bad_models.plain) -> Callable[[Path], list[str]]:
    def setup(folder: Path) -> list[str]:
        save(model(), folder / "in.onnx")
        return list(args)
    return setup


def _truncate(size: int) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        path.write_bytes(path.read_bytes()[:size])
    return damage


CASES = {
    # never destroy a file the input reads, never write one output over another
    "output over the input's external data name": Case(_over_external_data, 0, None,
                                                       (r"model\.onnx", r"model\.onnx\.[0-9a-f]{8}\.data")),
    "output onto the input's data file": Case(_onto_input_data, 1, r"refusing to write the output over .*model\.onnx\.data"),
    "output onto the input": Case(_args("prune", "in.onnx", "-o", "in.onnx", "--ratio", "0.4"), 1,
                                  r"refusing to write the output over in\.onnx"),
    "report onto the output": Case(_report_onto("out.onnx"), 1, r"the report and the output are the same file"),
    "report onto the input": Case(_report_onto("model.onnx"), 1, r"refusing to write the report over"),
    "report onto the input's data": Case(_report_onto("model.onnx.data"), 1, r"refusing to write the report over"),
    # inputs that once crashed
    "custom op onnxruntime lacks": _model_case(bad_models.custom_op_unknown_shape, 1,
                                               r"the input model fails in onnxruntime: .*Mystery"),
    "contrib op of unknown shape": _model_case(bad_models.contrib_op_unknown_shape, 0, None),
    "opset 6": _model_case(lambda: bad_models.opset(6), 1, r"the input model fails in onnxruntime"),
    "opset newer than onnxruntime": _model_case(lambda: bad_models.opset(30), 1,
                                                r"the input model fails in onnxruntime: .*[Oo]pset 30"),
    "empty data file": _external_case(_truncate(0), r"external data file 'model\.onnx\.data' is truncated"),
    "truncated data file": _external_case(_truncate(5000), r"external data file 'model\.onnx\.data' is truncated"),
    "missing data file": _external_case(Path.unlink, r"model\.onnx\.data"),
    "output name too long": Case(_args("prune", "in.onnx", "-o", "x" * 250 + ".onnx", "--ratio", "0.4"), 1,
                                 r"the file name is too long"),
    "a folder as the input": Case(lambda folder: ["prune", ".", "--ratio", "0.4"], 1, r"not a file: \."),
    "calibration values near 1e30": Case(_calibration(1e30), 0, None, (r"out\.onnx",)),
    "calibration values of inf": Case(_calibration(np.inf), 1, r"calibration run gives NaN or inf"),
    "bench: different inputs": Case(_bench(bad_models.two_inputs), 1, r"the models take different inputs"),
    "bench: unloadable model": Case(_bench(bad_models.custom_op_unknown_shape), 1,
                                    r"the second model cannot be loaded by onnxruntime"),
    "IR version 3": _model_case(bad_models.ir3, 0, None),
    "If inside an If": _model_case(bad_models.nested_if, 0, None),
    "symbolic channel dim": _model_case(bad_models.symbolic_channels, 0, None),
    "fails while running": _model_case(bad_models.fails_at_run_time, 1, r"the input model fails in onnxruntime"),
    # blame: the input's fault is named as the input's
    "NaN weight": _model_case(bad_models.nan_weight, 1, r"the input model's weight 'conv_w0' holds NaN or inf"),
    "duplicate node names": _model_case(bad_models.duplicate_node_names, 1,
                                        r"the input model fails in onnxruntime: .*two nodes with same node name"),
    # already handled before, kept so
    "missing file": Case(lambda folder: ["prune", "nope.onnx", "--ratio", "0.4"], 1, r"no such file: nope\.onnx"),
    "not ONNX": _file_case(lambda p: p.write_bytes(b"not a model\n"), 1, r"not a readable ONNX model"),
    "empty file": _file_case(lambda p: p.write_bytes(b""), 1, r"in\.onnx has no graph"),
    "truncated model": _file_case(lambda p: p.write_bytes(RESNET.read_bytes()[:30_000]), 1, r"in\.onnx"),
    "cycle": _model_case(bad_models.cycle, 1, r"not a valid ONNX model: .*topologically sorted"),
    "control flow": _model_case(bad_models.loop_model, 0, None, writes=()),
    "fp16": _model_case(bad_models.fp16, 0, None),
    "ratio 1": Case(_args("prune", "in.onnx", "--ratio", "1"), 2, r"--ratio: must be in \[0, 1\), got 1 \(see spa prune --help\)"),
    "ratio nan": Case(_args("prune", "in.onnx", "--ratio", "nan"), 2, r"--ratio: must be in \[0, 1\)"),
    "no goal": Case(_args("prune", "in.onnx"), 2, r"give one of --ratio"),
    "unknown command": Case(lambda folder: ["frobnicate"], 2, r"invalid choice.*\(see spa --help\)$"),
    "unwritable folder": Case(_args("prune", "in.onnx", "-o", "no/such/out.onnx", "--ratio", "0.4"), 1,
                              r"no such directory"),
    "calibration file of another model": Case(
        _args("prune", "in.onnx", "--ratio", "0.5", "--criterion", "obs", "--calib", "in.onnx"), 1,
        r"cannot read calibration file"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(tmp_path, name):
    case = CASES[name]
    args = case.setup(tmp_path)
    before = snapshot(tmp_path)
    result = spa_command(args, tmp_path)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    if case.error is None:
        assert lines == [], result.stderr
    else:
        assert len(lines) == 1, result.stderr
        assert re.search(case.error, lines[0]), lines[0]
        assert lines[0].startswith("spa: error: ")
    assert result.returncode == case.code, result.stderr
    after = snapshot(tmp_path)
    for name_before, digest in before.items():
        assert after.get(name_before) == digest, f"{name_before} was changed or removed"
    new = set(after) - set(before)
    unexpected = [f for f in new if not any(re.fullmatch(pattern, f) for pattern in case.writes)]
    assert not unexpected, f"files left behind: {unexpected}"
    for written in new:
        if written.endswith(".onnx"):
            assert_valid_model(tmp_path / written)


def test_api_refuses_to_write_over_its_input(tmp_path):
    path = shutil.copy(RESNET, tmp_path / "r.onnx")
    before = snapshot(tmp_path)
    with pytest.raises(spa.SpaError, match="refusing to write the output over"):
        spa.prune(str(path), ratio=0.4, output=str(path))
    assert snapshot(tmp_path) == before


def test_no_litter_in_the_working_folder(tmp_path):
    """Incomplete shape inference used to leave sym_shape_infer_temp.onnx and a copy of
    every weight in the current folder."""
    work = tmp_path / "work"
    work.mkdir()
    save(bad_models.contrib_op_unknown_shape(), tmp_path / "in.onnx")
    result = spa_command(["prune", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "out.onnx"),
                          "--ratio", "0.5", "--round-to", "1"], work)
    assert result.returncode == 0, result.stderr
    assert list(work.iterdir()) == []


def test_two_writers_to_one_output_leave_one_valid_pair(tmp_path):
    resnet_external(tmp_path)
    commands = [subprocess.Popen(SPA + ["prune", "model.onnx", "-o", "out.onnx", "--ratio", ratio], cwd=tmp_path,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
                for ratio in ("0.3", "0.6")]
    for command in commands:
        assert command.wait(timeout=120) == 0, command.stderr.read()
    data = sorted(p.name for p in tmp_path.glob("out.onnx.*.data"))
    assert len(data) == 1, data
    assert_valid_model(tmp_path / "out.onnx")
    assert not list(tmp_path.glob(".spa-*"))


def _interrupted_run(tmp_path: Path, signum: int) -> subprocess.Popen:
    """A prune of a ResNet-50-sized model with obs (minutes of work), signalled after 4 s."""
    source = tmp_path / "big.onnx"
    if not source.exists():
        sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
        from resnet50_onnx import build_resnet50
        onnx.save(build_resnet50(image=64), str(source))
    command = subprocess.Popen(SPA + ["prune", "big.onnx", "-o", "out.onnx", "--ratio", "0.5", "--criterion", "obs",
                                      "--calib-samples", "8"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    time.sleep(4)
    command.send_signal(signum)
    command.wait(timeout=120)
    return command


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_terminated_midway_leaves_nothing(tmp_path, signum, code):
    command = _interrupted_run(tmp_path, signum)
    stderr = command.stderr.read()
    assert command.returncode == code, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx"]


def test_killed_midway_leaves_the_input_and_no_model(tmp_path):
    """SIGKILL cannot be caught: the input stays whole and no output model appears."""
    command = _interrupted_run(tmp_path, signal.SIGKILL)
    assert command.returncode == -signal.SIGKILL
    assert not (tmp_path / "out.onnx").exists()
    onnx.checker.check_model(str(tmp_path / "big.onnx"))


def test_scratch_of_a_killed_process_is_removed_by_the_next_write(tmp_path):
    """A scratch folder whose process is gone (SIGKILL while writing) goes with the next
    write into that folder; one of a living process stays."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f".spa-{gone.pid}-abc"
    stale.mkdir()
    (stale / "out.onnx").write_bytes(b"partial")
    alive = tmp_path / f".spa-{os.getpid()}-def"
    alive.mkdir()
    shutil.copy(RESNET, tmp_path / "in.onnx")
    result = spa_command(["prune", "in.onnx", "-o", "out.onnx", "--ratio", "0.4"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and alive.exists()


def test_interrupt_during_start_up_is_one_line(tmp_path):
    """Ctrl-C while the libraries still load: exit 130 and one line, no traceback. (A signal
    that comes before Python itself has started, while it imports `site`, is Python's to
    report, not spa's: such a sample does not count.)"""
    checked = 0
    for delay in (0.2, 0.4, 0.7, 1.0):
        command = subprocess.Popen(SPA + ["inspect", str(RESNET)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True,
                                   env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
        time.sleep(delay)
        command.send_signal(signal.SIGINT)
        command.wait(timeout=60)
        stderr = command.stderr.read()
        if "init_import_site" in stderr or (command.returncode == -signal.SIGINT and not stderr):
            continue  # before Python's own handler exists (a loaded machine starts slowly): the OS's default
        checked += 1
        assert "Traceback" not in stderr, stderr
        # 130, or death by SIGINT (a shell reports both as 130): the line is what spa promises
        assert command.returncode in (0, 130, -signal.SIGINT) and len(stderr.strip().splitlines()) <= 1, stderr
    assert checked


def _mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    mutated = []
    for _ in range(count):
        copy = bytearray(data)
        for position in rng.integers(0, len(copy), size=int(rng.integers(1, 8))):
            copy[position] ^= 1 << int(rng.integers(0, 8))
        mutated.append(bytes(copy))
    return mutated


def test_byte_flip_fuzz(tmp_path, capsys):
    """Dozens of random byte flips in a model: each prunes into a valid model or is refused in
    one line; never a traceback, never an invalid file written."""
    from spa.cli import main
    source = (MODELS / "resnet_basic.onnx").read_bytes()
    for index, data in enumerate(_mutations(source, 36, seed=9)):
        path = tmp_path / f"m{index}.onnx"
        path.write_bytes(data)
        output = tmp_path / f"m{index}.out.onnx"
        code = main(["prune", str(path), "-o", str(output), "--ratio", "0.4", "--round-to", "1"])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err + captured.out and code in (0, 1), (index, captured.err)
        assert path.read_bytes() == data
        if code == 0 and output.exists():
            assert_valid_model(output)
        else:
            assert not output.exists() and len(captured.err.strip().splitlines()) == 1, captured.err
    assert not list(tmp_path.glob(".spa-*"))
