"""The command line: what a user in an export pipeline sees."""
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from conftest import MODELS
from edge_models import nothing_prunable

from spa.cli import main


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "resnet_basic.onnx"
    shutil.copy(MODELS / "resnet_basic.onnx", path)
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prune_writes_beside_input_and_never_touches_it(model, capsys):
    before = _digest(model)
    assert main(["prune", str(model), "--ratio", "0.4"]) == 0
    out = model.with_name("resnet_basic.pruned.onnx")
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert _digest(model) == before
    printed = capsys.readouterr().out
    assert "params" in printed and "MACs" in printed and "groups:" in printed


def test_report_lists_removed_channels(model, tmp_path):
    report_path = tmp_path / "report.json"
    assert main(["prune", str(model), "--ratio", "0.5", "--round-to", "1",
                 "-o", str(tmp_path / "out.onnx"), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    prunable = [g for g in report["groups"] if g["prunable"]]
    assert prunable and all(len(g["removed"]) == g["size"] // 2 for g in prunable)
    assert report["after"]["params"] < report["before"]["params"]


@pytest.mark.parametrize("extra, statistics, note", [
    ([], "weights only", "ranked by their weights alone"),
    (["--criterion", "obs", "--calib-samples", "8", "--no-batchnorm-stats"], "synthetic inputs", "synthetic inputs"),
    (["--criterion", "obs", "--calib-samples", "8"], "synthetic inputs", "synthetic inputs"),
    (["--criterion", "obs", "--calib-samples", "8", "--folded-estimates"], "folded BatchNorm estimates for", "renormalized"),
    (["--criterion", "obs", "--calib", "DATA"], "calibration data", None),
])
def test_prune_says_what_its_statistics_came_from(model, tmp_path, capsys, extra, statistics, note):
    """Without data, spa says plainly what it did and what that usually costs, on stdout
    and in the report; with data it says nothing more."""
    import numpy as np
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    extra = [str(tmp_path / "calib.npz") if item == "DATA" else item for item in extra]
    report_path = tmp_path / "report.json"
    assert main(["prune", str(model), "--ratio", "0.4", "-o", str(tmp_path / "out.onnx"),
                 "--report", str(report_path), *extra]) == 0
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["statistics"] == statistics or report["statistics"].startswith(statistics)
    if note is None:
        assert "spa: note:" not in printed and report["caution"] is None
    else:
        assert "spa: note: " in printed and note in printed and note in report["caution"]


def test_output_keeps_ir_version_opsets_and_metadata(model, tmp_path):
    original = onnx.load(str(model))
    original.metadata_props.add(key="author", value="team")
    onnx.save(original, str(model))
    assert main(["prune", str(model), "--ratio", "0.4", "-o", str(tmp_path / "out.onnx")]) == 0
    pruned = onnx.load(str(tmp_path / "out.onnx"))
    assert pruned.ir_version == original.ir_version
    assert list(pruned.opset_import) == list(original.opset_import)
    assert {p.key: p.value for p in pruned.metadata_props} == {"author": "team"}
    assert [i.name for i in pruned.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]


def _one_line_error(capsys, code: int) -> str:
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spa: error:"), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


@pytest.mark.parametrize("content, expected", [
    (None, "no such file"),
    (b"not a model at all\n", "not a readable ONNX model"),
    ("truncated", "ONNX model"),
])
def test_bad_input_file(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.onnx"
    if content == "truncated":
        path.write_bytes((MODELS / "vgg.onnx").read_bytes()[:50_000])
    elif content is not None:
        path.write_bytes(content)
    line = _one_line_error(capsys, main(["prune", str(path), "--ratio", "0.4"]))
    assert expected in line
    assert not list(tmp_path.glob("*.pruned.onnx"))


@pytest.mark.parametrize("ratio", ["1", "1.5", "-0.1", "abc"])
def test_ratio_outside_range(model, capsys, ratio):
    line = _one_line_error(capsys, main(["prune", str(model), "--ratio", ratio]))
    assert "--ratio" in line
    assert not model.with_name("resnet_basic.pruned.onnx").exists()


@pytest.mark.parametrize("target", ["missing_dir/out.onnx", "."])
def test_unwritable_output(model, tmp_path, capsys, target):
    line = _one_line_error(capsys, main(["prune", str(model), "--ratio", "0.4", "-o", str(tmp_path / target)]))
    assert "cannot write" in line


def test_refuses_to_overwrite_input(model, capsys):
    line = _one_line_error(capsys, main(["prune", str(model), "--ratio", "0.4", "-o", str(model)]))
    assert "input" in line


def test_nothing_prunable_exits_zero_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "single.onnx"
    onnx.save(nothing_prunable(), str(path))
    assert main(["prune", str(path), "--ratio", "0.4"]) == 0
    assert "nothing to prune" in capsys.readouterr().out
    assert not path.with_name("single.pruned.onnx").exists()
    assert main(["prune", str(path), "--ratio", "0.4", "--write-unchanged"]) == 0
    assert path.with_name("single.pruned.onnx").exists()


def test_ratio_zero_writes_an_equivalent_model(model, tmp_path):
    from oracle import random_feeds, run
    out = tmp_path / "same.onnx"
    assert main(["prune", str(model), "--ratio", "0", "-o", str(out)]) == 0
    feeds = random_feeds(onnx.load(str(model)))
    for want, got in zip(run(onnx.load(str(model)), feeds), run(onnx.load(str(out)), feeds)):
        assert (want == got).all()


def test_inspect_json_format(model, capsys):
    assert main(["inspect", str(model), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert {"id", "size", "prunable", "reason", "exact", "members"} <= set(groups[0])
    member = groups[0]["members"][0]
    assert {"initializer", "axis", "index"} <= set(member)
    assert len(member["index"]) == groups[0]["size"]
    head = [g for g in groups if not g["prunable"]]
    assert head and "graph output" in head[0]["reason"]


def test_inspect_table_names_reasons(model, capsys):
    assert main(["inspect", str(model)]) == 0
    assert "reaches graph output 'output'" in capsys.readouterr().out


def test_bench_json(model, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["prune", str(model), "--ratio", "0.5", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["bench", str(model), str(out), "--runs", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["macs_ratio"] < 1 and result["speedup"] > 0


def test_console_script_runs(tmp_path):
    """The installed entry point, as a pipeline would call it."""
    result = subprocess.run([sys.executable, "-m", "spa.cli", "prune", "missing.onnx", "--ratio", "0.4"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "spa: error: no such file: missing.onnx"


def test_prune_reports_fidelity_on_the_verification_samples(tmp_path, capsys):
    """The report and the last summary line say how close each output stays to the
    original on the inputs spa verified with (the first calibration batch here)."""
    import numpy as np
    model = Path(__file__).resolve().parent.parent / "models" / "trained" / "digits_resnet_bn.onnx"
    data = np.load(model.with_name("digits_data.npz"))
    np.savez(tmp_path / "calib.npz", input=data["calib_x"])
    report_path = tmp_path / "report.json"
    assert main(["prune", str(model), "--ratio", "0.3", "--calib", str(tmp_path / "calib.npz"),
                 "-o", str(tmp_path / "out.onnx"), "--report", str(report_path)]) == 0
    fidelity = json.loads(report_path.read_text())["fidelity"]
    assert fidelity["samples"] == 32 and [o["name"] for o in fidelity["outputs"]] == ["output"]
    output = fidelity["outputs"][0]
    assert 0 < output["cosine"] < 1 and 0 < output["top1"] <= 1 and output["max_abs"] > 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("fidelity on 32 calibration sample(s): output: cosine ")
    import spa
    assert spa.prune(model, 0.3, verify=False).report["fidelity"] is None


def test_quiet_prune_prints_nothing_but_writes_the_model(model, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["prune", str(model), "--ratio", "0.4", "-o", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == "" and out.exists()
    assert main(["prune", str(tmp_path / "missing.onnx"), "--ratio", "0.4", "--quiet"]) == 1
    assert "missing.onnx" in capsys.readouterr().err


def test_prune_json_prints_the_report(model, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    assert main(["prune", str(model), "--ratio", "0.4", "-o", str(tmp_path / "out.onnx"), "--json",
                 "--report", str(report_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(report_path.read_text()) and printed["after"]["params"] < printed["before"]["params"]
